"""Named devices, a think time per vCPU, gamma durations: the schema keys a fitted guest
uses, and that existing scenarios do not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cli import main
from sim.model.devices import DeviceAccessGenerator, default_size
from sim.model.dists import GammaDist
from sim.model.scenario import load_scenario, scenario_from_data
from sim.model.simulation import Simulation
from sim.model.streams import make_sampler, stream
from sim.model.summary import summarize

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted(
    (ROOT / "scenarios" / "small").glob("*.yaml")
)

DEVICES = """\
schema_version: 1
platform: hsw
seed: 4
duration_ms: 40
guests:
  - name: g
    vcpus: 2
    vcpu_think:
      - {dist: exponential, mean_ns: 20000}
      - {dist: gamma, mean_ns: 60000, shape: 2}
    devices:
      - {name: bar, space: mmio, server: xengt, ranges: [[0xf0000000, 0xf0ffffff]],
         share: 0.4, read_fraction: 1.0}
      - {name: vga, space: port, server: xengt, ranges: [[0x3c0, 0x3cf]], share: 0.1}
      - {name: pci, space: port, server: qemu, ranges: [[0xcf8, 0xcff]], share: 0.1}
      - {name: nic, space: mmio, server: qemu, ranges: [[0xfe000000, 0xfe000fff],
         [0xfe100000, 0xfe100fff]], share: 0.1, read_fraction: 0.0}
      - {name: pt, space: page_tables, server: xengt, share: 0.3}
    vgpu:
      ppgtt: {live_pages: 50, pages_per_ppgtt: 50}
"""


def _data() -> dict:
    return yaml.safe_load(DEVICES)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_existing_scenarios_do_not_grow_the_new_keys(path: Path) -> None:
    """Not given, the keys stay out of the effective configuration, so its hash, the
    results directory name and manifests are what they were."""
    raw = yaml.safe_load(path.read_text())["guests"]
    for given, guest in zip(raw, load_scenario(path).config()["guests"], strict=True):
        options = {"devices", "vcpu_think", "replay"}
        assert guest.keys() & options == given.keys() & options


def test_devices_route_and_share_traps(tmp_path: Path) -> None:
    scenario = scenario_from_data(_data(), tmp_path / "devices.yaml")
    sim = Simulation(scenario)
    result = sim.run()
    rows = {(r["access_type"], r["server"]): r["count"] for r in summarize(result)}
    total = sum(rows.values())
    # XenGT claims only its devices' ranges; QEMU's devices fall through to the default.
    assert set(rows) == {
        ("mmio", "g/xengt"),
        ("pio", "g/xengt"),
        ("ppgtt_write", "g/xengt"),
        ("other", "g/qemu"),
    }
    for key, share in {
        ("mmio", "g/xengt"): 0.4,
        ("pio", "g/xengt"): 0.1,
        ("ppgtt_write", "g/xengt"): 0.3,
        ("other", "g/qemu"): 0.2,
    }.items():
        assert abs(rows[key] / total - share) < 0.04, (key, rows[key] / total)
    # vCPU 0 thinks 20 us, vCPU 1 60 us: about three times the traps
    assert total > 1000


def test_device_accesses_follow_ranges_directions_and_sizes() -> None:
    scenario = scenario_from_data(_data(), "devices.yaml")
    gen = DeviceAccessGenerator(
        scenario.guests[0].devices, [0x500, 0x501], stream(1, "k"), stream(1, "a")
    )
    seen = [gen.next() for _ in range(4000)]
    for kind, a in seen:
        assert a is not None
        if kind == "mmio":
            assert 0xF0000000 <= a.addr <= 0xF0FFFFFF
            assert not a.is_write  # read_fraction 1
            assert a.size == 4
        elif kind == "pio":
            assert 0x3C0 <= a.addr <= 0x3CF
            assert a.size == 1
        elif kind == "ppgtt_write":
            assert a.addr >> 12 in (0x500, 0x501)
            assert a.is_write
            assert a.size == 8
        else:
            assert kind == "other"
            if a.kind == "pio":
                assert a.size == 4  # PCI configuration ports
            else:
                assert a.is_write  # read_fraction 0
                assert 0xFE000000 <= a.addr <= 0xFE000FFF or 0xFE100000 <= a.addr <= 0xFE100FFF
    nic = [a.addr for k, a in seen if k == "other" and a.kind == "mmio"]
    assert min(nic) < 0xFE001000 < 0xFE100000 <= max(nic)  # both ranges used


def test_default_sizes() -> None:
    assert default_size("port", 0xCF8) == default_size("port", 0xCFC) == 4
    assert default_size("port", 0x3C4) == 1
    assert default_size("mmio", 0xF7800000) == 4
    assert default_size("page_tables", 0) == 8


def test_gamma_durations_have_their_mean_and_shape() -> None:
    sampler = make_sampler(GammaDist(dist="gamma", mean_ns=5000, shape=4), stream(3, "g"))
    x = np.array([sampler() for _ in range(40_000)])
    assert abs(x.mean() / 5000 - 1) < 0.02
    assert abs((x.mean() / x.std()) ** 2 / 4 - 1) < 0.05  # shape = (mean / sd)^2


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda g: g["devices"][0].update(share=0.5), "shares must sum to 1"),
        (
            lambda g: g["devices"][1].update(ranges=[[0xCF0, 0xCFA]]),
            "port ranges of vga and pci overlap",
        ),
        (lambda g: g["devices"][4].update(ranges=[[0, 1]]), "a page_tables device has no ranges"),
        (lambda g: g["devices"][4].update(server="qemu"), "server xengt"),
        (lambda g: g["devices"][4].update(read_fraction=0.2), "read_fraction must be 0"),
        (lambda g: g["devices"][1].update(ranges=[[0xFFF0, 0x10000]]), "I/O ports end at 0xffff"),
        (lambda g: g["devices"][1].update(ranges=[]), "needs at least one range"),
        (lambda g: g["vcpu_think"].pop(), "vcpu_think has 1 entries for 2 vCPUs"),
        (lambda g: g.update(mix={"mmio": 1.0}), "mix: cannot be given together with devices"),
        (
            lambda g: g["vgpu"].update(bar0_mmio=[0, 1]),
            "vgpu.bar0_mmio: cannot be given together with devices",
        ),
        (lambda g: g.update(think={"dist": "constant", "value_ns": 1}), "think: cannot be given"),
    ],
)
def test_bad_devices_are_exit_2(
    edit, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data()
    edit(data["guests"][0])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert problem in err
