"""Module boundaries (issue 16), each checked in a fresh interpreter, and no import cycles.

The training module must not pull in the server, the node must not pull in training, and the
C-STORE path (what runs before a Success is answered) must not pull in torch or any model code:
an import there costs seconds of start-up and memory in every receiving process, and a model
bug must never stop images from being received. A fresh interpreter per module shows what
importing that module alone loads; the static graph (every ``import`` statement, including
those inside functions) shows what it may load later.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dicomnode", "training")

SERVING = tuple(f"dicomnode.{m}" for m in (
    "scp", "spool", "router", "worker", "scu", "node", "http", "metrics", "cli", "config",
    "derive", "structure", "files"))
CSTORE_PATH = tuple(f"dicomnode.{m}" for m in ("scp", "wal", "spool", "structure", "files"))
MODEL_CODE = ("torch", "dicomnode.engine", "dicomnode.nets")
# The engine's vocabulary: device and precision names that the configuration (loaded by the
# C-STORE path) checks. The package's __init__ imports nothing at load time and choices.py
# nothing at all; test_the_engine_vocabulary_imports_nothing keeps it so.
ENGINE_VOCABULARY = ("dicomnode.engine", "dicomnode.engine.choices")
# What training may load of dicomnode: the engine, the networks, and the DICOM reading and
# small helpers both sides share (issue 16: series/pixels may stay where they are).
TRAINING_MAY_LOAD = ("dicomnode.engine", "dicomnode.nets", *(f"dicomnode.{m}" for m in (
    "errors", "logs", "series", "pixels", "multiframe", "padding")))
# Engine parts that lived beside the engine before issue 16: they must not come back.
FORMER_ENGINE_PARTS = tuple(f"dicomnode.{m}" for m in (
    "zoo", "normalise", "devices", "inference", "guards", "degradations", "learned",
    "classical"))

# Cycles that exist today, as (importer, imported) edges; the tests fail on any other cycle,
# and when one of these disappears (then delete its line).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imported_names(path: Path) -> set[str]:
    """Every module an ``import`` statement in ``path`` names, wherever the statement is.

    ``from a import b`` names ``a.b`` when that is a module of ours, else ``a``; relative
    imports are resolved; packages above the named module are not counted (importing
    ``a.b.c`` runs ``a/__init__`` too, but a package that imports its own submodules is not a
    cycle that can fail).
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    modules = project_modules()
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in modules else base)
    return names


@cache
def import_graph() -> dict[str, set[str]]:
    """Our modules -> the names they import (ours and third-party)."""
    return {name: imported_names(path) for name, path in project_modules().items()}


def reachable(start: str) -> set[str]:
    """Every name ``start`` may import, directly or through our modules, at any time."""
    graph = import_graph()
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def is_within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is a few dozen modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_path(graph, set(c)) for c in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    path, seen = [start], {start}
    while True:
        following = sorted(t for t in graph[path[-1]] if t in component)
        if start in following and (len(path) > 1 or len(component) == 1):
            return [*path, start]
        step = next((t for t in following if t not in seen), following[0])
        if step in seen:
            return [*path[path.index(step):], step]
        path.append(step)
        seen.add(step)


def loaded_modules(module: str) -> set[str]:
    """``sys.modules`` after importing ``module`` alone in a fresh interpreter."""
    code = (f"import importlib, json, sys\nimportlib.import_module({module!r})\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr}"
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def training_modules() -> list[str]:
    return sorted(m for m in project_modules() if is_within(m, ("training",)))


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert "dicomnode.engine.learned" in graph["dicomnode.engine"]  # engine.load's lazy import
    assert "dicomnode.nets.registry" in graph["dicomnode.nets"]
    assert "torch" in graph["dicomnode.engine.devices"]
    assert len(training_modules()) >= 10 and "dicomnode.scp" in graph


def test_find_cycles_reports_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c", "x"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = {name: set(targets) for name, targets in import_graph().items()}
    for importer, imported in KNOWN_CYCLE_EDGES:
        assert imported in graph[importer], (
            f"{importer} no longer imports {imported}: delete it from KNOWN_CYCLE_EDGES")
        graph[importer].discard(imported)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_known_cycles_are_still_cycles() -> None:
    """Each known edge closes a cycle today: the list records real cycles, nothing else."""
    for importer, imported in KNOWN_CYCLE_EDGES:
        assert importer in reachable(imported), f"{importer} -> {imported} is no cycle"


@pytest.mark.slow
@pytest.mark.parametrize("module", ["training", *training_modules()])
def test_training_loads_no_serving_module(module: str) -> None:
    loaded = loaded_modules(module)
    serving = sorted(m for m in loaded if m in SERVING)
    assert not serving, f"importing {module} loads the server's {serving}"
    outside = sorted(m for m in loaded if is_within(m, ("dicomnode",)) and m != "dicomnode"
                     and not is_within(m, TRAINING_MAY_LOAD))
    assert not outside, f"importing {module} loads {outside}, outside the engine"


def test_training_may_not_import_serving_modules_later() -> None:
    """Imports inside functions count too: they run on the first call."""
    for module in training_modules():
        found = sorted(m for m in reachable(module) if m in SERVING)
        assert not found, f"{module} may import the server's {found}"
        outside = sorted(m for m in reachable(module) if is_within(m, ("dicomnode",))
                         and m != "dicomnode" and not is_within(m, TRAINING_MAY_LOAD))
        assert not outside, f"{module} may import {outside}, outside the engine"


def test_the_engine_parts_live_in_the_engine() -> None:
    modules = project_modules()
    assert not [m for m in FORMER_ENGINE_PARTS if m in modules]
    engine = {m for m in modules if is_within(m, ("dicomnode.engine",))}
    assert {f"dicomnode.engine.{m}" for m in ("cards", "normalise", "devices", "inference",
                                              "guards", "degradations", "learned",
                                              "classical", "choices")} <= engine


def test_the_engine_imports_nothing_of_the_node_or_training() -> None:
    """Arrows only into the engine: it uses the networks and the shared helpers, no more."""
    allowed = ("dicomnode.engine", "dicomnode.nets", "dicomnode.errors", "dicomnode.logs")
    for module in (m for m in project_modules() if is_within(m, ("dicomnode.engine",))):
        ours = {m for m in reachable(module) if is_within(m, PACKAGES)}
        assert all(is_within(m, allowed) for m in ours), (
            f"{module} may import {sorted(m for m in ours if not is_within(m, allowed))}")


def test_the_engine_vocabulary_imports_nothing() -> None:
    graph = import_graph()
    assert graph["dicomnode.engine.choices"] <= {"__future__", "re"}
    top_level = {name for node in ast.parse(
        (ROOT / "dicomnode/engine/__init__.py").read_text(encoding="utf-8")).body
        for name in _statement_imports(node)}
    assert top_level <= {"__future__", "pathlib", "typing"}, top_level


def _statement_imports(node: ast.stmt) -> set[str]:
    """Modules a top-level statement imports when run (``if TYPE_CHECKING:`` never runs)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom):
        return {node.module or ""}
    return set()


@pytest.mark.slow
def test_the_node_never_loads_training() -> None:
    node = sorted(m for m in project_modules() if is_within(m, ("dicomnode",)))
    code = ("import importlib, json, sys\n"
            f"for name in {node!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'training')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    for module in node:
        assert not is_within_any(reachable(module), ("training",)), f"{module} imports training"


@pytest.mark.parametrize("module", CSTORE_PATH)
def test_the_cstore_path_loads_no_model_code(module: str) -> None:
    loaded = {m for m in loaded_modules(module) if is_within(m, MODEL_CODE)
              and m not in ENGINE_VOCABULARY}
    assert not loaded, f"importing {module} loads {sorted(loaded)}"
    later = {m for m in reachable(module) if is_within(m, MODEL_CODE)
             and m not in ENGINE_VOCABULARY}
    assert not later, f"{module} may import {sorted(later)} (inside a function)"


def is_within_any(names: set[str], prefixes: tuple[str, ...]) -> bool:
    return any(is_within(n, prefixes) for n in names)
