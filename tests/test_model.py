"""Model features: independent random streams, empirical distributions, shared dom0."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.model.scenario import load_scenario
from sim.model.simulation import Simulation
from sim.model.streams import make_sampler, stream
from sim.model.summary import overall, summarize

SMALL = Path(__file__).resolve().parent.parent / "scenarios" / "small"


def rows_of(guest: str, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in rows if str(r["server"]).startswith(f"{guest}/")]


def test_streams_are_keyed_by_name() -> None:
    a = stream(5, "vm1/vcpu0/think").random(4)
    stream(5, "something-else").random(100)  # drawing elsewhere changes nothing
    assert (stream(5, "vm1/vcpu0/think").random(4) == a).all()
    assert not (stream(5, "vm1/vcpu1/think").random(4) == a).all()
    assert not (stream(6, "vm1/vcpu0/think").random(4) == a).all()


def test_adding_a_guest_does_not_shift_another_guests_numbers() -> None:
    """Each source has its own stream, so vm1 sees the same numbers with or without vm2
    (the guests share nothing by default: own pCPUs, device models and dom0 vCPUs)."""
    both = load_scenario(SMALL / "tiny.yaml")
    alone = load_scenario(SMALL / "tiny.yaml", [("guests", [both.config()["guests"][0]])])
    assert len(alone.guests) == 1
    rows_both = summarize(Simulation(both, base_dir=SMALL).run())
    rows_alone = summarize(Simulation(alone, base_dir=SMALL).run())
    assert rows_of("vm1", rows_both) == rows_of("vm1", rows_alone)
    assert rows_of("vm2", rows_both)


def test_empirical_distribution_resamples_the_csv(tmp_path: Path) -> None:
    csv_file = tmp_path / "service.csv"
    csv_file.write_text("service_ns\n1000\n2000\n4000\n")
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text((SMALL / "timeline.yaml").read_text())
    scenario = load_scenario(
        scenario_file,
        [
            (
                "guests[0].vgpu.device_model.service.default",
                {"dist": "empirical", "file": "service.csv", "column": "service_ns"},
            ),
            ("duration_ms", 2),
        ],
    )
    result = Simulation(scenario, base_dir=tmp_path).run()
    # Every cost but visits and service: exit, EPT path, decode, two scans of 19 handlers,
    # send, wake-up; wake, second decode, entry.
    fixed = 300 + 500 + 1000 + 2 * 19 * 2 + 400 + 2000 + 700 + 1000 + 200
    lat = result.groups[("mmio", "vm1/xengt")][0]
    services = {round(x - fixed - 10 * 4, 6) for x in lat}
    assert services <= {1000.0, 2000.0, 4000.0}
    assert len(services) == 3


def test_empirical_column_errors_name_the_key(tmp_path: Path) -> None:
    from sim.inputs import InputError

    (tmp_path / "v.csv").write_text("a,b\n1,x\n")
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text((SMALL / "timeline.yaml").read_text())
    think = "guests[0].think"
    with pytest.raises(InputError, match=r"guests\[0\]\.think\.column"):
        load_scenario(
            scenario_file, [(think, {"dist": "empirical", "file": "v.csv", "column": "c"})]
        )
    with pytest.raises(InputError, match="row 2: not a number"):
        load_scenario(
            scenario_file, [(think, {"dist": "empirical", "file": "v.csv", "column": "b"})]
        )


def test_lognormal_sampler_has_the_configured_mean() -> None:
    from sim.model.dists import lognorm

    draw = make_sampler(lognorm(2000, 0.5), stream(1, "x"))
    values = [draw() for _ in range(40_000)]
    assert sum(values) / len(values) == pytest.approx(2000, rel=0.02)


def test_shared_dom0_vcpus_add_contention() -> None:
    """One dom0 vCPU shared by both guests' device models (gVirt/gScale hosts) makes
    requests wait for it, so mean latency rises against private dom0 vCPUs."""
    private = load_scenario(SMALL / "tiny.yaml")
    shared = load_scenario(SMALL / "tiny.yaml", [("host.dom0_vcpus", 1)])
    lat_private = overall(Simulation(private, base_dir=SMALL).run())["mean_ns"]
    lat_shared = overall(Simulation(shared, base_dir=SMALL).run())["mean_ns"]
    assert lat_shared > lat_private


def test_an_edited_empirical_csv_is_read_afresh(tmp_path: Path) -> None:
    """The CSV cache must not serve old values once the file changes (e.g. in a notebook)."""
    import os

    from sim.model.dists import EmpiricalDist, read_empirical

    path = tmp_path / "v.csv"
    path.write_text("1000\n")
    dist = EmpiricalDist(dist="empirical", file="v.csv")
    assert read_empirical(tmp_path, dist, "s.yaml", "k") == [1000.0]
    path.write_text("2000\n3000\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse-clock filesystem
    assert read_empirical(tmp_path, dist, "s.yaml", "k") == [2000.0, 3000.0]
