"""What a run may cost (issue #9 items 2-5, 20; "make the class impossible" (b) and (c)).

* A scenario whose trap cycle can take no simulated time is refused at validation; a
  hypothesis test runs the model on every scenario the check accepts, so a change to the
  model's trap path that the check's table (``trap_paths``) does not follow fails here.
* The estimate of a run's events is close to what the model does (checked on every
  shipped scenario), so a change in events per trap shows up here too.
* ``--max-events`` refuses a run expected to be too large before it starts (exit 2) and
  stops one that turns out larger (exit 1); either way nothing is written.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import simpy
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sim.model.budget
from sim.cli import main
from sim.inputs import InputError
from sim.model.budget import RunBudgetError, estimate_run, run_until, zero_time_cycles
from sim.model.costs import Costs
from sim.model.runner import NoTrapMeasuredError, run_point
from sim.model.scenario import load_scenario, scenario_from_data
from sim.model.simulation import Simulation
from sim.trace.replay import open_capture

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted(
    (ROOT / "scenarios" / "small").glob("*.yaml")
)
#: Every cost of the trap path, read from the schema: a cost added later is drawn too.
COSTS = tuple(Costs.model_fields)


def zero(ns: float = 0.0) -> dict[str, Any]:
    return {"dist": "constant", "value_ns": ns}


def scenario(**guest: Any) -> dict[str, Any]:
    """A tiny scenario with every cost 0 and every time constant 0 unless given."""
    g: dict[str, Any] = {
        "name": "a",
        "think": zero(),
        "vgpu": {
            "ppgtt": {"live_pages": 4, "pages_per_ppgtt": 4},
            "device_model": {"wakeup": zero(), "service": {"default": zero()}},
        },
        "qemu": {"wakeup": zero(), "service": {"default": zero()}},
    }
    g.update(guest)
    return {
        "schema_version": 1,
        "name": "z",
        "platform": "hsw",
        "duration_ms": 0.2,
        "costs": dict.fromkeys(COSTS, 0),
        "guests": [g],
    }


# -- zero-time cycles (item 3) -----------------------------------------------------------
def test_all_zero_costs_and_constant_zero_times_are_refused() -> None:
    """Item 3: this used to livelock at simulated time 0."""
    with pytest.raises(InputError) as info:
        scenario_from_data(scenario(), "z.yaml")
    assert info.value.keypath == "guests[0].think"
    assert "can take no simulated time" in info.value.problem


def test_one_positive_step_on_every_path_is_enough() -> None:
    data = scenario()
    data["costs"]["vmexit_ns"] = 100
    data["guests"][0]["mix"] = {"mmio": 0.5, "pio": 0.2, "ppgtt_write": 0, "other": 0.3}
    scenario_from_data(data, "z.yaml")  # every trap exits
    # A page-table write that goes untracked (no page is live) takes only the think time.
    data["guests"][0]["mix"] = {"mmio": 0.5, "pio": 0.2, "ppgtt_write": 0.3, "other": 0}
    data["guests"][0]["vgpu"]["ppgtt"]["live_pages"] = 0
    with pytest.raises(InputError, match="untracked page-table write"):
        scenario_from_data(data, "z.yaml")
    data["guests"][0]["think"] = {"dist": "exponential", "mean_ns": 1000}
    scenario_from_data(data, "z.yaml")


def test_a_step_below_the_clocks_resolution_counts_as_zero(tmp_path: Path) -> None:
    data = scenario(think=zero(1e-9))
    with pytest.raises(InputError, match="no simulated time"):
        scenario_from_data(data, tmp_path / "z.yaml")
    # An empirical CSV holding a 0 can take no time too; one without a 0 cannot.
    (tmp_path / "t.csv").write_text("0\n5\n")
    data = scenario(think={"dist": "empirical", "file": "t.csv"})
    with pytest.raises(InputError, match="no simulated time"):
        scenario_from_data(data, tmp_path / "z.yaml")
    (tmp_path / "t.csv").write_text("3\n5\n")
    assert not list(zero_time_cycles(scenario_from_data(data, tmp_path / "z.yaml"), tmp_path))


TIMES = st.sampled_from([zero(), zero(500.0), {"dist": "exponential", "mean_ns": 500}])
MIXES = st.sampled_from(
    [
        {"mmio": 1, "pio": 0, "ppgtt_write": 0, "other": 0},
        {"mmio": 0, "pio": 0, "ppgtt_write": 1, "other": 0},
        {"mmio": 0, "pio": 0, "ppgtt_write": 0, "other": 1},
        {"mmio": 0, "pio": 1, "ppgtt_write": 0, "other": 0},
        {"mmio": 0.25, "pio": 0.25, "ppgtt_write": 0.25, "other": 0.25},
    ]
)


@st.composite
def candidate(draw: st.DrawFn) -> dict[str, Any]:
    data = scenario(
        think=draw(TIMES),
        mix=draw(MIXES),
        vgpu={
            "ppgtt": {"live_pages": draw(st.sampled_from([0, 4])), "pages_per_ppgtt": 4},
            "device_model": {"wakeup": draw(TIMES), "service": {"default": draw(TIMES)}},
        },
        qemu={"wakeup": draw(TIMES), "service": {"default": draw(TIMES)}},
    )
    data["guests"][0]["other_devices"] = {
        "mmio_fraction": draw(st.sampled_from([0.0, 0.5, 1.0])),
        # An I/O BAR, or the PIT's ports, which Xen emulates itself (no ioreq at all).
        "ports": draw(st.sampled_from([[0xC000, 0xC03F], [0x40, 0x43]])),
    }
    # Half the time every cost is 0, where a path with no positive step is likeliest.
    all_zero = draw(st.booleans())
    for name in COSTS:
        data["costs"][name] = 0 if all_zero else draw(st.sampled_from([0, 0, 300]))
    data["xen"] = {
        "version": draw(st.sampled_from(["4.6", "4.9", "4.12", "master"])),
        "max_nr_io_ranges": draw(st.sampled_from([2, None])),
    }
    if data["xen"]["version"] == "4.6":
        data["xen"]["design"] = draw(st.sampled_from(["xen-4.6", "wp-split"]))
    # With stdvga's ports (0x3c4, which Xen watches before master), or without.
    data["guests"][0]["vgpu"]["vga_ports"] = draw(st.sampled_from([[0x3B0, 0x3DF], [0x3B0, 0x3BF]]))
    return data


def _hazard(**guest: Any) -> dict[str, Any]:
    data = scenario(**guest)
    data["xen"] = {"version": "4.6"}
    return data


@settings(max_examples=200)
@given(candidate())
# Known hazards, always tried: the PIT's ports, which Xen emulates itself (no ioreq);
# page-table writes that can never trap (no page is live).
@example(
    _hazard(
        mix={"mmio": 0, "pio": 0, "ppgtt_write": 0, "other": 1},
        qemu={"wakeup": zero(), "service": {"default": zero(500.0)}},
        other_devices={"ports": [0x40, 0x43], "mmio_fraction": 0.0},
    )
)
@example(
    _hazard(
        mix={"mmio": 0, "pio": 0, "ppgtt_write": 1, "other": 0},
        vgpu={
            "ppgtt": {"live_pages": 0, "pages_per_ppgtt": 4},
            "device_model": {"wakeup": zero(), "service": {"default": zero(500.0)}},
        },
    )
)
def test_every_accepted_scenario_advances_simulated_time(data: dict[str, Any]) -> None:
    """The check against the model itself: whatever it accepts, the model runs to its end
    in a few thousand events (0.2 ms at >= 300 ns a step), where a livelock at one
    instant would hit the cap instead; and no vCPU traps twice at one instant. A model
    change that the check's table (trap_paths) misses fails here."""
    try:
        sc = scenario_from_data(data, "z.yaml")
    except InputError:
        return  # refused: for no time, or for another reason (a version without a design)
    traps: dict[str, list[float]] = {}
    sim_ = Simulation(sc, trace=lambda t: traps.setdefault(t.vcpu.name, []).append(t.t_trap))
    sim_.run(max_events=50_000)
    assert sim_.env.now == pytest.approx(0.2e6)
    for times in traps.values():
        assert all(b > a for a, b in itertools.pairwise(times))


# -- the estimate and the cap (items 2, 4, 5; design (c)) ---------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_estimate_is_close_to_the_events_a_run_takes(path: Path) -> None:
    sc = load_scenario(path)
    estimate = estimate_run(sc, path.parent)
    sim_ = Simulation(sc, base_dir=path.parent, replay_opener=open_capture)
    sim_.run()
    c = sim_.recorder.counters
    actual = sim_.events + c.maps + c.unmaps
    if any(g.replay is not None for g in sc.guests):
        # A replay's turns are its capture's, unknown before it is read: the estimate
        # takes them back to back, an upper bound.
        assert estimate.work >= actual
    else:
        assert 0.5 <= estimate.work / actual <= 2.5, (estimate.describe(), actual)


def test_run_until_counts_every_event_and_stops_at_the_cap() -> None:
    env = simpy.Environment()

    def ticks(n: int) -> Any:
        for _ in range(n):
            yield env.timeout(1)

    stop = env.process(ticks(100_000))
    # 1 initialize + 100,000 timeouts + the process's own end event, to within 8
    assert 100_002 <= run_until(env, stop, 10**9, lambda: 0, lambda: "") < 100_002 + 8
    env = simpy.Environment()
    stop = env.process(ticks(10**9))
    with pytest.raises(RunBudgetError, match="above --max-events 70,000"):
        run_until(env, stop, 70_000, lambda: 5, lambda: "here")


def test_a_run_too_large_for_max_events_is_refused_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = ROOT / "scenarios" / "small" / "tiny.yaml"
    out = tmp_path / "o"
    assert main(["run", str(tiny), "--out", str(out), "--max-events", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--max-events" in err
    assert "above --max-events 1,000" in err
    assert not out.exists()
    assert main(["validate", str(tiny), "--max-events", "1000"]) == 0
    assert "above --max-events 1,000" in capsys.readouterr().out


def test_a_run_that_outgrows_its_estimate_stops_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last resort: the model itself stops past --max-events (exit 1)."""
    tiny = ROOT / "scenarios" / "small" / "tiny.yaml"
    real = sim.model.budget.estimate_run

    def underestimate(sc: Any, base: Path) -> Any:
        est = real(sc, base)
        return type(est)(est.turns, 1.0, 0.0)

    monkeypatch.setattr(sim.model.budget, "estimate_run", underestimate)
    monkeypatch.setattr(sim.model.budget, "_CHUNK", 1000)
    out = tmp_path / "r" / "o"
    # tiny.yaml takes ~2,700 events and ~950 maps: the cap is passed at the second check
    assert main(["run", str(tiny), "--out", str(out), "--max-events", "2000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "stopped after" in err[-1]
    assert "nothing was written" in err[-1]
    assert not (tmp_path / "r").exists()


def test_the_cap_does_not_change_results() -> None:
    """run_until processes the same events as env.run: same result bytes."""
    sc = load_scenario(ROOT / "scenarios" / "small" / "tiny.yaml")
    a = Simulation(sc).run()
    b = Simulation(sc).run(max_events=10**12)
    assert a.groups == b.groups
    assert a.sim_time_ns == b.sim_time_ns


def test_a_sweep_point_too_large_for_max_events_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = ROOT / "scenarios" / "sweeps" / "range-count.yaml"
    out = tmp_path / "o"
    assert main(["sweep", str(sweep), "--out", str(out), "--max-events", "10000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "point {variant=" in err
    assert not out.exists()


def test_a_run_that_measures_no_trap_warns_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 20: a think time longer than the run measures nothing; say so."""
    data = scenario(think=zero(6e10))
    data["costs"] = {}
    path = tmp_path / "idle.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no trap was measured" in err
    # In a sweep such a point is a failed run, not a row of NaNs that looks like data.
    config = scenario_from_data(copy.deepcopy(data), path).config()
    with pytest.raises(NoTrapMeasuredError):
        run_point(config, 1, str(tmp_path))
