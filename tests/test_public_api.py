"""The public surface: ``import towerrec as tr`` reaches every exported name, lazily, each documented."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import towerrec

PACKAGES = ("towerrec", "towerrec.data", "towerrec.experiments", "towerrec.features", "towerrec.index",
            "towerrec.layers", "towerrec.metrics", "towerrec.models", "towerrec.serve", "towerrec.tasks",
            "towerrec.train", "towerrec.tune")

# Modules still being rewritten in issue 14 (one model path) when this test was written; their
# methods lacking a docstring then: Trainer.fit, TwoTowerModel.from_config, EASEModel.fit,
# PopularityModel.fit. Remove an entry once its module's methods are documented.
def _exports():
    for name in PACKAGES:
        package = importlib.import_module(name)
        for attribute in package.__all__:
            yield name, attribute, getattr(package, attribute)


def _undocumented(obj) -> bool:
    doc = inspect.getdoc(obj) if not inspect.isclass(obj) else obj.__dict__.get("__doc__")
    doc = (doc or "").strip()
    # a dataclass without a docstring gets its signature as __doc__: that is no documentation
    return not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ repeats a name"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it lacks: {missing}"


def test_the_top_package_reaches_the_main_names() -> None:
    wanted = {"Dataset", "load_dataset", "make_split", "FeatureSpec", "FeatureSet", "MLP", "Retrieval",
              "evaluate_retrieval", "BruteForceIndex", "FaissIndex", "load_index", "Tower", "TwoTowerModel",
              "RunConfig", "load_config", "preset", "train_run", "load_run", "export_bundle", "load_bundle"}
    assert wanted <= set(towerrec.__all__)
    assert towerrec.Dataset is importlib.import_module("towerrec.data").Dataset
    assert towerrec.BruteForceIndex is importlib.import_module("towerrec.index").BruteForceIndex
    assert set(towerrec.__all__) <= set(dir(towerrec))
    assert {"data", "metrics", "train"} <= set(dir(towerrec))
    assert towerrec.metrics is importlib.import_module("towerrec.metrics")
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        towerrec.NoSuchThing  # noqa: B018


def test_every_exported_class_and_function_is_documented() -> None:
    undocumented = sorted({f"{obj.__module__}.{obj.__qualname__}" for _, _, obj in _exports()
                           if (inspect.isclass(obj) or inspect.isfunction(obj)) and _undocumented(obj)})
    assert not undocumented, f"exported without a docstring: {undocumented}"


def test_public_methods_of_exported_classes_are_documented() -> None:
    undocumented = set()
    for _, _, cls in _exports():
        if not inspect.isclass(cls):
            continue
        for name, member in vars(cls).items():
            if name.startswith("_"):
                continue
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if inspect.isfunction(function) and _undocumented(function):
                undocumented.add(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert not undocumented, f"public methods without a docstring: {sorted(undocumented)}"


def test_import_towerrec_is_lazy() -> None:
    """``import towerrec`` (and so the CLI's start) loads neither torch nor polars."""
    probe = "import sys, towerrec; print(sorted({'torch', 'polars'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def _module_imports() -> dict[str, set[str]]:
    """towerrec module -> the towerrec modules it imports at module level (what runs on import)."""
    root = Path(towerrec.__file__).parent.parent
    modules = {}
    for path in (root / "towerrec").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
                deps |= submodules
                if len(submodules) < len(node.names):  # a name defined by the module itself
                    deps.add(node.module)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_circle_at_module_level() -> None:
    """No chain of module-level imports leads back to where it started (package ``__init__``s included)."""
    graph = _module_imports()
    assert len(graph) > 50 and graph["towerrec.index.brute_force"] >= {"towerrec.index.base", "towerrec.ids"}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
