"""The ranges of a scenario's numbers, each with the reason for it.

Every number a scenario holds has a finite range a real system could have, made with
:func:`sim.inputs.bounded`, which records why the range is what it is; the reason is shown
when a value falls outside it, and ``tests/test_bounds.py`` walks the schemas and fails
for any number without both bounds and a reason. Sources use the tags of
``shared/reference/cost-anchors.md`` ([CODE], [PUB], [ASSUMPTION]).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from sim.inputs import bounded

#: The longest single step of a trap cycle, or pause between a guest's traps: a minute.
MAX_STEP_NS = 60e9
_STEP_WHY = (
    "a step of a trap (us on real hardware) or a guest's pause between traps is at most "
    "60 s (6e10 ns); finite, so simulated time always advances"
)
#: A duration in ns that may be 0 (costs, constant and uniform values).
NonNeg = bounded(float, 0, MAX_STEP_NS, _STEP_WHY)
#: Steps shorter than this (1 ps) may not advance the float clock of ns at the longest
#: duration (one hour: a resolution of about 0.0005 ns); sim.model.budget counts them as 0.
TIME_RESOLUTION_NS = 1e-3
#: A mean duration in ns (of an exponential or lognormal): at least 1 ps.
Positive = bounded(
    float,
    TIME_RESOLUTION_NS,
    MAX_STEP_NS,
    "a mean is at least 1 ps (a CPU cycle is ~300 ps) and at most 60 s (6e10 ns)",
)
#: The standard deviation of a lognormal's logarithm.
Sigma = bounded(
    float, 0, 10, "sigma of the log: at 10 one standard deviation already spans 4 decades"
)
#: Guest frames below this are not used for page tables (the legacy VGA/BIOS first MiB);
#: sim.model.workload allocates page-table frames from here up.
FIRST_RAM_GFN = 0x100
MiB = 1 << 20

# -- the ranges of numbers ----------------------------------------------------------------
Addr = bounded(
    int,
    0,
    (1 << 52) - 1,
    "[PUB] x86 physical addresses have at most 52 bits (MAXPHYADDR, Intel SDM vol. 3A 4.1.4)",
)
Port = bounded(int, 0, 0xFFFF, "[CODE] an x86 I/O port is 16 bits (IN/OUT take it from DX)")
Fraction = bounded(float, 0, 1, "a share or a probability")
Seed = bounded(int, 0, (1 << 64) - 1, "a 64-bit seed for numpy's SeedSequence")
MAX_DURATION_MS = 3_600_000.0
_DURATION_WHY = (
    "at most one hour of simulated time (the shipped runs use 2 s at most); what a run "
    "may cost is bounded by --max-events"
)
DurationMs = bounded(float, 0, MAX_DURATION_MS, _DURATION_WHY, above_low=True)
WarmupMs = bounded(float, 0, MAX_DURATION_MS, _DURATION_WHY)
LifetimeMs = bounded(
    float,
    0.001,
    MAX_DURATION_MS,
    "a PPGTT's replacement is at least one map hypercall (~1 us); a run whose churn is "
    "too costly is refused by --max-events",
)
MaxAccesses = bounded(
    int, 1, 100_000_000, "16 bytes are kept per measured trap: 1.6 GB at this bound"
)
MaxIoRanges = bounded(
    int,
    1,
    1 << 20,
    "[CODE] the BAR's own map needs one node (rangeset.c); 2^20 is above every live_pages "
    "bound; null means unlimited",
)
Vcpus = bounded(
    int,
    1,
    128,
    "[CODE] HVM_MAX_VCPUS = 128 (xen/include/public/hvm/hvm_info_table.h @RELEASE-4.6.0, line 35)",
)
Pages = bounded(
    int,
    0,
    1 << 20,
    "2^20 pages (4 GiB of page tables) is 350 times BDW's several thousand per vGPU",
)
PagesAtLeastOne = bounded(int, 1, 1 << 20, "see live_pages: 2^20 pages is 4 GiB of page tables")
RamMb = bounded(
    int,
    16,
    16 << 20,
    "[CODE] x86 HVM guests have less than 16 TiB (SUPPORT.md 'Guest Limits' @RELEASE-4.22.0)",
)
#: Any TSC rate a host has had: also the range of ``--cpu-hz`` (a capture's TSC rate).
MIN_TSC_HZ, MAX_TSC_HZ = 1e8, 1e11
TscHz = bounded(float, MIN_TSC_HZ, MAX_TSC_HZ, "100 MHz to 100 GHz: any TSC rate a host has had")
MAX_GUESTS = 64  # gVirt ran 7 vGPUs per GPU, gScale 15 (cost-anchors §1.6)
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]


def _overlap(a: list[int], b: list[int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def guest_layout_problem(guest: Any) -> str | None:
    """Why a guest's memory layout is impossible, or None.

    Page tables live in guest RAM, which the model lays out from address 0 with no MMIO
    hole: it must hold every live page-table page, and no BAR may lie inside it (a
    page-table page there would collide with the BAR's rangeset node, and its map would
    fail with -EEXIST). QEMU's devices must not overlap XenGT's ranges, or their traps
    would go to XenGT and be counted as XenGT's.
    """
    frames = guest.ram_mb * 256 - FIRST_RAM_GFN
    live = guest.vgpu.ppgtt.live_pages
    if live > frames:
        return (
            f"vgpu.ppgtt.live_pages ({live}) exceeds the {frames} page frames of ram_mb "
            f"({guest.ram_mb}) above the first MiB"
        )
    ram = [0, guest.ram_mb * MiB - 1]
    vgpu, other = guest.vgpu, guest.other_devices
    for key, span in (("vgpu.bar0_mmio", vgpu.bar0_mmio), ("other_devices.mmio", other.mmio)):
        if _overlap(ram, span):
            return (
                f"{key} [{span[0]:#x}, {span[1]:#x}] lies inside guest RAM [0, {ram[1]:#x}] "
                f"of ram_mb {guest.ram_mb} (the model has no MMIO hole): lower ram_mb or "
                "move the range above RAM"
            )
    for key, mine, theirs_key, theirs in (
        ("mmio", other.mmio, "vgpu.bar0_mmio", vgpu.bar0_mmio),
        ("ports", other.ports, "vgpu.vga_ports", vgpu.vga_ports),
    ):
        if _overlap(mine, theirs):
            return (
                f"other_devices.{key} overlaps {theirs_key}: QEMU's devices would trap to "
                "XenGT and be counted as XenGT's"
            )
    return None
