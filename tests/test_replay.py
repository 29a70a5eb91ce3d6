"""Replay: guests driven by a capture issue the captured accesses, in order, after the
captured gaps, under any design; the same stream gives the same accesses and the model's
own latencies."""

from __future__ import annotations

import csv
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from fit_fixtures import model_capture

import sim.model.replay as replay_mod
from sim.cli import main
from sim.inputs import InputError
from sim.model.cache import VisitCost
from sim.model.scenario import load_scenario
from sim.model.simulation import Simulation
from sim.trace.replay import open_capture

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "small" / "tiny.yaml"

REPLAY = """\
# Replays domain 1 of a capture of tiny.yaml.
schema_version: 1
description: "replay test"
platform: hsw
duration_ms: {duration}
xen: {{max_nr_io_ranges: null}}
guests:
  - name: vm1
    vcpus: 2
    replay: {{capture: cap/xentrace.bin, domain: 1, at_end: {at_end}}}
    vgpu:
      ppgtt: {{live_pages: 2000, pages_per_ppgtt: 500}}
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture of tiny.yaml (domain 1: two vCPUs, every trap kind), with its trace.csv."""
    root = tmp_path_factory.mktemp("replay")
    model_capture(TINY, root / "cap", "--trace")
    return root


def _replay(root: Path, name: str, *sets: str, duration: float = 40, at_end: str = "stop"):
    scenario = root / f"{name}.yaml"
    scenario.write_text(REPLAY.format(duration=duration, at_end=at_end))
    out = root / f"out-{name}"
    args = ["run", str(scenario), "--out", str(out), "--trace", "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return out


def _per_vcpu(trace: Path, guest: str = "vm1") -> dict[str, list[dict[str, str]]]:
    rows: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
    with trace.open() as fh:
        for r in csv.DictReader(fh):
            if r["vcpu"].startswith(f"{guest}/"):
                rows[r["vcpu"]].append(r)
    for v in rows.values():
        v.sort(key=lambda r: float(r["t_trap_ns"]))
    return rows


ACCESS = ("kind", "access", "dir", "address", "size")


def _mean(rows: dict[str, list[dict[str, str]]], kind: str) -> float:
    lat = [
        float(r["t_resumed_ns"]) - float(r["t_trap_ns"])
        for v in rows.values()
        for r in v
        if r["kind"] == kind
    ]
    return float(np.mean(lat))


def _selection_ns(row: dict[str, str]) -> float:
    return float(row["t_selected_ns"]) - float(row["t_trap_ns"])


#: What the p2m-ioreq-server path itself adds to a selection: its p2m lookups
#: (costs.p2m_lookup_ns, 50 ns each) and a one-node BAR0 lookup.
P2M_PATH_NS = 250


def test_same_stream_under_two_designs(source: Path) -> None:
    """The list walks all 2,000 page nodes below the GPU's BAR for every register access;
    p2m-ioreq-server keeps pages out of the rangeset. Same accesses, in the same order per
    vCPU; register and page-table traps slower under the list by the walk, as the cache
    model (sim.model.cache) prices it at the list's size."""
    listed = _per_vcpu(_replay(source, "list") / "trace.csv")
    p2m = _per_vcpu(_replay(source, "p2m", "xen.design=p2m-ioreq-server") / "trace.csv")
    assert listed.keys() == p2m.keys() == {"vm1/vcpu0", "vm1/vcpu1"}
    for vcpu in listed:
        assert [tuple(r[c] for c in ACCESS) for r in listed[vcpu]] == [
            tuple(r[c] for c in ACCESS) for r in p2m[vcpu]
        ]
    price = VisitCost(load_scenario(source / "list.yaml").host.cpu, "list")
    pairs = [(a, b) for v in listed for a, b in zip(listed[v], p2m[v], strict=True)]
    # A register access walks the whole list: its visits are the list's nodes.
    nodes = {int(a["visits"]) for a, _ in pairs if a["kind"] == "mmio"}
    assert len(nodes) == 1
    (n,) = nodes
    assert n >= 2000 * 0.99  # 2,000 pages (a few adjacent ones merged) and BAR0
    walks: dict[str, list[float]] = {"mmio": [], "ppgtt_write": []}
    for a, b in pairs:
        if a["kind"] in walks:
            walk = price.walk_ns(int(a["visits"]), n)
            assert _selection_ns(a) - _selection_ns(b) == pytest.approx(walk, abs=P2M_PATH_NS)
            walks[a["kind"]].append(walk)
    # The cache model prices a visit of a list this size at a few ns (L2): ~6 us per
    # register access, half that per page-table write on average; the latencies show it.
    assert np.mean(walks["mmio"]) > 4_000
    for kind, walk in walks.items():
        assert _mean(listed, kind) - _mean(p2m, kind) > 0.9 * np.mean(walk) - P2M_PATH_NS
    # port I/O is in the PORT rangeset: no page walk under either design
    assert abs(_mean(listed, "pio") - _mean(p2m, "pio")) < 2_000


def test_replay_issues_the_captured_accesses(source: Path) -> None:
    """Per vCPU, the replay issues what the source run trapped, in its order: ports and
    MMIO exactly; page-table writes land on the model's pages at the captured offset."""
    captured = _per_vcpu(source / "cap" / "trace.csv")
    replayed = _per_vcpu(_replay(source, "again") / "trace.csv")
    for vcpu, rows in captured.items():
        assert len(replayed[vcpu]) == len(rows)
        for a, b in zip(rows, replayed[vcpu], strict=True):
            assert (a["kind"], a["access"], a["dir"], a["size"]) == (
                b["kind"],
                b["access"],
                b["dir"],
                b["size"],
            )
            if a["kind"] == "ppgtt_write":
                assert int(a["address"], 16) & 0xFFF == int(b["address"], 16) & 0xFFF
            else:
                assert a["address"] == b["address"]


def test_gaps_are_the_captured_think_times(source: Path) -> None:
    """With zero service and costs, a replayed vCPU traps at the captured gap after each
    resume: the first trap at the captured time of the first exit."""
    out = _replay(
        source,
        "gaps",
        *(
            f"costs.{c}=0"
            for c in (
                "vmexit_ns",
                "vmentry_ns",
                "mmio_decode_ns",
                "pio_decode_ns",
                "visit_ns",
                "p2m_lookup_ns",
                "ioreq_send_ns",
                "vcpu_wake_ns",
            )
        ),
    )
    replayed = _per_vcpu(out / "trace.csv")["vm1/vcpu0"]
    captured = _per_vcpu(source / "cap" / "trace.csv")["vm1/vcpu0"]
    gaps = [float(b["t_trap_ns"]) - float(a["t_trap_ns"]) for a, b in pairwise(replayed)]
    latency = [float(r["t_resumed_ns"]) - float(r["t_trap_ns"]) for r in replayed[:-1]]
    think = [float(b["t_trap_ns"]) - float(a["t_resumed_ns"]) for a, b in pairwise(captured)]
    # the replayed vCPU thinks what the captured one did (to a TSC cycle at 2.8 GHz)
    assert np.allclose(np.array(gaps) - np.array(latency), think, atol=1.0)
    assert abs(float(replayed[0]["t_trap_ns"]) - float(captured[0]["t_trap_ns"])) < 1.0


def test_stop_and_loop_at_the_end(source: Path) -> None:
    captured = sum(len(v) for v in _per_vcpu(source / "cap" / "trace.csv").values())
    stopped = _per_vcpu(_replay(source, "stop", duration=60) / "trace.csv")
    looped = _per_vcpu(_replay(source, "loop", duration=60, at_end="loop") / "trace.csv")
    assert sum(len(v) for v in stopped.values()) == captured
    assert sum(len(v) for v in looped.values()) > 2 * captured


def test_chunked_reading_gives_the_same_stream(
    source: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Accesses are read a chunk at a time (memory: one chunk per vCPU); any chunk size
    gives the same run."""
    scenario = source / "chunk.yaml"
    scenario.write_text(REPLAY.format(duration=40, at_end="loop"))
    config = load_scenario(scenario)

    def traps() -> list[tuple[str, int, int]]:
        seen: list[tuple[str, int, int]] = []
        sim = Simulation(
            config,
            base_dir=source,
            trace=lambda t: seen.append((t.vcpu.name, t.access.addr, round(t.t_trap))),
            replay_opener=open_capture,
        )
        sim.run()
        return seen

    whole = traps()
    monkeypatch.setattr(replay_mod, "CHUNK", 7)
    assert traps() == whole


def test_replay_needs_a_capture_reader(source: Path) -> None:
    scenario = source / "noreader.yaml"
    scenario.write_text(REPLAY.format(duration=10, at_end="stop"))
    with pytest.raises(InputError, match="capture reader"):
        Simulation(load_scenario(scenario), base_dir=source)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            "    think: {dist: constant, value_ns: 5}\n",
            "think: cannot be given together with replay",
        ),
        ("    mix: {mmio: 1, pio: 0, ppgtt_write: 0, other: 0}\n", "mix: cannot be given"),
    ],
)
def test_replay_refuses_the_keys_it_replaces(
    source: Path, edit: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = source / "conflict.yaml"
    scenario.write_text(REPLAY.format(duration=10, at_end="stop") + edit)
    assert main(["validate", str(scenario)]) == 2
    assert problem in capsys.readouterr().err


def test_bad_replay_inputs_are_exit_2(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = source / "missing.yaml"
    missing.write_text(REPLAY.format(duration=10, at_end="stop").replace("cap/xentrace", "nope"))
    assert main(["validate", str(missing)]) == 2
    assert "replay.capture: nope.bin: no such file" in capsys.readouterr().err
    wrong = source / "wrong.yaml"
    wrong.write_text(REPLAY.format(duration=10, at_end="stop").replace("domain: 1", "domain: 7"))
    out = source / "out-wrong"
    assert main(["run", str(wrong), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "domain 7 has no exits in this capture" in err
    assert not out.exists()


def test_a_replay_scenario_cannot_be_swept_yet(
    source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sweep workers have no capture reader: refused up front, not point by point."""
    (source / "base.yaml").write_text(REPLAY.format(duration=10, at_end="stop"))
    sweep = source / "sweep.yaml"
    sweep.write_text(
        "schema_version: 1\nbase: base.yaml\naxes:\n  xen.design: [xen-4.6, wp-split]\n"
        "replications: 1\nseed: 1\n"
    )
    assert main(["sweep", str(sweep), "--out", str(source / "swept"), "--no-progress"]) == 2
    assert "cannot be swept yet" in capsys.readouterr().err
    assert not (source / "swept").exists()
