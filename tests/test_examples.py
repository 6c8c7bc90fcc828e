"""examples/: each script runs in its --fast mode on MovieLens-100K and uses only towerrec's package exports."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _ml100k() -> Path | None:
    """$ML100K, else the first shared/datasets/ml-100k above the repository (worktrees sit deeper)."""
    if os.environ.get("ML100K"):
        return Path(os.environ["ML100K"])
    for parent in ROOT.parents:
        candidate = parent / "shared" / "datasets" / "ml-100k"
        if candidate.is_dir():
            return candidate
    return None


REAL_100K = _ml100k()
needs_ml100k = pytest.mark.skipif(REAL_100K is None or not REAL_100K.is_dir(),
                                  reason="../shared/datasets/ml-100k is absent")

# What each example must print in --fast mode (regular expressions, each matched somewhere in stdout).
TOP_K = r"top-10 accuracy 0\.\d{4}, top-100 accuracy 0\.\d{4}"
EXPECTED = {
    "basic_retrieval.py": [r"\d[\d,]* train / [\d,]+ test ratings, 1,664 movies", rf"two-tower: {TOP_K}",
                           rf"popularity: {TOP_K}", r"top 3 for user 42: .+\(\d{4}\); .+; .+"],
    "featurization.py": [r"built-in features: user_id, timestamp, .*movie_title", r"user id: query inputs user_id",
                         r"query inputs .*timestamp_bucketized \(bucketized, \d+ rows\), timestamp_normalized \(normalized\),"
                         r".*user_zip_hashed \(hashed, "
                         r"100 rows\)", rf"  {TOP_K}", rf"popularity: {TOP_K}"],
    "deep_retrieval.py": [r"query inputs: user_id, timestamp_bucketized, timestamp_normalized", rf"layers \[32\]: {TOP_K}",
                          rf"layers \[64, 32\]: {TOP_K}", rf"popularity: {TOP_K}"],
    "sequential_retrieval.py": [r"[\d,]+ train / [\d,]+ test contexts over 1,664 movies", rf"gru: {TOP_K}",
                                rf"popularity: {TOP_K}",
                                r"after Star Wars \(1977\), Return of the Jedi \(1983\), Contact \(1997\) -> .+; .+; .+"],
    "efficient_serving.py": [r"[\d,]+ users searched over 3,664 items \(2,000 decoys\)",
                             r"brute force: [\d,]+ queries/s, recall@10 against brute force 1\.000",
                             r"HNSW: [\d,]+ queries/s, recall@10 against brute force (0\.[5-9]\d\d|1\.000)",
                             r"IVF: [\d,]+ queries/s, recall@10 against brute force [01]\.\d{3}",
                             r"HNSW index saved and loaded: same answers True", r"bundle\.recommend\(\d+, k=3\): .+; .+; .+"],
    "custom_training_loop.py": [rf"Trainer: {TOP_K}", rf"plain loop: {TOP_K}", rf"popularity: {TOP_K}",
                                r"saved and loaded a MovieModel: same weights True"],
    "basic_ranking.py": [r"16,000 train / 4,000 test ratings, 1,664 movies",
                         r"ranking model: RMSE \d\.\d{4}, MAE \d\.\d{4}", r"mean rating: RMSE 1\.\d{4}",
                         r"movie mean rating: RMSE 1\.\d{4}",
                         r"user 42, saved and loaded model: M\*A\*S\*H \(1970\) \d\.\d\d; .+ \d\.\d\d; .+ \d\.\d\d"],
    "dcn.py": [r"features: user_id, user_zip_code, user_occupation, user_gender, user_age_group, movie_id",
               r"DCN \(cross layer, full rank\): RMSE \d\.\d{4}", r"DCN \(low rank, projection 20\): RMSE \d\.\d{4}",
               r"DNN \(no cross layer\): RMSE \d\.\d{4}", r"strongest crossed pair: \w+ x \w+ \(block norm \d+\.\d\d"],
    "multitask.py": [rf"{name} \(rating {w}\): RMSE \d\.\d{{4}}, top-100 accuracy 0\.\d{{4}}"
                     for name, w in (("rating-specialised", "1, retrieval 0"), ("retrieval-specialised", "0, retrieval 1"),
                                     ("joint", "1, retrieval 1"))]
                    + [r"baselines: mean rating RMSE 1\.\d{4}, popularity top-100 accuracy 0\.\d{4}"],
    "listwise_ranking.py": [r"[\d,]+ train lists, [\d,]+ test lists of 5 movies",
                            *(rf"{loss}: NDCG 0\.\d{{4}}" for loss in ("mse", "hinge", "listmle")),
                            r"movie mean rating: NDCG 0\.\d{4}"],
}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)


def test_every_example_is_listed_and_documented():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(EXPECTED), "an example without expected output here, or a listed one missing"
    for script in scripts:
        doc = ast.get_docstring(ast.parse((EXAMPLES / script).read_text())) or ""
        assert "TensorFlow Recommenders" in doc and f"python examples/{script}" in doc and "--fast" in doc, script


@pytest.mark.realdata
@needs_ml100k
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_in_fast_mode(script: str):
    done = _run(script, "--data-dir", str(REAL_100K), "--fast")
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-3000:]}"
    for pattern in EXPECTED[script]:
        assert re.search(pattern, done.stdout), f"{script}: no line matches {pattern!r} in:\n{done.stdout}"


@pytest.mark.realdata
@needs_ml100k
def test_the_sequential_example_runs_sasrec_too():
    done = _run("sequential_retrieval.py", "--data-dir", str(REAL_100K), "--fast", "--encoder", "sasrec")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(rf"sasrec: {TOP_K}", done.stdout) and "after Star Wars" in done.stdout, done.stdout


def test_example_help_needs_no_data():
    done = _run("basic_retrieval.py", "--help")
    assert done.returncode == 0 and "--data-dir" in done.stdout and "--fast" in done.stdout and "--epochs" in done.stdout


# -- only package exports ------------------------------------------------------------------------------


def towerrec_names(source: str) -> list[str]:
    """Every dotted towerrec name a script uses: ``towerrec.tasks.Retrieval`` for ``tr.tasks.Retrieval(...)``,
    ``from towerrec.index import FaissIndex`` or ``import towerrec.train.trainer``."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> dotted towerrec name
    used: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "towerrec":
                    used.append(alias.name)
                    if alias.asname:  # import towerrec.data as d: d is towerrec.data
                        aliases[alias.asname] = alias.name
                    else:  # import towerrec.data binds towerrec
                        aliases["towerrec"] = "towerrec"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "towerrec":
            for alias in node.names:
                used.append(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                used.append(".".join([aliases[inner.id], *reversed(chain)]))
    return used


def deep_uses(name: str) -> str | None:
    """Why ``name`` (a dotted towerrec name) is not reached through package exports, or None when it is.

    Each step from a package must be a name in its ``__all__`` or one of its subpackages; the walk
    stops at the first object that is not a package (attributes of a class are its own business).
    """
    parts = name.split(".")
    obj: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not isinstance(obj, ModuleType):
            return None
        where = ".".join(parts[:i])
        if not hasattr(obj, "__path__"):
            return f"{where} is a module, not a package"
        if part in getattr(obj, "__all__", ()):
            obj = getattr(obj, part)
            continue
        try:
            sub = importlib.import_module(f"{where}.{part}")
        except ImportError:
            return f"{where} does not export {part}"
        if not hasattr(sub, "__path__"):
            return f"{where}.{part} is a module that {where} does not export: a deep import"
        obj = sub
    return None


def test_the_export_checker_tells_exports_from_deep_imports():
    assert deep_uses("towerrec.tasks.Retrieval") is None and deep_uses("towerrec.Trainer.fit") is None
    assert "deep import" in deep_uses("towerrec.train.trainer.Trainer")
    assert "does not export NoSuchName" in deep_uses("towerrec.NoSuchName")
    source = "import towerrec as tr\nfrom towerrec.train.trainer import Trainer\nimport towerrec.models\ntr.index.X(tr.save)\n"
    assert set(towerrec_names(source)) == {"towerrec", "towerrec.train.trainer.Trainer", "towerrec.models",
                                           "towerrec.index.X", "towerrec.index", "towerrec.save"}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_examples_use_only_names_that_towerrec_packages_export(script: str):
    names = towerrec_names((EXAMPLES / script).read_text())
    assert any(name.count(".") >= 1 for name in names), f"{script} uses no towerrec name"
    problems = sorted({f"{name}: {why}" for name in names if (why := deep_uses(name))})
    assert not problems, f"{script} reaches past the package exports: {problems}"


@pytest.mark.realdata
@needs_ml100k
def test_the_readme_python_api_snippet_runs(tmp_path):
    """README's "Python API" code, on the real data, one epoch: it trains, evaluates, indexes and saves."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Python API\n.*?```python\n(.*?)```", readme, re.S).group(1)
    assert '"../shared/datasets/ml-100k"' in code and "epochs=5" in code
    code = code.replace('"../shared/datasets/ml-100k"', repr(str(REAL_100K))).replace("epochs=5", "epochs=1")
    code += "\nassert type(tr.load('movie-model')).__name__ == 'TwoTowerModel' and index.num_candidates == 1664\n"
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"'top_100_accuracy': 0\.\d+", done.stdout), done.stdout
