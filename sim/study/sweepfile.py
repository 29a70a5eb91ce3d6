"""Sweep files: a base scenario, axes of values, replications, one seed -> points and tasks.

A sweep file (``scenarios/sweeps/*.yaml``) names a base scenario, fixed overrides
(``set:``) and ordered ``axes:``. Each axis is either a key path with a list of values
(``xen.rangeset: [list, rbtree]``) or a named *compound* axis whose values are mappings
with a ``label`` and several key paths, for steps that are specific combinations rather
than a cartesian product::

    variant:
      - {label: "list", xen.rangeset: list}
      - {label: "p2m", xen.design: p2m-ioreq-server}

A value that is a mapping with a ``label`` key makes its axis compound. The sweep's
points are the cartesian product of the axes, first axis slowest.

Everything is validated before anything runs: the sweep file's own keys, every key path
(which must exist in the base scenario's *effective* configuration, defaults included),
and every expanded point as a full scenario. No two axes, and no two keys of one
compound value or of ``set:``, may write the same resolved key path (``guests[0].x`` and
``guests.0.x`` are one; a path inside another counts too), since the last write would
win silently and ``points.csv`` would label a point with values that did not run; and no
two points may run the same scenario. A sweep has at most :data:`MAX_POINTS` points and
:data:`MAX_RUNS` runs, checked before it is expanded. Problems are :class:`InputError`
naming the file, the key path (or the point's axis values) and the problem.

Seeds: each point has a stable id, the first 12 hex digits of the SHA-256 of the
canonical JSON of its axis values, so adding a value to an axis changes no other
point's id. Each (point, replication) is seeded with
``SeedSequence(entropy=seed, spawn_key=(int(id[:8], 16), replication))``; results are
therefore the same whatever the number of jobs, the backend or the completion order.
The base scenario's own ``seed`` is not used.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from sim.inputs import (
    InputError,
    StrictModel,
    bounded,
    echo,
    is_one_line,
    load_yaml,
    set_keypath,
    split_keypath,
    user_path,
    validate,
    validate_value,
)
from sim.model.bounds import Name, Seed
from sim.model.budget import estimate_run
from sim.model.scenario import scenario_from_data

SWEEP_SCHEMA_VERSION = 1
#: A sweep expands to at most this many points, and runs at most this many runs (points
#: x replications): 10 times the shipped sweeps' 40 points x 3 replications and more.
MAX_POINTS = 10_000
MAX_RUNS = 100_000
MAX_AXES = 16
MAX_AXIS_VALUES = 1_000
MAX_SET_KEYS = 1_000
#: A value's label is a table cell and a legend entry.
MAX_LABEL = 200


Replications = bounded(
    int, 1, 1000, "Student t intervals are tight at a few tens of replications; 1000 is plenty"
)


class SweepFile(StrictModel):
    """The schema of a sweep file; axis contents are checked by :func:`load_sweep`."""

    schema_version: Literal[1]
    description: Annotated[str, Field(max_length=4096)] = ""
    base: (
        Annotated[str, Field(min_length=1, max_length=4096)]
        | Annotated[dict[str, Any], Field(max_length=64)]
    ) = Field(description="The base scenario: a path relative to the sweep file, or inline.")
    set_: Annotated[dict[str, Any], Field(max_length=MAX_SET_KEYS)] = Field(
        default_factory=dict,
        alias="set",
        description="Fixed overrides applied to the base: key path -> value.",
    )
    axes: Annotated[
        dict[str, Annotated[list[Any], Field(max_length=MAX_AXIS_VALUES)]],
        Field(min_length=1, max_length=MAX_AXES),
    ] = Field(description="Ordered axes: key path -> values, or name -> labelled mappings.")
    replications: Replications
    seed: Seed


@dataclass(frozen=True)
class AxisValue:
    label: str  # shown in the CSVs and legends
    settings: tuple[tuple[str, Any], ...]  # (key path, value) applied to the base
    identity: Any  # the value as written in the sweep file; hashed into the point id


@dataclass(frozen=True)
class Axis:
    name: str
    compound: bool
    values: tuple[AxisValue, ...]


@dataclass(frozen=True)
class Point:
    index: int  # position in the cartesian product; the order of the CSV rows
    point_id: str
    labels: dict[str, str]  # axis name -> label of this point's value
    config: dict[str, Any]  # the validated effective scenario configuration
    scenario_sha256: str
    work: float = 0.0  # estimated events of one run (sim.model.budget.estimate_run)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.labels.items())


@dataclass(frozen=True)
class Task:
    """One unit of work: a point and a replication, with its derived seed."""

    point: Point
    replication: int
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.point.point_id}-r{self.replication}.json"


@dataclass(frozen=True)
class Sweep:
    file: Path
    spec: SweepFile
    axes: tuple[Axis, ...]
    points: tuple[Point, ...]
    base_config: dict[str, Any]  # the base with ``set:`` applied, defaults included
    base_dir: Path  # where relative paths inside the scenarios (empirical CSVs) resolve
    sha256: str  # identity of what runs: every point's config, the seeds, replications

    @property
    def name(self) -> str:
        return self.file.stem

    def size(self, max_events: float) -> str:
        """Runs and estimated events, as reported before a sweep runs."""
        reps = self.spec.replications
        total = sum(p.work for p in self.points) * reps
        largest = max(p.work for p in self.points)
        over = f", above --max-events {max_events:,.0f}" if largest > max_events else ""
        return (
            f"{len(self.points)} points x {reps} replications = {len(self.points) * reps} "
            f"runs, ~{total:,.0f} events in all, ~{largest:,.0f} in the largest run{over}"
        )

    def tasks(self) -> list[Task]:
        return [
            Task(point, rep, derive_seed(self.spec.seed, point.point_id, rep))
            for point in self.points
            for rep in range(self.spec.replications)
        ]


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def point_id_of(identities: dict[str, Any]) -> str:
    """Stable id of a point from its axis values (not its index)."""
    return hashlib.sha256(canonical_json(identities).encode()).hexdigest()[:12]


def derive_seed(master_seed: int, point_id: str, replication: int) -> int:
    """The seed of one (point, replication): independent of order, jobs and backend."""
    seq = np.random.SeedSequence(
        entropy=master_seed, spawn_key=(int(point_id[:8], 16), replication)
    )
    return int(seq.generate_state(1)[0])


def _label_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _keypath_problem(config: dict[str, Any], keypath: str) -> str | None:
    """Why ``keypath`` does not name a value of ``config``, or None if it does."""
    try:
        parts = split_keypath(keypath)
    except ValueError as exc:
        return str(exc)
    node: Any = config
    for depth, part in enumerate(parts):
        here = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts[: depth + 1])
        here = here.lstrip(".")
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"no such key in the base scenario's effective configuration ({here})"
        elif not isinstance(node, dict) or part not in node:
            return f"no such key in the base scenario's effective configuration ({here})"
        node = node[part]
    if parts == ["seed"]:
        return "the sweep's own seeds replace the scenario's seed; use replications"
    return None


class _Writes:
    """The resolved key paths a group of settings writes, to refuse two that write the
    same value: the same path however spelt, or one path inside the other."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.exact: dict[tuple[Any, ...], tuple[str, str]] = {}  # path -> (where, spelling)
        self.prefixes: dict[tuple[Any, ...], tuple[str, str]] = {}

    def add(self, where: str, keypath: str, why: str) -> None:
        path = tuple(split_keypath(keypath))  # already checked by _keypath_problem
        clash = next(
            (self.exact[path[:n]] for n in range(1, len(path) + 1) if path[:n] in self.exact),
            None,
        ) or self.prefixes.get(path)
        if clash is not None and clash[0] != where:
            raise InputError(
                self.file,
                where,
                f"writes {echo(keypath)}, the same key as {clash[0]} ({echo(clash[1])}): {why}",
            )
        self.exact.setdefault(path, (where, keypath))
        for n in range(1, len(path)):
            self.prefixes.setdefault(path[:n], (where, keypath))


_LAST_WINS = (
    "the last write would win and points.csv would label points with values that did not run"
)


def _parse_axis(file: Path, name: str, values: list[Any], config: dict[str, Any]) -> Axis:
    where = f"axes.{name}"
    if not values:
        raise InputError(file, where, "empty axis: give at least one value")
    compound = any(isinstance(v, dict) and "label" in v for v in values)
    parsed: list[AxisValue] = []
    if compound:
        for i, v in enumerate(values):
            if not isinstance(v, dict) or not isinstance(v.get("label"), str) or not v["label"]:
                raise InputError(
                    file, f"{where}[{i}]", "a compound axis value must be a mapping with a label"
                )
            settings = [(k, x) for k, x in v.items() if k != "label"]
            if not settings:
                raise InputError(file, f"{where}[{i}]", "sets no key path besides its label")
            writes = _Writes(file)
            for keypath, _ in settings:
                if not isinstance(keypath, str):
                    raise InputError(file, f"{where}[{i}]", f"{echo(keypath)} is not a key path")
                problem = _keypath_problem(config, keypath)
                if problem:
                    raise InputError(file, f"{where}[{i}].{keypath}", problem)
                writes.add(f"{where}[{i}].{keypath}", keypath, _LAST_WINS)
            parsed.append(AxisValue(v["label"], tuple(settings), v))
    else:
        problem = _keypath_problem(config, name)
        if problem:
            if any(isinstance(v, dict) for v in values):
                problem += "; for a compound axis, give every value a label"
            raise InputError(file, where, problem)
        parsed = [AxisValue(_label_of(v), ((name, v),), v) for v in values]
    labels = [v.label for v in parsed]
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if label in seen:
            raise InputError(file, f"{where}[{i}]", f"duplicate value {echo(label)}")
        if len(label) > MAX_LABEL or not is_one_line(label):
            raise InputError(
                file,
                f"{where}[{i}]",
                f"a label is a table cell and a legend entry: one line of at most {MAX_LABEL} "
                "characters, without control characters",
            )
        seen.add(label)
    return Axis(name, compound, tuple(parsed))


def _check_axes_write_apart(file: Path, axes: tuple[Axis, ...]) -> None:
    """Two axes must not write one key: a point applies a value of every axis, so one
    write would undo the other. Values of one axis never meet, so they may."""
    writes = _Writes(file)
    for axis in axes:
        for value in axis.values:
            for keypath, _ in value.settings:
                writes.add(f"axes.{axis.name}", keypath, _LAST_WINS)


def _rewrap(exc: InputError, file: Path, prefix: str) -> InputError:
    keypath = f"{prefix}{exc.keypath}" if exc.keypath else prefix.rstrip(": .")
    return InputError(file, keypath, exc.problem)


def _load_base(file: Path, spec: SweepFile) -> tuple[Any, Any, Path]:
    """The base scenario's raw data, its validated form, and the file its paths are
    relative to. A base file names its own errors; an inline base's are the sweep's."""
    if isinstance(spec.base, str):
        base_file = user_path(file.parent, spec.base, file, "base")
        if base_file.is_dir():
            raise InputError(file, "base", f"{echo(spec.base)} is a directory, not a scenario file")
        if not base_file.exists():
            raise InputError(
                file,
                "base",
                f"scenario file {echo(spec.base)} not found (relative to the sweep file)",
            )
        base_raw = load_yaml(base_file)
        return base_raw, scenario_from_data(base_raw, base_file), base_file
    try:
        base = scenario_from_data(spec.base, file)
    except InputError as exc:
        raise _rewrap(exc, file, "base.") from None
    return spec.base, base, file.resolve()


def load_sweep(path: str | Path) -> Sweep:
    """Load and fully validate a sweep file, expanding and validating every point."""
    file = Path(path)
    raw = load_yaml(file)
    if not isinstance(raw, dict):
        raise InputError(file, "(top level)", "a sweep must be a mapping of keys")
    spec = validate(SweepFile, raw, file)
    base_raw, base, scenario_file = _load_base(file, spec)
    if not isinstance(base_raw, dict):  # scenario_from_data has refused it already
        raise InputError(file, "base", "the base scenario must be a mapping")
    if any(g.replay is not None for g in base.guests):
        # Sweep workers build the model without a capture reader (sim.model.replay).
        raise InputError(
            file,
            "base",
            "a scenario that replays a capture cannot be swept yet; run it once per design "
            "or page count with 'vgpu-sim run --set'",
        )

    # Fixed overrides: key paths must exist in the base's effective configuration.
    raw_with_set = copy.deepcopy(base_raw)
    set_writes = _Writes(file)
    for keypath, value in spec.set_.items():
        problem = _keypath_problem(base.config(), keypath)
        if problem:
            raise InputError(file, f"set.{keypath}", problem)
        set_writes.add(f"set.{keypath}", keypath, "the last would win")
        try:
            set_keypath(raw_with_set, keypath, value, str(file))
        except InputError as exc:
            raise InputError(file, f"set.{keypath}", exc.problem) from None
    try:
        base_config = scenario_from_data(raw_with_set, scenario_file).config()
    except InputError as exc:
        raise _rewrap(exc, file, "set: ") from None

    axes = tuple(_parse_axis(file, name, values, base_config) for name, values in spec.axes.items())
    _check_axes_write_apart(file, axes)
    n_points = math.prod(len(a.values) for a in axes)
    if n_points > MAX_POINTS:
        raise InputError(file, "axes", f"{n_points:,} points; a sweep has at most {MAX_POINTS:,}")
    if n_points * spec.replications > MAX_RUNS:
        raise InputError(
            file,
            "replications",
            f"{n_points:,} points x {spec.replications} = {n_points * spec.replications:,} "
            f"runs; a sweep has at most {MAX_RUNS:,}",
        )

    points: list[Point] = []
    by_scenario: dict[str, str] = {}
    for index, combo in enumerate(itertools.product(*(a.values for a in axes))):
        labels = {a.name: v.label for a, v in zip(axes, combo, strict=True)}
        identities = {a.name: v.identity for a, v in zip(axes, combo, strict=True)}
        data = copy.deepcopy(raw_with_set)
        where = "point {" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"
        try:
            for value in combo:
                for keypath, setting in value.settings:
                    set_keypath(data, keypath, copy.deepcopy(setting), str(file))
            scenario = scenario_from_data(data, scenario_file)
        except InputError as exc:
            raise _rewrap(exc, file, f"{where}: ") from None
        sha = scenario.sha256()
        if sha in by_scenario:
            raise InputError(
                file,
                where,
                f"runs the same scenario as {by_scenario[sha]}: an axis value changes nothing "
                "here, so the two labels would name one configuration",
            )
        by_scenario[sha] = where
        work = estimate_run(scenario, scenario_file.parent).work
        points.append(Point(index, point_id_of(identities), labels, scenario.config(), sha, work))
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):  # only if two axes hash alike; never seen, but be sure
        raise InputError(file, "axes", "two points have the same id")

    identity = {
        "points": [[p.point_id, p.scenario_sha256] for p in points],
        "replications": spec.replications,
        "seed": spec.seed,
    }
    return Sweep(
        file=file,
        spec=spec,
        axes=axes,
        points=tuple(points),
        base_config=base_config,
        base_dir=scenario_file.parent,
        sha256=hashlib.sha256(canonical_json(identity).encode()).hexdigest(),
    )


def default_out_dir(sweep_file: str | Path, root: str | Path = "results") -> Path:
    """``results/sweeps/<sweep file name>``; a file name that is not one safe path
    component (``...yaml`` has the stem ``..``) cannot name a directory."""
    stem = Path(sweep_file).stem
    try:
        validate_value(Name, stem, str(sweep_file), "(file name)")
    except InputError as exc:
        raise InputError(
            sweep_file,
            "(file name)",
            f"cannot name the results directory: {exc.problem}; use --out",
        ) from None
    return Path(root) / "sweeps" / stem
