"""The model on each Xen release: traps Xen emulates itself, and releases without a
default ioreq server.

A trap that Xen's own emulator takes (``IoreqDomain.route_fast`` returns handler ``xen``)
has no device model: the hypervisor pCPU serves it on the "no device model" path, with no
ioreq and no device-model service time (sim/model/processes.py, HypervisorCpu.run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.inputs import InputError
from sim.model.scenario import load_scenario
from sim.model.simulation import Simulation
from sim.model.summary import summarize

SMALL = Path(__file__).resolve().parent.parent / "scenarios" / "small"
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def test_traps_xen_emulates_need_no_device_model() -> None:
    """'other' MMIO traps aimed at the LAPIC page (0xfee00000) are the vLAPIC's
    (vlapic.c @RELEASE-4.6.0 line 1446): no server, no ioreq, no null-handler count."""
    scenario = load_scenario(
        SMALL / "tiny.yaml",
        [
            ("guests[0].other_devices.mmio", [0xFEE00000, 0xFEE00FFF]),
            ("guests[0].other_devices.mmio_fraction", 1.0),
            ("guests[0].mix", {"mmio": 0.0, "pio": 0.0, "ppgtt_write": 0.0, "other": 1.0}),
        ],
    )
    sim = Simulation(scenario, base_dir=SMALL)
    result = sim.run()
    rows = [r for r in summarize(result) if str(r["server"]).startswith("vm1/")]
    assert {r["server"] for r in rows} == {"vm1/xen"}
    assert sum(int(r["count"]) for r in rows) > 50
    assert result.counters.null_handled == 0
    costs = scenario.costs
    floor = costs.vmexit_ns + costs.mmio_decode_ns + costs.vmentry_ns
    for row in rows:
        # Exit, decode and entry, but no ioreq send and no wake-up from a device model
        # (whatever the scan of Xen's emulators may come to cost).
        assert floor <= float(row["max_ns"]) < floor + costs.ioreq_send_ns + costs.vcpu_wake_ns


@pytest.mark.parametrize("version", ["4.9", "4.12", "master"])
def test_every_release_runs_the_p2m_design(version: str) -> None:
    """From 4.12 there is no default server (2c257bd69a): QEMU registers its own server for
    the devices it emulates, so 'other' traps still reach it."""
    scenario = load_scenario(
        SCENARIOS / "hsw-p2m-ioreq-server.yaml",
        [("xen.version", version), ("duration_ms", 10), ("warmup_ms", 1)],
    )
    rows = summarize(Simulation(scenario, base_dir=SCENARIOS).run())
    servers = {str(r["server"]) for r in rows}
    assert {"vm1/xengt", "vm1/qemu"} <= servers
    assert "vm1/none" not in servers


def test_a_release_that_cannot_run_the_design_is_a_validation_error() -> None:
    with pytest.raises(InputError) as info:
        load_scenario(SCENARIOS / "bdw.yaml", [("xen.version", "4.12")])
    assert info.value.keypath == "xen"
    assert "c858e932c1" in info.value.problem
