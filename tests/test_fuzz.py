"""Fuzzing the command line with hostile documents of valid shape (issue #9, "make the class
impossible").

The shapes come from the shipped files (``scenarios/*.yaml``, ``scenarios/small``,
``scenarios/sweeps``, ``scenarios/selection`` and the committed sweep CSVs), so the fuzzer
follows every schema change. Hypothesis mutates them: values become huge, tiny, negative,
infinite, nan, of the wrong type, unicode, deeply nested or aliased (up to a bomb); keys
are dropped, added or typed twice; whole documents become scalars. Each document goes
through ``sim.cli.main`` in-process (``validate``, ``run`` with a small event cap,
``select``, ``sweep`` validation, ``plot``), and every call must end with exit 0, 1 or 2,
no exception, one line on stderr for exit 2, and within a bounded time (a hang trips an
alarm).

``make test`` runs a fixed, derandomized set of examples (see EXAMPLES); ``make fuzz``
(``VGPU_SIM_FUZZ=long``) runs 50 times as many, with hypothesis's random search.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.inputs import MAX_MESSAGE

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
LONG = os.environ.get("VGPU_SIM_FUZZ") == "long"
#: Examples per target in `make test` (`make fuzz` runs 50 times as many).
EXAMPLES = {"scenario": 1000, "run": 150, "case": 600, "sweep": 250, "plot": 12}
#: Every call must end within this (seconds): a hang trips the alarm.
HANG = 60
#: Time per call and exit statuses per target, reported at the end (see conftest.py).
REPORT: dict[str, list[float]] = {}
STATUSES: dict[str, Counter[int]] = {}
DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def fuzz_settings(target: str) -> Any:
    return settings(
        max_examples=EXAMPLES[target] * (50 if LONG else 1),
        derandomize=not LONG,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _scenario_seeds(short: bool) -> list[dict[str, Any]]:
    seeds = []
    for path in sorted(SCENARIOS.glob("*.yaml")) + sorted((SCENARIOS / "small").glob("*.yaml")):
        doc = _load(path)
        doc.setdefault("name", path.stem)
        if short:  # runs must stay small: the fuzzer may still make them long
            doc["duration_ms"], doc["warmup_ms"] = 0.5, 0
        seeds.append(doc)
    return seeds


def _sweep_seeds() -> list[dict[str, Any]]:
    seeds = []
    for path in sorted((SCENARIOS / "sweeps").glob("*.yaml")):
        doc = _load(path)
        doc["base"] = str((path.parent / doc["base"]).resolve())
        doc["axes"] = {k: v[:2] for k, v in doc["axes"].items()}  # expansion stays cheap
        seeds.append(doc)
    return seeds


SEEDS = {
    "scenario": _scenario_seeds(short=False),
    "run": _scenario_seeds(short=True),
    "case": [_load(p) for p in sorted((SCENARIOS / "selection").glob("*.yaml"))],
    "sweep": _sweep_seeds(),
}

# -- hostile values ------------------------------------------------------------------------
DEEP = "@@DEEP@@"  # replaced by deep nesting in the text: the YAML emitter would recurse


def _bomb(levels: int) -> Any:
    node: Any = ["lol"] * 9
    for _ in range(levels):
        node = [node] * 9  # shared: the dumper writes anchors and aliases
    return node


NUMBERS = st.sampled_from(
    [0, 1, -1, 2, 3, 255, 256, 0xFFFF, 0x10000, 2**31, 2**32, 2**52, 2**63, 2**64, 2**70,
     -(2**70), 10**300, 0.0, -0.0, 1e-300, 5e-324, 1e-3, 0.5, 1.5, 1e300, 1.7976931348623157e308,
     math.inf, -math.inf, math.nan]
)  # fmt: skip
STRINGS = st.sampled_from(
    ["", " ", "..", ".", "/", "a/b", "\x00", "é" * 300, "1e3", "yes", "null", "0x10", "list",
     "xen-4.6", "p2m-ioreq-server", "hsw", "constant", "empirical", "00:02.0", "ff:1f.7",
     "../../etc/passwd", "x" * 10_000, "\u202e\u2028", "none", "ram"]
)  # fmt: skip
SCALARS = st.one_of(
    NUMBERS,
    STRINGS,
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.booleans(),
    st.none(),
)
HOSTILE = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(st.sampled_from(["dist", "value_ns", "mean_ns", "x", "label"]), SCALARS),
    st.sampled_from(
        [[0, 2**70], [5, 1], [0xFFFF, 0x10000], [-1, 3], [0, 0], DEEP, _bomb(5), _bomb(3)]
    ),
    st.sampled_from(
        [
            {"dist": "constant", "value_ns": 0},
            {"dist": "uniform", "low_ns": 0, "high_ns": 0},
            {"dist": "exponential", "mean_ns": 1e-3},
            {"dist": "lognormal", "mean_ns": 1, "sigma": 10},
            {"dist": "empirical", "file": "hostile.csv"},
            {"dist": "empirical", "file": "zeros.csv"},
            {"dist": "empirical", "file": "latin1.csv"},
            {"dist": "empirical", "file": "/dev/zero"},
            {"dist": "empirical", "file": "."},
        ]
    ),
)


def _paths(
    node: Any, here: tuple[Any, ...] = (), above: frozenset[int] = frozenset()
) -> Iterator[tuple[Any, ...]]:
    """Key paths into a document (mapping keys, the first list items), not through a
    node that contains itself (a "share" mutation can make one) nor below 8 levels."""
    if id(node) in above or len(here) > 8:
        return
    above = above | {id(node)}
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*here, k)
            yield from _paths(v, (*here, k), above)
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):
            yield (*here, i)
            yield from _paths(v, (*here, i), above)


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


NAMES = st.sampled_from(
    ["xen-4.6", "wp-split", "p2m-ioreq-server", "list", "rbtree", "hsw", "bdw", "xen-4.12",
     "constant", "exponential", "uniform", "lognormal", "pio", "mmio", "read", "write"]
)  # fmt: skip


def _nudge(draw: st.DrawFn, value: Any) -> Any:
    """A value near the original, mostly still valid: runs then get past validation, to
    boundaries, caps and the model itself."""
    if isinstance(value, bool) or value is None:
        return draw(st.sampled_from([True, False, None, 0, 1]))
    if isinstance(value, int | float):
        factor = draw(st.sampled_from([0, 0.5, 2, 10, 1000, 1e-3, -1]))
        nudged = value * factor + draw(st.sampled_from([0, 0, 1, -1]))
        return int(nudged) if isinstance(value, int) else float(nudged)
    if isinstance(value, str):
        return draw(NAMES)
    if isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        return draw(st.sampled_from([value[::-1], [value[0], value[0]], [value[1], value[1] + 4]]))
    return value


def _hostile(draw: st.DrawFn) -> Any:
    # A copy: a mutation must never change a strategy's own value (hypothesis replays
    # examples); deepcopy keeps the sharing inside a bomb, so its aliases stay.
    return copy.deepcopy(draw(HOSTILE))


@st.composite
def documents(draw: st.DrawFn, seeds: list[Any]) -> str:
    """YAML text of a shipped document with a few hostile mutations."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set"] * 3 + ["nudge"] * 5 + ["drop", "add", "share", "root"]))
        paths = list(_paths(doc))
        if op == "root" or not paths:
            doc = _hostile(draw)
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(doc, path), path[-1]
        if op == "set":
            parent[key] = _hostile(draw)
        elif op == "nudge":
            parent[key] = _nudge(draw, parent[key])
        elif op == "drop":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            name = draw(st.sampled_from(["bogus", "label", "name", "seed", "dist"]))
            parent[name] = _hostile(draw)
        elif op == "share":  # the same object twice: the dumper writes an alias
            other = draw(st.sampled_from(paths))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                _parent(doc, other)[other[-1]] = parent[key]
    text = yaml.dump(doc, Dumper=DUMPER, sort_keys=False, allow_unicode=draw(st.booleans()))
    text = text.replace(repr(DEEP), "[" * 700 + "]" * 700).replace(DEEP, "[" * 40 + "]" * 40)
    if draw(st.integers(0, 9)) == 0 and isinstance(doc, dict) and doc:
        text += f"{next(iter(doc))}: 1\n"  # a key typed twice
    return text


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    def hang(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def call(target: str, argv: list[str]) -> int:
    """main(argv) with the contract checked: exit 0/1/2, one short line for exit 2."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with alarm(HANG), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    REPORT.setdefault(target, []).append(time.perf_counter() - started)
    STATUSES.setdefault(target, Counter())[status] += 1
    assert status in (0, 1, 2), (status, err.getvalue()[:500])
    if status == 2:
        lines = err.getvalue().splitlines()
        assert len(lines) == 1, err.getvalue()[:2000]
        assert lines[0].startswith("vgpu-sim: error: ")
        assert len(lines[0]) <= len("vgpu-sim: error: ") + MAX_MESSAGE
    assert "Traceback" not in err.getvalue()
    return status


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where fuzzed files are written, with the hostile CSVs they may name."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "hostile.csv").write_text("ns\n1\nnan\n-5\n1e999\n")
    (d / "zeros.csv").write_text("0\n0\n")
    (d / "latin1.csv").write_bytes(b"\xe9t\xe9\n1\n")
    return d


def fuzz(target: str, workdir: Path, text: str, argv: Callable[[Path], list[str]]) -> None:
    path = workdir / f"{target}.yaml"
    path.write_text(text, encoding="utf-8")
    out = workdir / f"{target}-out"
    try:
        call(target, argv(path))
    finally:
        shutil.rmtree(out, ignore_errors=True)


@fuzz_settings("scenario")
@given(text=documents(SEEDS["scenario"]))
def test_fuzz_validate_scenarios(workdir: Path, text: str) -> None:
    fuzz("scenario", workdir, text, lambda p: ["validate", str(p)])


@fuzz_settings("run")
@given(text=documents(SEEDS["run"]))
def test_fuzz_run_scenarios_capped(workdir: Path, text: str) -> None:
    out = str(workdir / "run-out")
    fuzz(
        "run",
        workdir,
        text,
        lambda p: ["run", str(p), "--out", out, "--max-events", "20000", "--no-progress"],
    )


@fuzz_settings("case")
@given(text=documents(SEEDS["case"]))
def test_fuzz_select_case_files(workdir: Path, text: str) -> None:
    fuzz("case", workdir, text, lambda p: ["select", str(p)])


@fuzz_settings("sweep")
@given(text=documents(SEEDS["sweep"]))
def test_fuzz_validate_sweeps(workdir: Path, text: str) -> None:
    fuzz("sweep", workdir, text, lambda p: ["validate", str(p)])


CELLS = st.sampled_from(
    ["", "nan", "inf", "-inf", "1e999", "abc", "é", "1,2", '"', "\x00", "-1", "0", "1e-300"]
)


@fuzz_settings("plot")
@given(
    name=st.sampled_from(["points.csv", "aggregate.csv"]),
    line=st.integers(0, 12),
    cell=st.integers(0, 40),
    value=CELLS,
    raw=st.sampled_from([b"", b"\xff", b"\n", b",,,"]),
)
def test_fuzz_plot_damaged_csvs(
    workdir: Path, name: str, line: int, cell: int, value: str, raw: bytes
) -> None:
    results = workdir / "plot"
    shutil.rmtree(results, ignore_errors=True)
    shutil.copytree(ROOT / "results" / "sweeps" / "patch-series", results)
    lines = (results / name).read_bytes().split(b"\n")
    line %= len(lines)
    cells = lines[line].split(b",")
    cells[cell % len(cells)] = value.encode() + raw
    lines[line] = b",".join(cells)
    (results / name).write_bytes(b"\n".join(lines))
    call("plot", ["plot", str(results)])


def report() -> str:
    """One line per target: examples and seconds (printed by conftest at the end)."""
    return "; ".join(
        f"{target} {len(times)} examples, {sum(times):.1f} s in main(), exit "
        + "/".join(f"{code}:{n}" for code, n in sorted(STATUSES[target].items()))
        for target, times in REPORT.items()
    )
