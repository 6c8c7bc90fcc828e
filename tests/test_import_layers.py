"""Data flows one way: no towerrec module imports a module of a higher layer, and the model / training /
run / recommend stack has no import circles (imports inside functions count: they are circles too)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import towerrec

PACKAGE = Path(towerrec.__file__).parent

#: Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("model", "tasks", "layers", "metrics", "index", "features", "data", "rules", "parallel"),
    ("models",),
    ("saving",),
    ("train.checkpoint", "train.prepared", "train.distributed", "train.optimizers", "train.precision"),
    ("train.sequence_data",),
    ("train.models",),
    ("train.evaluate",),
    ("train.batches",),
    ("train.trainer",),
    ("runs",),
    ("track",),
    ("recommend",),
    ("pipeline",),
    ("serve", "experiments", "tune"),
    ("cli",),
]
#: Modules whose imports must form no circle (the model, training, run, recommend, serving and experiment layers).
STACK = ("model", "models", "tasks", "saving", "train", "runs", "track", "recommend", "pipeline", "serve", "experiments",
         "tune")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """towerrec modules ``name`` imports anywhere in its file (relative names resolved, ``towerrec.`` dropped)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = ["towerrec", *filter(None, package.split("."))]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}"[len("towerrec."):] in MODULES else base
                       for a in node.names]
        else:
            continue
        out.update(t[len("towerrec."):] for t in targets if t.startswith("towerrec."))
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


def test_the_layers_know_every_training_path_module():
    for module in MODULES:
        if module.startswith(("train.", "models.")) or module in ("runs", "recommend", "saving", "model"):
            assert _layer(module) is not None, f"add towerrec.{module} to LAYERS"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_no_module_imports_a_higher_layer(module):
    level = _layer(module)
    higher = sorted(m for m in GRAPH[module] if (_layer(m) or -1) > level)
    assert not higher, f"towerrec.{module} (layer {level}) imports higher layer(s): {higher}"


def test_the_training_stack_has_no_import_circles():
    inside = {m for m in MODULES if m.split(".")[0] in STACK and not (PACKAGE / m.replace(".", "/") / "__init__.py").is_file()}
    graph = {m: {t for t in GRAPH[m] if t in inside} for m in inside}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.parametrize("entry,absent", [
    ("towerrec.train.trainer", ("towerrec.runs", "towerrec.recommend", "towerrec.serve", "towerrec.cli")),
    ("towerrec.runs", ("towerrec.recommend", "towerrec.serve", "towerrec.cli", "towerrec.experiments")),
    ("towerrec.recommend", ("towerrec.serve", "towerrec.cli", "towerrec.experiments")),
])
def test_a_fresh_interpreter_loads_no_higher_layer(entry, absent):
    code = (f"import sys, {entry}\n"
            f"bad = sorted(m for m in sys.modules if m.startswith({absent!r}))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {entry} loads {out.stdout.strip()}"
