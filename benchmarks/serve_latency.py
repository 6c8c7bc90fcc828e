"""Service benchmark: latency, a bounded load test and OpenAPI fuzzing of `towerrec serve`, on loopback only.

1. Bundle: the `default` preset trained on MovieLens-100K (what `towerrec
   quickstart` trains; reused when cached), exported with a brute-force index.
2. Server: `towerrec serve BUNDLE --host 127.0.0.1 --port PORT` in its own process.
3. Latency: 8 concurrent keep-alive clients (threads, http.client) send
   GET /recommend?user_id=..&k=10 for random known users; p50 / p99 / QPS.
4. Load test: the same 8 clients for --load-seconds (default 120 s) with a mix
   of GET /recommend (70%), POST /recommend with a new user's history (20%) and
   GET /similar (10%); counts non-200 answers and samples the server's RSS
   (growth = last sample vs first sample after warm-up).
5. Fuzzing: schemathesis (positive and negative cases from /openapi.json,
   --max-examples per operation, check: not_a_server_error).

    .venv/bin/python benchmarks/serve_latency.py --data-dir ../shared/datasets/ml-100k

Writes benchmarks/results/serve.json and .md. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from _common import DEFAULT_DATA, REPO, machine, write_results

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_bundle(data_dir: Path, work: Path) -> Path:
    from towerrec.presets import preset
    from towerrec.runs import train_run
    from towerrec.serve import export_bundle

    config = preset("default").replace(data={"data_dir": str(data_dir)})
    result = train_run(config, runs_root=work / "runs", progress=False, log=lambda *_: None)
    return export_bundle(result.run_dir, work / "bundle", data=result.data, overwrite=True)


def start_server(bundle: Path, port: int) -> subprocess.Popen:
    towerrec = Path(sys.executable).with_name("towerrec")
    proc = subprocess.Popen([str(towerrec), "serve", str(bundle), "--host", HOST, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
    proc.kill()
    raise RuntimeError("server did not start in 60 s")


def drive(port: int, clients: int, *, seconds: float | None = None, requests: int | None = None,
          make_request, on_sample=None) -> dict:
    """``clients`` threads with keep-alive connections until the time or request budget is spent."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds if seconds else None
    budget = [requests or 0]
    lock = threading.Lock()

    def take() -> bool:
        if stop_at is not None:
            return time.perf_counter() < stop_at
        with lock:
            budget[0] -= 1
            return budget[0] >= 0

    def client(c: int) -> None:
        rng = random.Random(c)
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        while take():
            method, url, body = make_request(rng)
            headers = {"content-type": "application/json"} if body is not None else {}
            t = time.perf_counter()
            try:
                conn.request(method, url, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as error:
                status = repr(error)
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
            latencies[c].append(time.perf_counter() - t)
            if status != 200:
                with lock:
                    errors.append(f"{method} {url} -> {status}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    if on_sample is not None:
        while any(t.is_alive() for t in threads):
            on_sample()
            time.sleep(1.0)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    flat = np.array([x for lat in latencies for x in lat]) * 1e3
    return {
        "clients": clients, "requests": int(flat.size), "seconds": round(elapsed, 1), "qps": round(flat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(flat, 50)), 3), "p90_ms": round(float(np.percentile(flat, 90)), 3),
        "p99_ms": round(float(np.percentile(flat, 99)), 3), "max_ms": round(float(flat.max()), 3),
        "errors": len(errors), "error_examples": errors[:5],
    }


def fuzz(port: int, max_examples: int, report: Path) -> dict:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    if not schemathesis.exists():
        return {"skipped": "schemathesis is not installed"}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(schemathesis), "run", f"http://{HOST}:{port}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", str(max_examples), "--mode", "all", "--report", "junit",
         "--report-junit-path", str(report), "--seed", "0"],
        capture_output=True, text=True, timeout=600, cwd=report.parent,  # its cache stays out of the repo
    )
    tail = proc.stdout.strip().splitlines()[-12:]
    return {"exit_code": proc.returncode, "passed": proc.returncode == 0, "max_examples_per_operation": max_examples,
            "seconds": round(time.perf_counter() - started, 1), "summary": tail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5000, help="latency run: total requests")
    parser.add_argument("--load-seconds", type=float, default=120.0)
    parser.add_argument("--max-examples", type=int, default=200, help="schemathesis cases per operation")
    parser.add_argument("--work", type=Path, default=None, help="where to keep runs and the bundle (default: a temp dir)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="towerrec-serve-"))
    os.environ.setdefault("TOWERREC_HOME", str(work / "home"))
    bundle = make_bundle(args.data_dir, work)
    manifest = json.loads((bundle / "bundle.json").read_text())
    from towerrec.serve import load_bundle

    loaded = load_bundle(bundle)
    users = [int(u) for u in loaded.features.user_ids.tolist()]
    items = [int(i) for i in loaded.items["item_id"].to_list()]
    del loaded

    port = free_port()
    server = start_server(bundle, port)
    process = psutil.Process(server.pid)
    try:
        def known(rng):
            return "GET", f"/recommend?user_id={rng.choice(users)}&k=10&exclude_seen=true", None

        def mixed(rng):
            r = rng.random()
            if r < 0.7:
                return known(rng)
            if r < 0.9:
                history = rng.sample(items, rng.randint(1, 30))
                return "POST", "/recommend", json.dumps({"history": history, "k": 10})
            return "GET", f"/similar?item_id={rng.choice(items)}&k=10", None

        drive(port, args.clients, requests=500, make_request=known)  # warm-up
        latency = drive(port, args.clients, requests=args.requests, make_request=known)
        single = drive(port, 1, requests=min(2000, args.requests), make_request=known)
        print("latency", json.dumps(latency), "\nsingle", json.dumps(single), flush=True)

        samples: list[int] = []
        load = drive(port, args.clients, seconds=args.load_seconds, make_request=mixed,
                     on_sample=lambda: samples.append(process.memory_info().rss))
        samples.append(process.memory_info().rss)
        load["rss_first_mb"] = round(samples[0] / 2**20, 1)
        load["rss_last_mb"] = round(samples[-1] / 2**20, 1)
        load["rss_max_mb"] = round(max(samples) / 2**20, 1)
        load["rss_growth_pct"] = round(100 * (samples[-1] - samples[0]) / samples[0], 2)
        print("load", json.dumps(load), flush=True)
        fuzzing = fuzz(port, args.max_examples, work / "schemathesis.xml")
        print("fuzz", json.dumps(fuzzing), flush=True)
        if server.poll() is not None:
            raise RuntimeError("the server died during the benchmark")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()

    payload = {
        "machine": machine(), "bundle": {k: manifest[k] for k in ("run", "num_items", "num_users", "index")},
        "latency_8_clients": latency, "latency_1_client": single, "load_test": load, "fuzzing": fuzzing,
        "goals": {
            "p50_under_5ms": latency["p50_ms"] < 5, "p99_under_20ms": latency["p99_ms"] < 20,
            "load_zero_errors": load["errors"] == 0, "rss_growth_under_10pct": load["rss_growth_pct"] < 10,
            "fuzzing_no_500": bool(fuzzing.get("passed")),
        },
        "command": "python benchmarks/serve_latency.py " + " ".join(sys.argv[1:]),
    }
    write_results("serve", payload, markdown(payload))


def markdown(p: dict) -> str:
    lat, one, load, fz = p["latency_8_clients"], p["latency_1_client"], p["load_test"], p["fuzzing"]
    b = p["bundle"]
    rows = [
        "# Service benchmark (loopback, `towerrec serve`)",
        "",
        f"Bundle: `{b['run']}` (MovieLens-100K `default` preset, {b['num_items']:,} items, {b['num_users']:,} users, "
        f"{b['index']['kind']} index). Machine: {p['machine']}.",
        "",
        "| run | clients | requests | QPS | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| GET /recommend k=10 | {lat['clients']} | {lat['requests']:,} | {lat['qps']:,.0f} | {lat['p50_ms']} | "
        f"{lat['p90_ms']} | {lat['p99_ms']} | {lat['errors']} |",
        f"| GET /recommend k=10 | {one['clients']} | {one['requests']:,} | {one['qps']:,.0f} | {one['p50_ms']} | "
        f"{one['p90_ms']} | {one['p99_ms']} | {one['errors']} |",
        f"| load test, mixed (70% GET /recommend, 20% POST new user, 10% /similar), {load['seconds']} s | "
        f"{load['clients']} | {load['requests']:,} | {load['qps']:,.0f} | {load['p50_ms']} | {load['p90_ms']} | "
        f"{load['p99_ms']} | {load['errors']} |",
        "",
        f"Server RSS during the load test: {load['rss_first_mb']} MB -> {load['rss_last_mb']} MB "
        f"(max {load['rss_max_mb']} MB, growth {load['rss_growth_pct']}%).",
        "",
        f"Schemathesis (positive + negative cases, {fz.get('max_examples_per_operation')} per operation, check "
        f"not_a_server_error): {'passed, no 500' if fz.get('passed') else 'FAILED or skipped: ' + str(fz)}.",
        "",
        "Goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in p["goals"].items()),
        "",
        f"Command: `{p['command']}`",
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
