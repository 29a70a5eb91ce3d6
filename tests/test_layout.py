"""The package's shape: four parts, arrows only downwards, no circle, small modules, one API.

The import graph is read from the source (``ast``), so an import inside a function counts
as much as one at the top of a module; only imports under ``if TYPE_CHECKING:`` are left
out, since they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sim

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "sim"

#: What each part may import, besides itself (the README's layout table says the same).
BASE = {"sim.version", "sim.inputs", "sim.results"}
ALLOWED: dict[str, set[str]] = {
    "sim.version": set(),
    "sim.inputs": set(),
    "sim.results": {"sim.version", "sim.inputs"},
    "sim.xen": {"sim.inputs"},
    "sim.model": {"sim.xen", *BASE},
    "sim.trace": {"sim.model", "sim.xen", *BASE},
    "sim.study": {"sim.model", "sim.xen", *BASE},
}
#: The top: the CLI, the benchmark and the package itself may import anything.
TOP = {"sim", "sim.cli", "sim.console", "sim.preflight", "sim.bench", "sim.__main__"}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SIM.rglob("*.py"))}


def part_of(module: str) -> str:
    """``sim.model.scenario`` -> ``sim.model``; top-level modules are their own part."""
    pieces = module.split(".")
    if len(pieces) >= 2 and f"sim.{pieces[1]}" in ALLOWED and (SIM / pieces[1]).is_dir():
        return f"sim.{pieces[1]}"
    return module


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> set[str]:
    """The sim modules ``path`` imports at run time, wherever the import statement is."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sim")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] == "sim"
        ):
            for alias in node.names:  # `from sim.model import runner` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {m: imports_of(p) - {m} for m, p in MODULES.items()}


def test_every_module_is_in_a_known_part() -> None:
    for module in MODULES:
        assert module in TOP or part_of(module) in ALLOWED, f"{module} belongs to no part"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in TOP))
def test_imports_only_run_downwards(module: str) -> None:
    part = part_of(module)
    allowed = ALLOWED[part] | {part}
    for target in sorted(GRAPH[module]):
        target_part = part_of(target)
        # A package's __init__ counts as its part (sim.xen for `import sim.xen`).
        assert target_part in allowed, (
            f"{module} imports {target}: {part} may import only {sorted(allowed)}"
        )


def test_no_import_circle() -> None:
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                circle = [*path[path.index(t) :], t]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_circle_detector_finds_a_circle() -> None:
    """The check above can fail: a two-module circle is reported."""
    saved = dict(GRAPH)
    try:
        GRAPH["sim.study.plot"] = GRAPH["sim.study.plot"] | {"sim.study.sweep"}
        GRAPH["sim.study.sweep"] = GRAPH["sim.study.sweep"] | {"sim.study.plot"}
        with pytest.raises(AssertionError, match="import circle"):
            test_no_import_circle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concern"


def test_public_api_resolves_every_name() -> None:
    assert len(set(sim.__all__)) == len(sim.__all__)
    assert set(sim.__all__) == {"__version__", *sim._EXPORTS}, "__all__ lists every export"
    for name in sim.__all__:
        value = getattr(sim, name)
        if name != "__version__":
            assert value is getattr(sys.modules[sim._EXPORTS[name]], name)
    with pytest.raises(AttributeError):
        _ = sim.no_such_name


def test_the_issue_names_are_public() -> None:
    from sim import (  # noqa: F401 -- the import is the test
        IoreqDomain,
        Rangeset,
        RangesetFull,
        Simulation,
        load_results,
        load_scenario,
        run_sweep,
    )


def test_import_sim_is_lazy() -> None:
    """``import sim`` loads neither SimPy nor matplotlib; a model name then loads SimPy."""
    code = (
        "import sys, sim\n"
        "print('simpy' in sys.modules, 'matplotlib' in sys.modules)\n"
        "sim.Simulation\n"
        "print('simpy' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out == ["False", "False", "True"]
