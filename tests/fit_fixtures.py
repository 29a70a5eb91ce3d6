"""Captures and scenarios for the fit and replay tests.

``io_capture`` builds a capture record by record: domain 1's vCPU 0 does port I/O on
pCPU 0 (each exit ends at its entry), vCPU 1 only CPUID exits on pCPU 1, and domain 2 only
CPUID exits on pCPU 2: a vCPU that never traps, exits the model does not represent, and a
domain with no I/O at all. ``model_capture`` runs a scenario with ``--xentrace``.
"""

from __future__ import annotations

import random
from pathlib import Path

from sim.cli import main
from sim.trace import format as fmt

R = fmt.encode


def _running(dom: int, vcpu: int, tsc: int) -> bytes:
    return R(fmt.runstate_event(fmt.RUNNABLE, fmt.RUNNING), (fmt.vcpu_word(dom, vcpu),), tsc)


def windows(per_pcpu: dict[int, list[bytes]]) -> bytes:
    out = b""
    for pcpu, records in sorted(per_pcpu.items()):
        body = b"".join(records)
        out += fmt.cpu_change(pcpu, len(body)) + body
    return out


def io_capture(traps: int = 400, seed: int = 5, rtc: bool = False) -> bytes:
    """See the module docstring; ``rtc`` adds the RTC's ports to vCPU 0's, which Xen
    emulates itself."""
    rng = random.Random(seed)
    ports = [(0x3C4, True), (0x3C5, False), (0x3D4, True), (0x60, False)]
    if rtc:
        ports += [(0x70, True), (0x71, False)]
    io = [_running(1, 0, 1000)]
    t = 2000
    for _ in range(traps):
        t += int(rng.expovariate(1 / 60_000))  # think, cycles
        port, write = rng.choice(ports)
        event = fmt.TRC_HVM_IOPORT_WRITE if write else fmt.TRC_HVM_IOPORT_READ
        io += [R(fmt.TRC_HVM_VMX_EXIT, (30, 0x1000), t), R(event, (port, 0x12))]
        t += 15_000 + int(rng.expovariate(1 / 20_000))  # exit -> entry, cycles
        io.append(R(fmt.TRC_HVM_VMENTRY, (), t))
    end = t
    cpuid: dict[int, list[bytes]] = {1: [_running(1, 1, 1000)], 2: [_running(2, 0, 1000)]}
    for pcpu in (1, 2):
        t = 3000
        while t < end:
            cpuid[pcpu] += [R(fmt.TRC_HVM_VMX_EXIT, (10, 0x2000), t)]
            t += 2000 + rng.randrange(1000)
            cpuid[pcpu] += [R(fmt.TRC_HVM_VMENTRY, (), t)]
            t += 50_000
    return windows({0: io, **cpuid})


def model_capture(scenario: Path, out: Path, *extra: str) -> Path:
    """Run ``scenario`` with --xentrace into ``out``; the capture's path."""
    args = ["run", str(scenario), "--out", str(out), "--xentrace", "--no-progress", *extra]
    assert main(args) == 0
    return out / "xentrace.bin"


#: A scenario with known distributions for the identifiability test: two vCPUs, one
#: worker per vCPU (no queueing) and no dom0 wake-up (a model capture has no scheduler
#: records, so the wake-up cannot be told from the service), p2m-ioreq-server (the test
#: also runs it under xen-4.6), no limit on ranges (every page-table write traps). Costs
#: are the model's defaults; QEMU's devices are ports and MMIO, whose exits the model
#: prices ~4 us apart (the fit takes the model's cost off per device and direction).
KNOWN = """\
# Known distributions for the identifiability test.
schema_version: 1
description: "identifiability: a capture written from known distributions"
platform: hsw
seed: 11
duration_ms: 200
xen: {design: p2m-ioreq-server, max_nr_io_ranges: null}
guests:
  - name: vm1
    vcpus: 2
    think: {dist: exponential, mean_ns: 40000}
    mix: {mmio: 0.5, pio: 0.1, ppgtt_write: 0.3, other: 0.1}
    vgpu:
      device_model:
        workers: 2
        wakeup: {dist: constant, value_ns: 0}
        service:
          default: {dist: lognormal, mean_ns: 3000, sigma: 0.4}
          ppgtt_write: {dist: gamma, mean_ns: 5000, shape: 4}
    qemu:
      workers: 2
      wakeup: {dist: constant, value_ns: 0}
      service: {default: {dist: lognormal, mean_ns: 8000, sigma: 0.3}}
"""
