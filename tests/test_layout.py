"""The package layout: one import namespace, layers that import only downward, no import cycles."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> package it installs as (pyproject's [tool.setuptools.package-dir])
PACKAGE_DIRS = {"facelift": "facelift", "flows": "facelift.flows", "tasks": "facelift.tasks",
                "models": "facelift.models"}
# layer of each module, by longest matching prefix: a module may import its own layer or a lower one
LAYERS = {"facelift": 0, "facelift.models": 1, "facelift.tasks": 2, "facelift.flows": 3,
          "facelift.api": 4, "facelift.cli": 4, "facelift.stack": 4, "facelift.testing": 4}
LAYER_NAMES = ["ground (config, storage, dataset)", "models", "tasks", "flows", "cli / api / testing"]


def package_modules() -> dict[str, Path]:
    """Every module of the installed namespace, named as it imports (facelift.tasks.build.steps, ...)."""
    mods: dict[str, Path] = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its body (lazy imports included)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            # importing a.b.c also runs a and a.b (except the importer's own ancestors, already running)
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in known and mod != name and not name.startswith(mod + "."):
                    found.add(mod)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = package_modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_graph_sees_lazy_imports():
    graph = import_graph()
    # lazy (function-level) imports count: the CLI imports flows inside its command bodies
    assert "facelift.flows.build_dataset" in graph["facelift.cli.main"]
    assert "facelift.storage" in graph["facelift.dataset"]


def test_layers_import_only_downward():
    bad = [f"{m} ({LAYER_NAMES[layer(m)]}) imports {t} ({LAYER_NAMES[layer(t)]})"
           for m, targets in import_graph().items() for t in sorted(targets) if layer(t) > layer(m)]
    assert not bad, "\n".join(bad)


def test_package_init_imports_nothing():
    assert import_graph()["facelift"] == set()


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_cycle_detector_catches_a_cycle(monkeypatch):
    fake = {"facelift": {"facelift.api"}, "facelift.api": {"facelift"}}
    monkeypatch.setitem(globals(), "import_graph", lambda: fake)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):  # a copy, so setuptools' build/ stays out of the checkout
        shutil.copy(ROOT / name, src / name)
    for folder in PACKAGE_DIRS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, cwd=out, timeout=300)
    (whl,) = out.glob("facelift-*.whl")
    return whl


def test_wheel_holds_only_facelift(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"facelift"}
    for module in ("facelift/flows/build_dataset.py", "facelift/tasks/build/steps.py", "facelift/models/heads/base.py",
                   "facelift/cli/main.py", "facelift/data/name.basics.sample.tsv"):
        assert module in names


def test_non_editable_install_imports_every_flow(wheel: Path, tmp_path: Path):
    """A plain (non-editable) install of the wheel serves the flows, tasks and models by their new names."""
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import facelift.flows.pipeline as p, facelift.tasks.build.steps as b, facelift.models.heads as h, "
            "facelift.cli.main; print(p.__file__); print(b.__file__); print(h.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(line.startswith(str(target)) for line in out.stdout.split()), out.stdout


STAGES = {"build", "train", "evaluate", "audit"}


def test_tasks_has_one_package_per_stage():
    """tasks/ shows the pipeline: a package per stage, at most two top-level modules, no stage prefixes."""
    tasks = ROOT / "tasks"
    packages = {p.name for p in tasks.iterdir() if (p / "__init__.py").exists()}
    assert packages >= STAGES, sorted(packages)
    top = sorted(p.name for p in tasks.glob("*.py"))
    assert len(top) <= 2, top
    for package in packages:
        for module in (tasks / package).glob("*.py"):
            assert not module.stem.startswith(package[:4]), f"{module} carries its stage's prefix"


def test_stage_packages_document_and_export():
    """Each stage's __init__ says what it reads and writes and exports names that exist (and no clash with a
    submodule: ``build.prepare`` must stay the function after ``import facelift.tasks.build.steps``)."""
    import importlib

    for stage in sorted(STAGES):
        pkg = importlib.import_module(f"facelift.tasks.{stage}")
        assert pkg.__doc__ and "Open" in pkg.__doc__ and "writes" in pkg.__doc__, stage
        assert pkg.__all__, stage
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            assert not isinstance(obj, type(pkg)), f"facelift.tasks.{stage}.{name} is a module, not an export"


def test_every_package_is_in_pyproject():
    """A sub-package missing from [tool.setuptools] packages would be left out of the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in package_modules().items() if path.name == "__init__.py"}
    assert found <= listed, sorted(found - listed)
