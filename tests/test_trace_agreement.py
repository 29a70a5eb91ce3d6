"""`trace summarize` agrees with Xen's own xenalyze: count and mean cycles per (domain,
vCPU, exit reason), and arcs per port/MMIO address and direction.

The figures in ``tests/data/xenalyze_agreement.json`` were printed by xenalyze (built from
xen.git c447b7308b, where tools/xentrace/xenalyze.c was last changed by 2fe6a869da; plain
``gcc -O2``) on the captures ``trace_fixtures.host_capture`` writes for the seeds and
knobs stored beside them: data produced by running the tool, kept because CI cannot build
it. Each capture's SHA-256 is stored too, so a change to the generator fails here loudly
instead of comparing against figures of other bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from trace_fixtures import Knobs, host_capture

from sim.trace.format import DEFAULT_DOMAIN, exit_reason_name
from sim.trace.reader import summarize_capture

DATA = json.loads((Path(__file__).parent / "data" / "xenalyze_agreement.json").read_text())
CASES = {c["name"]: c for c in DATA["captures"]}


def _capture(case: dict, tmp_path: Path) -> Path:
    knobs = {k: tuple(v) if isinstance(v, list) else v for k, v in case["knobs"].items()}
    data = host_capture(case["seed"], Knobs(**knobs))
    assert hashlib.sha256(data).hexdigest() == case["sha256"], (
        "trace_fixtures.host_capture no longer writes the bytes xenalyze was run on: "
        "re-run xenalyze on the new captures and update tests/data/xenalyze_agreement.json"
    )
    path = tmp_path / f"{case['name']}.bin"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_exit_reasons_agree_with_xenalyze(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    summary = summarize_capture(_capture(case, tmp_path))
    ours = {
        (d, v, exit_reason_name(r)): [st.count, st.mean_cycles]
        for (d, v, r), st in summary.exits.items()
        if d != DEFAULT_DOMAIN
    }
    theirs = {(d, v, r): [c, m] for d, v, r, c, m in case["exits"]}
    assert ours == theirs


@pytest.mark.parametrize("name", sorted(CASES))
def test_address_counts_agree_with_xenalyze(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    summary = summarize_capture(_capture(case, tmp_path))
    ours: dict[tuple, int] = {}
    for (d, kind, addr, write), st in summary.addresses.items():
        if d == DEFAULT_DOMAIN:
            continue
        # xenalyze keeps the low 32 bits of an address in its per-address lists.
        key = (d, "pio" if kind == 1 else "mmio", addr & 0xFFFFFFFF, "write" if write else "read")
        ours[key] = ours.get(key, 0) + st.count
    theirs = {(d, k, a, w): n for d, k, a, w, n in case["addresses"]}
    assert ours == theirs


def test_the_fixtures_exercise_the_hard_rules(tmp_path: Path) -> None:
    """The stored cases are only worth something if they hit what they are named after."""
    lost = summarize_capture(_capture(CASES["lost-records-small-windows"], tmp_path))
    assert lost.lost_events > 0
    early = summarize_capture(_capture(CASES["early-exits-no-tsc-64-bit"], tmp_path))
    assert any(d == DEFAULT_DOMAIN for d, _, _ in early.exits.groups)
    preempted = summarize_capture(
        _capture(CASES["preempted-arcs-and-exits-without-entry"], tmp_path)
    )
    arcs = sum(st.count for st in preempted.exits.groups.values())
    assert arcs < 1600  # exits without an entry are not arcs
    many = summarize_capture(_capture(CASES["many-pcpus-interleaved"], tmp_path))
    assert len(many.pcpus) == 24


@pytest.mark.parametrize("name", ["tsc-ties-across-pcpus", "ties-lost-preempted-64-bit"])
def test_results_do_not_depend_on_the_decode_batch(name: str, tmp_path: Path) -> None:
    path = _capture(CASES[name], tmp_path)

    def fingerprint(batch: int) -> tuple:
        s = summarize_capture(path, batch_bytes=batch)
        stages = {(d, n): (x.count, x.total) for d, per in s.stages.items() for n, x in per.items()}
        return (
            {k: (v.count, v.total, v.max) for k, v in s.exits.groups.items()},
            {k: (v.count, v.total) for k, v in s.addresses.groups.items()},
            stages,
            s.lost_records,
        )

    whole = fingerprint(8 << 20)
    assert fingerprint(300) == whole
    assert fingerprint(4096) == whole
