"""Latency of retrieve-then-rank in `towerrec serve` (loopback) and in `Bundle.recommend`, on MovieLens-100K.

1. Retriever: the `default` preset (what `towerrec quickstart` trains; reused when cached).
2. Ranker: `configs/rerank_ranker_ml100k.toml` (the ranker benchmarks/rerank.py chose on validation:
   DCN-v2 + MLP over user and film features, liked-vs-not binary cross-entropy) on the same data.
3. Bundles: the retriever alone, and with `--rerank RANKER --candidates 300 --score sum
   --retrieval-weight 2 --rules configs/rules/ml100k_family.toml` (that ranker's final score).
4. Both bundles served at once (`towerrec serve`, one process each); 1 keep-alive client sends 20
   warm-up then --requests (default 100) GET /recommend?user_id=..&k=10 for random known users, one
   at a time, to each server in turn, --rounds times (default 3; the table gives each round's p50
   and the median round): other jobs sharing the machine disturb single rounds. Then the same
   number of in-process `bundle.recommend(user, k=10)` calls per bundle, on one torch thread like
   the server (`Bundle.recommend` embeds the known user's query each call; the server precomputes it).

    .venv/bin/python benchmarks/serve_rerank.py --data-dir ../shared/datasets/ml-100k

Writes benchmarks/results/serve_rerank.json and .md. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DEFAULT_DATA, REPO, machine, machine_line, write_results
from serve_latency import drive, free_port, start_server, stop_server

RULES = REPO / "configs" / "rules" / "ml100k_family.toml"
RANKER = REPO / "configs" / "rerank_ranker_ml100k.toml"
CANDIDATES = 300
SCORE = {"score": "sum", "retrieval_weight": 2.0}


def train(data_dir: Path, work: Path):
    from towerrec.config import load_config
    from towerrec.presets import preset
    from towerrec.runs import train_run

    quiet = {"progress": False, "log": lambda *_: None}
    retriever = train_run(preset("default").replace(data={"data_dir": str(data_dir)}), runs_root=work / "runs",
                          **quiet)
    ranking = load_config(RANKER).replace(data={"data_dir": str(data_dir)})
    ranker = train_run(ranking, runs_root=work / "runs", **quiet)
    return retriever, ranker


def timed_python(bundle, users: list[int], requests: int) -> dict:
    """Latencies of in-process ``bundle.recommend(user, k=10)`` on one torch thread (as `towerrec serve` runs)."""
    import torch

    torch.set_num_threads(1)
    rng = random.Random(1)
    for _ in range(20):
        bundle.recommend(rng.choice(users), k=10)
    times = []
    for _ in range(requests):
        user = rng.choice(users)
        started = time.perf_counter()
        bundle.recommend(user, k=10)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1e3
    return {"requests": requests, "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--requests", type=int, default=100, help="requests per round and bundle")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="where to keep runs and bundles (default: a temp dir)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="towerrec-rerank-"))
    os.environ.setdefault("TOWERREC_HOME", str(work / "home"))
    from towerrec.serve import export_bundle, load_bundle

    retriever, ranker = train(args.data_dir, work)
    bundles = {
        "retrieval only": export_bundle(retriever.run_dir, work / "plain", data=retriever.data, overwrite=True),
        f"retrieve {CANDIDATES}, rank, rules": export_bundle(
            retriever.run_dir, work / "ranked", data=retriever.data, overwrite=True, ranker=ranker.run_dir,
            candidates=CANDIDATES, rules=RULES, **SCORE),
    }
    loaded = load_bundle(bundles["retrieval only"])
    users = [int(u) for u in loaded.user_ids.tolist()]
    del loaded

    def known(rng):
        return "GET", f"/recommend?user_id={rng.choice(users)}&k=10", None

    rows: dict[str, dict] = {name: {"http_rounds": []} for name in bundles}
    servers = {}
    try:
        for name, folder in bundles.items():
            port = free_port()
            servers[name] = (port, start_server(folder, port))
            drive(port, 1, requests=20, make_request=known)  # warm-up
        for _ in range(args.rounds):
            for name, (port, _) in servers.items():
                rows[name]["http_rounds"].append(drive(port, 1, requests=args.requests, make_request=known))
    finally:
        for _, server in servers.values():
            stop_server(server)
    for name, folder in bundles.items():
        rounds = rows[name]["http_rounds"]
        rows[name]["http"] = sorted(rounds, key=lambda r: r["p50_ms"])[len(rounds) // 2]  # the median round
        rows[name]["python"] = timed_python(load_bundle(folder), users, args.requests)
        print(name, json.dumps(rows[name]), flush=True)
    payload = {"machine": machine(), "retriever": retriever.run_dir.name, "ranker": ranker.run_dir.name,
               "ranker_test_metrics": ranker.metrics.get("test"), "candidates": CANDIDATES, "final_score": SCORE,
               "rules": str(RULES.relative_to(REPO)), "results": rows,
               "command": "python benchmarks/serve_rerank.py " + " ".join(sys.argv[1:])}
    write_results("serve_rerank", payload, markdown(payload))


def markdown(p: dict) -> str:
    lines = [
        "# Retrieve-then-rank latency (loopback `towerrec serve`, and `Bundle.recommend` in process)",
        "",
        f"MovieLens-100K (1,682 items). Retriever `{p['retriever']}` (default preset, brute force); ranker "
        f"`{p['ranker']}` (configs/rerank_ranker_ml100k.toml); {p['candidates']} candidates; final score "
        f"{p['final_score']['score']} (retrieval weight {p['final_score']['retrieval_weight']}); rules `{p['rules']}`. "
        f"{machine_line(p['machine'])}",
        "",
        "1 client, one request at a time, GET /recommend?user_id=..&k=10 for random known users; HTTP figures "
        "of the median round (by p50), each round's p50 beside them.",
        "",
        "| bundle | HTTP requests | HTTP p50 ms | HTTP p90 ms | HTTP p99 ms | errors | p50 per round | Python p50 ms |"
        " Python p99 ms | 1-min load avg |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, r in p["results"].items():
        h, py = r["http"], r["python"]
        rounds = " / ".join(str(x["p50_ms"]) for x in r["http_rounds"])
        lines.append(f"| {name} | {h['requests']} | {h['p50_ms']} | {h['p90_ms']} | {h['p99_ms']} | {h['errors']} | "
                     f"{rounds} | {py['p50_ms']} | {py['p99_ms']} | {h['load_average_before']} |")
    lines += ["", "The load average includes this benchmark's own client and server (about 1-2); more is other work "
              "sharing the 2 cores, which inflates every figure, most the tails and the torch-heavy ranking path.",
              "", f"Command: `{p['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
