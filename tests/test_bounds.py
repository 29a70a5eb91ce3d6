"""Every number of every input schema has a finite range (issue #9, "make the class impossible").

The test walks the pydantic schemas of scenarios, sweep files and case files and fails for
any numeric field without both a lower and an upper bound, so a field added later without
bounds breaks the suite. Scenario and sweep numbers must also say why their range is what
it is (:class:`sim.inputs.Reason`), and their strings and lists must have a maximum
length. A number checked by a custom validator (a case file's address spans) must refuse
huge and negative values when probed.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.functional_validators import AfterValidator, PlainValidator

from sim.cli import main
from sim.inputs import InputError, Reason, bounded, validate
from sim.model.scenario import Scenario, scenario_from_data
from sim.study.sweepfile import SweepFile
from sim.xen.casefile import CaseFile
from sim.xen.casespec import AccessSpec, StepSpec

#: A case file's models: the file, and each entry of its ``accesses`` (an access or a step).
CASE_FILE_MODELS = (CaseFile, AccessSpec, StepSpec)

#: A PlainValidator replaces pydantic's own validation, so its bounds cannot be seen, only
#: probed; an AfterValidator on a number without bounds is probed too.
CUSTOM = (PlainValidator,)
HOSTILE = (10**40, -(10**40), [0, 10**40], [-1, 0], [10**40, 10**40])


@dataclass
class Leaf:
    """One value a schema accepts: where it is, its type and everything constraining it."""

    path: str
    kind: Any
    meta: list[Any] = field(default_factory=list)

    def has(self, *types_: type) -> bool:
        return any(isinstance(m, types_) for m in self.meta)

    @property
    def custom(self) -> list[Any]:
        return [m for m in self.meta if isinstance(m, CUSTOM)]

    @property
    def after(self) -> list[Any]:
        return [m for m in self.meta if isinstance(m, AfterValidator)]


def _expand(meta: list[Any]) -> list[Any]:
    """pydantic wraps a type's ``Field(...)`` as a FieldInfo: take its constraints."""
    out = []
    for m in meta:
        out.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return out


def leaves(model: type[BaseModel]) -> Iterator[Leaf]:
    """Every leaf of ``model``'s schema, nested models and union members included."""
    seen: set[type] = set()

    def walk_model(m: type[BaseModel], prefix: str) -> Iterator[Leaf]:
        if m in seen:
            return
        seen.add(m)
        for name, info in m.model_fields.items():
            yield from walk(info.annotation, _expand(info.metadata), f"{m.__name__}.{name}")

    def walk(tp: Any, meta: list[Any], path: str) -> Iterator[Leaf]:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            inner, *extra = typing.get_args(tp)
            yield from walk(inner, meta + _expand(extra), path)
        elif origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(tp):
                yield from walk(arg, meta, path)
        elif tp is type(None) or origin is Literal or tp is bool or tp is Any:
            return
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            yield from walk_model(tp, path)
        elif any(isinstance(m, CUSTOM) for m in meta):
            yield Leaf(path, tp, meta)  # what the validator accepts is its business: probed
        elif origin in (list, tuple, dict):
            yield Leaf(path, origin, meta)  # the container itself: its length
            args = typing.get_args(tp)
            for arg in args[1:] if origin is dict else args:
                yield from walk(arg, [], f"{path}[]")
        else:
            yield Leaf(path, tp, meta)

    yield from walk_model(model, model.__name__)


def _numeric(tp: Any) -> bool:
    if tp in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(tp))


def unbounded_numbers(model: type[BaseModel], need_reason: bool) -> list[str]:
    problems = []
    for leaf in leaves(model):
        if not _numeric(leaf.kind):
            continue
        low = leaf.has(annotated_types.Ge, annotated_types.Gt)
        high = leaf.has(annotated_types.Le, annotated_types.Lt)
        if leaf.custom or (leaf.after and not (low or high)):
            for validator in leaf.custom or leaf.after:
                for value in HOSTILE:
                    try:
                        validator.func(value)
                    except (ValueError, TypeError, AssertionError):
                        continue
                    problems.append(f"{leaf.path}: its validator accepts {value!r}")
            continue
        if not (low and high):
            problems.append(f"{leaf.path}: no {'upper' if low else 'lower'} bound")
        elif need_reason and not leaf.has(Reason):
            problems.append(f"{leaf.path}: bounded, but no Reason says why")
    return problems


def unbounded_collections(model: type[BaseModel]) -> list[str]:
    return [
        f"{leaf.path}: no maximum length"
        for leaf in leaves(model)
        if leaf.kind in (str, list, dict) and not leaf.has(annotated_types.MaxLen)
    ]


@pytest.mark.parametrize("model", [Scenario, SweepFile], ids=lambda m: m.__name__)
def test_every_scenario_and_sweep_number_has_a_range_and_a_reason(model: type[BaseModel]) -> None:
    assert unbounded_numbers(model, need_reason=True) == []


@pytest.mark.parametrize("model", [Scenario, SweepFile], ids=lambda m: m.__name__)
def test_every_scenario_and_sweep_string_and_list_has_a_length_limit(
    model: type[BaseModel],
) -> None:
    assert unbounded_collections(model) == []


def test_case_file_numbers_all_have_ranges() -> None:
    assert {p for m in CASE_FILE_MODELS for p in unbounded_numbers(m, need_reason=False)} == set()


def test_the_walk_finds_an_unbounded_field() -> None:
    """The walk can fail: a number without an upper bound, or without a reason, is found,
    however deep it sits."""

    class Inner(BaseModel):
        fine: bounded(int, 0, 5, "why")  # type: ignore[valid-type]
        no_reason: Annotated[float, annotated_types.Ge(0), annotated_types.Le(1)]
        no_top: Annotated[int, annotated_types.Ge(0)] | None = None
        loose_list: list[int] = []
        text: str = ""

    class Outer(BaseModel):
        inner: list[Inner]

    found = unbounded_numbers(Outer, need_reason=True)
    assert found == [
        "Inner.no_reason: bounded, but no Reason says why",
        "Inner.no_top: no upper bound",
        "Inner.loose_list[]: no lower bound",
    ]
    assert "Inner.text: no maximum length" in unbounded_collections(Outer)


def test_a_probed_validator_that_accepts_anything_is_found() -> None:
    class Loose(BaseModel):
        span: Annotated[tuple[int, int], PlainValidator(lambda v: v)]
        size: Annotated[int, AfterValidator(lambda v: v)]

    found = unbounded_numbers(Loose, need_reason=False)
    assert "Loose.span: its validator accepts 10000000000000000000000000000000000000000" in found
    assert "Loose.size: its validator accepts 10000000000000000000000000000000000000000" in found


def test_bounded_refuses_nan_and_infinity_and_needs_finite_bounds() -> None:
    class M(BaseModel):
        x: bounded(float, 0, 10, "why")  # type: ignore[valid-type]

    for value in (math.nan, math.inf, -math.inf, 11.0, -1.0):
        with pytest.raises(InputError):
            validate(M, {"x": value}, "f.yaml")
    assert validate(M, {"x": 10}, "f.yaml").x == 10
    with pytest.raises(ValueError, match="finite"):
        bounded(float, 0, math.inf, "why")


def test_an_out_of_range_value_says_why_the_range_is_what_it_is() -> None:
    with pytest.raises(InputError) as info:
        scenario_from_data(
            {
                "schema_version": 1,
                "name": "x",
                "platform": "hsw",
                "duration_ms": 1,
                "guests": [
                    {
                        "name": "a",
                        "vcpus": 2**70,
                        "vgpu": {"ppgtt": {"live_pages": 1, "pages_per_ppgtt": 1}},
                    }
                ],
            },
            "f.yaml",
        )
    assert info.value.keypath == "guests[0].vcpus"
    assert "HVM_MAX_VCPUS" in info.value.problem


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "scenarios/small/tiny.yaml", "--seed", "-1"], "--seed"),  # item 8
        (["run", "scenarios/small/tiny.yaml", "--seed", str(2**64)], "--seed"),
    ],
)
def test_command_line_numbers_are_bounded_too(
    argv: list[str], message: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["sweep", "scenarios/sweeps/range-count.yaml", "--jobs", "100000"],
        ["sweep", "scenarios/sweeps/range-count.yaml", "--jobs", "0"],
        ["run", "scenarios/small/tiny.yaml", "--max-events", "0"],
        ["run", "scenarios/small/tiny.yaml", "--max-events", str(10**13)],
    ],
)
def test_jobs_and_max_events_are_bounded(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:  # argparse: usage and exit 2
        main(argv)
    assert info.value.code == 2


def test_the_walk_reaches_every_part_of_the_schemas() -> None:
    """Nested models, union members and list items are all walked."""
    found = {leaf.path for m in (Scenario, SweepFile, *CASE_FILE_MODELS) for leaf in leaves(m)}
    for path in (
        "Costs.vmexit_ns",
        "LognormalDist.sigma",
        "Ppgtt.lifetime_ms",
        "Vgpu.vga_ports[]",
        "SweepFile.replications",
        "ServerSpec.wp_pages[]",
        "AccessSpec.count",
        "RequestChecks.count",
        "StepSpec.gfns",
    ):
        assert path in found
