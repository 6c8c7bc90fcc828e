"""Service benchmark: latency, a bounded load test and OpenAPI fuzzing of `towerrec serve`, on loopback only.

1. Bundle: the `default` preset trained on MovieLens-100K (what `towerrec
   quickstart` trains; reused when cached), exported with a brute-force index.
2. Server: `towerrec serve BUNDLE --host 127.0.0.1 --port PORT` in its own process.
3. Latency: 8 concurrent keep-alive clients send GET /recommend?user_id=..&k=10
   for random known users; p50 / p99 / QPS; then 1 client.
4. Batching: 8 clients POST /recommend with new users' histories (the query
   tower path) against this server and against a `--no-batching` one.
5. Load test: the same 8 clients for --load-seconds (default 120 s) with a mix
   of GET /recommend (70%), POST /recommend with a new user's history (20%) and
   GET /similar (10%); counts non-200 answers and samples the server's RSS
   (growth = last sample vs first sample after warm-up).
6. Fuzzing: schemathesis (positive and negative cases from /openapi.json,
   --max-examples per operation, check: not_a_server_error).

The client is lean on purpose: on a 2-core machine it shares the cores with
the server, and a Python client spending ~0.3 ms of CPU per request (http.client
header parsing, GIL hand-offs between 8 threads) measures itself as much as the
server. Each client here is a coroutine on one uvloop event loop with its own
keep-alive HTTP/1.1 connection: it writes the request bytes and reads the
status line, headers and Content-Length (or chunked) body of the real answer;
every round trip is timed and every non-200 answer or connection error counted.
The 1-minute load average at the start of each run is recorded: other jobs may share the machine.

    .venv/bin/python benchmarks/serve_latency.py --data-dir ../shared/datasets/ml-100k

Writes benchmarks/results/serve.json and .md. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from _common import DEFAULT_DATA, REPO, machine, write_results

HOST = "127.0.0.1"
Request = tuple[str, str, "str | None"]  # method, path + query, JSON body


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


def start_server(bundle: Path, port: int, *extra: str) -> subprocess.Popen:
    towerrec = Path(sys.executable).with_name("towerrec")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.Popen([str(towerrec), "serve", str(bundle), "--host", HOST, "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
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


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def encode(port: int, method: str, url: str, body: str | None) -> bytes:
    """The raw bytes of one keep-alive request."""
    head = f"{method} {url} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = body.encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        parts.append((await reader.readexactly(size + 2))[:-2])
        if size == 0:
            return status, b"".join(parts)


async def _drive(port: int, clients: int, seconds: float | None, requests: int | None,
                 make_request: Callable[[random.Random], Request], on_sample: Callable[[], None] | None) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds if seconds else None
    budget = [requests or 0]

    def take() -> bool:  # one event loop: no lock needed
        if stop_at is not None:
            return time.perf_counter() < stop_at
        budget[0] -= 1
        return budget[0] >= 0

    async def client(c: int) -> None:
        rng = random.Random(c)
        reader, writer = await asyncio.open_connection(HOST, port)
        timings = latencies[c]
        while take():
            method, url, body = make_request(rng)
            raw = encode(port, method, url, body)
            t = time.perf_counter()
            try:
                writer.write(raw)
                status, _ = await asyncio.wait_for(read_response(reader), 10)
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError) as error:
                status = repr(error)
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
            timings.append(time.perf_counter() - t)
            if status != 200:
                errors.append(f"{method} {url} -> {status}")
        writer.close()

    async def sampler(done: asyncio.Event) -> None:
        while not done.is_set():
            on_sample()
            try:
                await asyncio.wait_for(done.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    done = asyncio.Event()
    watcher = asyncio.ensure_future(sampler(done)) if on_sample is not None else None
    load = os.getloadavg()[0]
    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - started
    done.set()
    if watcher is not None:
        await watcher
    flat = np.array([x for lat in latencies for x in lat]) * 1e3
    return {
        "clients": clients, "requests": int(flat.size), "seconds": round(elapsed, 1), "qps": round(flat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(flat, 50)), 3), "p90_ms": round(float(np.percentile(flat, 90)), 3),
        "p99_ms": round(float(np.percentile(flat, 99)), 3), "max_ms": round(float(flat.max()), 3),
        "errors": len(errors), "error_examples": errors[:5], "load_average_before": round(load, 2),
    }


def drive(port: int, clients: int, *, seconds: float | None = None, requests: int | None = None,
          make_request: Callable[[random.Random], Request], on_sample: Callable[[], None] | None = None) -> dict:
    """``clients`` keep-alive connections until the time or request budget is spent; latencies in ms."""
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        run = asyncio.run
    return run(_drive(port, clients, seconds, requests, make_request, on_sample))


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
    parser.add_argument("--requests", type=int, default=20000, help="latency run (8 clients): total requests")
    parser.add_argument("--load-seconds", type=float, default=120.0)
    parser.add_argument("--batching-seconds", type=float, default=10.0, help="POST runs, batching on and off")
    parser.add_argument("--max-examples", type=int, default=200, help="schemathesis cases per operation")
    parser.add_argument("--work", type=Path, default=None, help="where to keep runs and the bundle (default: a temp dir)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="towerrec-serve-"))
    os.environ.setdefault("TOWERREC_HOME", str(work / "home"))
    bundle = make_bundle(args.data_dir, work)
    manifest = json.loads((bundle / "bundle.json").read_text())
    from towerrec.serve import load_bundle

    loaded = load_bundle(bundle)
    users = [int(u) for u in loaded.user_ids.tolist()]
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

        def new_user(rng):
            return "POST", "/recommend", json.dumps({"history": rng.sample(items, rng.randint(1, 30)), "k": 10})

        drive(port, args.clients, requests=500, make_request=known)  # warm-up
        latency = drive(port, args.clients, requests=args.requests, make_request=known)
        single = drive(port, 1, requests=min(2000, args.requests), make_request=known)
        print("latency", json.dumps(latency), "\nsingle", json.dumps(single), flush=True)
        drive(port, args.clients, requests=200, make_request=new_user)
        batched = drive(port, args.clients, seconds=args.batching_seconds, make_request=new_user)
        unbatched_port = free_port()
        unbatched_server = start_server(bundle, unbatched_port, "--no-batching")
        try:
            drive(unbatched_port, args.clients, requests=200, make_request=new_user)
            unbatched = drive(unbatched_port, args.clients, seconds=args.batching_seconds, make_request=new_user)
        finally:
            stop_server(unbatched_server)
        print("batching", json.dumps(batched), "\nno batching", json.dumps(unbatched), flush=True)

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
        stop_server(server)

    payload = {
        "machine": machine(), "bundle": {k: manifest[k] for k in ("run", "num_items", "num_users", "index")},
        "latency_8_clients": latency, "latency_1_client": single, "load_test": load, "fuzzing": fuzzing,
        "new_user_batching": batched, "new_user_no_batching": unbatched,
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
    on, off = p["new_user_batching"], p["new_user_no_batching"]
    b = p["bundle"]
    rows = [
        "# Service benchmark (loopback, `towerrec serve`)",
        "",
        f"Bundle: `{b['run']}` (MovieLens-100K `default` preset, {b['num_items']:,} items, {b['num_users']:,} users, "
        f"{b['index']['kind']} index). Machine: {p['machine']}.",
        "",
        "| run | clients | requests | QPS | p50 ms | p90 ms | p99 ms | errors | 1-min load avg at start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        row("GET /recommend k=10 (known user)", lat),
        row("GET /recommend k=10 (known user)", one),
        row(f"POST /recommend new user (history), batching, {on['seconds']} s", on),
        row(f"POST /recommend new user (history), `--no-batching`, {off['seconds']} s", off),
        row(f"load test, mixed (70% GET /recommend, 20% POST new user, 10% /similar), {load['seconds']} s", load),
        "",
        "The load average includes this benchmark's own client and server (about 2 while a run is on); "
        "more than that is other work sharing the 2 cores.",
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


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['clients']} | {r['requests']:,} | {r['qps']:,.0f} | {r['p50_ms']} | {r['p90_ms']} | "
            f"{r['p99_ms']} | {r['errors']} | {r.get('load_average_before', '')} |")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
