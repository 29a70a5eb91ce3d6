"""Sweep files that would mislabel, explode or hang are refused at load time (issue #9,
items 1, 5, 26, 29): two axes writing one key, however spelt; sizes beyond the bounds,
checked before expansion; points that run the same scenario; a directory as the base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.cli import main
from sim.inputs import InputError
from sim.study.sweepfile import MAX_POINTS, load_sweep

ROOT = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = {
    "schema_version": 1,
    "platform": "hsw",
    "duration_ms": 2,
    "guests": [{"name": "vm1", "vgpu": {"ppgtt": {"live_pages": 8, "pages_per_ppgtt": 8}}}],
}


def sweep(tmp_path: Path, name: str = "s.yaml", **changes: Any) -> Path:
    data = {
        "schema_version": 1,
        "base": BASE,
        "axes": {"xen.rangeset": ["list", "rbtree"]},
        "replications": 1,
        "seed": 1,
        **changes,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


LABELLED = [
    {"label": "a", "guests[0].vcpus": 1},
    {"label": "b", "guests[0].vcpus": 2},
]

# axes (or a whole change) -> (key path in the message, words in the problem)
COLLISIONS = {
    "two spellings of one key": (
        {"axes": {"guests[0].vcpus": [1, 2], "guests.0.vcpus": [3, 4]}},
        "axes.guests.0.vcpus",
        "writes 'guests.0.vcpus', the same key as axes.guests[0].vcpus",
    ),
    "a compound value and a plain axis": (
        {"axes": {"variant": LABELLED, "guests.0.vcpus": [3, 4]}},
        "axes.guests.0.vcpus",
        "the same key as axes.variant ('guests[0].vcpus')",
    ),
    "a key inside another axis's key": (
        {
            "axes": {
                "guests[0].mix": [{"mmio": 1.0, "pio": 0, "ppgtt_write": 0, "other": 0}],
                "guests[0].mix.mmio": [0.5, 0.55],
            }
        },
        "axes.guests[0].mix.mmio",
        "the same key as axes.guests[0].mix",
    ),
    "two spellings in one compound value": (
        {"axes": {"variant": [{"label": "a", "xen.rangeset": "list", "xen .rangeset": "x"}]}},
        "axes.variant[0].xen .rangeset",
        "no such key",
    ),
    "one key twice in one compound value": (
        {"axes": {"variant": [{"label": "a", "guests[0].vcpus": 1, "guests.0.vcpus": 2}]}},
        "axes.variant[0].guests.0.vcpus",
        "the same key as axes.variant[0].guests[0].vcpus",
    ),
    "two spellings in set": (
        {"set": {"guests[0].vcpus": 1, "guests.0.vcpus": 2}},
        "set.guests.0.vcpus",
        "the same key as set.guests[0].vcpus",
    ),
}


@pytest.mark.parametrize("case", sorted(COLLISIONS))
def test_two_writes_of_one_key_are_refused_at_load_time(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1 (worst): the last write won silently and points.csv labelled a point
    with values that did not run."""
    change, keypath, problem = COLLISIONS[case]
    path = sweep(tmp_path, **change)
    with pytest.raises(InputError) as info:
        load_sweep(path)
    assert info.value.keypath == keypath
    assert problem in info.value.problem
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_axis_may_override_set_and_values_of_one_axis_may_share_keys(tmp_path: Path) -> None:
    """What stays allowed: `set:` is the base the axes change, and a point applies one
    value of each axis, so two values of one axis never meet."""
    path = sweep(
        tmp_path,
        set={"guests[0].vcpus": 3},
        axes={"variant": LABELLED, "xen.rangeset": ["list", "rbtree"]},
    )
    assert [p.config["guests"][0]["vcpus"] for p in load_sweep(path).points] == [1, 1, 2, 2]


def test_a_label_is_one_line(tmp_path: Path) -> None:
    """A label is a CSV cell, a progress line and a legend entry (found by `make fuzz`)."""
    for label in ("a\x85b", "a\nb", "x" * 201):
        path = sweep(tmp_path, axes={"variant": [{**LABELLED[0], "label": label}]})
        with pytest.raises(InputError, match="one line of at most 200 characters"):
            load_sweep(path)


def test_points_that_run_the_same_scenario_are_refused(tmp_path: Path) -> None:
    """Two labels for one configuration would say something varied that did not."""
    path = sweep(tmp_path, axes={"guests[0].mix.mmio": [0.55, 0.550]})
    with pytest.raises(InputError, match="duplicate value"):
        load_sweep(path)
    path = sweep(tmp_path, axes={"variant": [LABELLED[0], {**LABELLED[0], "label": "again"}]})
    with pytest.raises(InputError, match="runs the same scenario as point"):
        load_sweep(path)


def test_sizes_are_bounded_before_the_sweep_is_expanded(tmp_path: Path) -> None:
    """Item 5: replications of 2**70 and cartesian products of astronomic size."""
    with pytest.raises(InputError, match="less than or equal to 1000"):
        load_sweep(sweep(tmp_path, replications=2**70))
    many = {f"guests[0].vgpu.ppgtt.{k}": list(range(1, 12)) for k in ("live_pages",)}
    many |= {"guests[0].vcpus": list(range(1, 100)), "xen.max_nr_io_ranges": list(range(1, 12))}
    with pytest.raises(InputError, match=f"points; a sweep has at most {MAX_POINTS:,}"):
        load_sweep(sweep(tmp_path, axes=many))
    few = {"guests[0].vcpus": list(range(1, 102))}
    with pytest.raises(InputError, match="runs; a sweep has at most 100,000"):
        load_sweep(sweep(tmp_path, axes=few, replications=1000))
    with pytest.raises(InputError, match="at most 1000 items"):
        load_sweep(sweep(tmp_path, axes={"guests[0].vcpus": [1] * 1001}))


def test_a_base_that_is_a_directory_is_reported_as_one(tmp_path: Path) -> None:
    """Item 29: it was reported as "not found"."""
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError) as info:
        load_sweep(sweep(tmp_path, base="adir"))
    assert (info.value.keypath, info.value.problem) == (
        "base",
        "'adir' is a directory, not a scenario file",
    )


def test_a_sweep_file_name_that_cannot_name_a_directory_needs_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`...yaml` has the stem `..`: results/sweeps/.. would be results/."""
    path = sweep(tmp_path, name="...yaml", base={**BASE, "name": "b"})
    assert main(["sweep", str(path), "--jobs", "1", "--no-plot"]) == 2
    assert "(file name): cannot name the results directory" in capsys.readouterr().err


def test_validate_recognises_scenarios_sweeps_and_case_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 26: `validate` refused sweep files."""
    files = [
        ROOT / "scenarios" / "bdw.yaml",
        ROOT / "scenarios" / "sweeps" / "range-count.yaml",
        ROOT / "scenarios" / "selection" / "pci-config.yaml",
    ]
    assert main(["validate", *map(str, files)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{files[0]}: ok (scenario bdw, sha256 ")
    points = len(load_sweep(files[1]).points)
    assert out[1].startswith(f"{files[1]}: ok (sweep range-count, {points} points x 3 replications")
    assert out[2] == f"{files[2]}: ok (case file, 2 servers, 15 accesses)"
    # A bad file among good ones: every file is checked, exit 2.
    bad = sweep(tmp_path, replications=0)
    assert main(["validate", str(files[0]), str(bad), str(files[2])]) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert f"{bad}: replications" in captured.err


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").rglob("*.yaml")), ids=lambda p: p.name)
def test_validate_accepts_every_shipped_file(path: Path) -> None:
    assert main(["validate", str(path)]) == 0
