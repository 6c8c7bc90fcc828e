"""Shared helpers for the benchmarks: TFRS peer runs, medians, result files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEER = SHARED / "peer"
DEFAULT_DATA = SHARED / "datasets"
RESULTS = REPO / "benchmarks" / "results"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_tfrs(script: str, args: list[str], *, python: str, data_root: Path, env: dict[str, str] | None = None) -> dict:
    """Run one peer script from a scratch copy (it writes its result beside itself) and parse its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in os.listdir(PEER):
            if name.endswith(".py"):
                shutil.copy(PEER / name, tmp)
        full_env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "ML_DATA": str(data_root), "TF_CPP_MIN_LOG_LEVEL": "2",
                    **(env or {})}
        proc = subprocess.run([python, script, *args], cwd=tmp, env=full_env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"TFRS peer {script} failed:\n{proc.stderr[-3000:]}")
        results = list(Path(tmp, "results").glob("*.json"))
        return json.loads(results[0].read_text())


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul throughput of this machine (the roofline's ceiling)."""
    import time

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * size**3 / median(times) / 1e9


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def machine_line(m: dict[str, Any]) -> str:
    """The one-line machine description every results file opens with."""
    policy = m.get("omp_wait_policy") or "unset (PyTorch default)"
    return f"Machine: {m['cores']} cores, torch {m['torch']}, OMP_WAIT_POLICY={policy}."


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def earlier_results(name: str) -> tuple[dict[str, Any], str]:
    """The committed results of ``name`` and the full run they keep figures from ("<commit>, <date>").

    For ``--metrics-only`` style reruns that keep the peer and speed figures: the earlier run
    is the one a previous partial rerun named, else the commit of the results file.
    """
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--metrics-only needs the earlier full run's {path}")
    payload = json.loads(path.read_text())
    return payload, payload.get("metrics_only", {}).get("earlier") or git_commit_of(path)


def git_commit_of(path: Path) -> str:
    """Short hash and date of the last commit that changed ``path`` (where earlier figures come from)."""
    proc = subprocess.run(["git", "log", "-1", "--format=%h, %ad", "--date=short", "--", str(path)],
                          cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown commit"


def metrics_only_note(kept: str, earlier: str, regenerated: str = "Quality figures of towerrec's rows",
                      flag: str = "--metrics-only") -> str:
    """The provenance line of a partial rerun (``--metrics-only``, ``--baselines-only``)."""
    return (f"{regenerated} were regenerated with `{flag}` (tie-aware evaluation: ties never count for the target); "
            f"{kept} are kept from the earlier full run ({earlier}) and were not re-measured.")
