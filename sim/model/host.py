"""The host part of a scenario: CPUs, dom0's vCPUs, the scheduler, the cache figures.

``host.cpu`` comes from the platform preset (``sim/model/presets/<platform>.yaml``) unless
the scenario gives it; every figure there cites its source. The scheduler section holds
Xen 4.6 credit's defaults, read from ``xen/common/sched_credit.c`` @RELEASE-4.6.0; the
model's scheduler (:mod:`sim.model.cpu`) is *credit-like*, not credit: see its docstring.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from sim.inputs import StrictModel, bounded
from sim.model.bounds import TscHz

#: The scheduler's bounds are the hypervisor's own (public/sysctl.h @4.6).
_SYSCTL = "the range XEN_SYSCTL_CSCHED_* and SCHED_RATELIMIT_MAX allow (public/sysctl.h @4.6)"
SliceMs = bounded(float, 0, 1000, _SYSCTL, above_low=True)
RateLimitUs = bounded(float, 0, 500_000, _SYSCTL)
CacheShare = bounded(float, 0, 1, "a share of a cache", above_low=True)
Pcpus = bounded(int, 1, 4096, "Xen 4.6's NR_CPUS ceiling on x86")
Dom0Vcpus = bounded(int, 1, 512, "generous for a PV dom0 (HVM_MAX_VCPUS is 128)")


def _bracket(low: float, high: float) -> Any:
    return bounded(float, low, high, "a generous bracket of x86 parts of 2013-2016 and later")


class Scheduler(StrictModel):
    """Time slice, rate limit and tick of the credit-like scheduler (one per CPU pool)."""

    tslice_ms: SliceMs = Field(
        30.0,
        description="[CODE] CSCHED_DEFAULT_TSLICE_MS = 30 (sched_credit.c @4.6, line 51): a "
        "vCPU runs this long before an equal-priority vCPU gets the CPU. Bounded like "
        "XEN_SYSCTL_CSCHED_TSLICE_MIN/MAX, 1..1000 ms (public/sysctl.h @4.6).",
    )
    ratelimit_us: RateLimitUs = Field(
        1000.0,
        description="[CODE] SCHED_DEFAULT_RATELIMIT_US = 1000 (xen/include/xen/sched-if.h @4.6, "
        "line 21): a running vCPU is not preempted before it has run this long "
        "(csched_schedule, sched_credit.c @4.6, lines 1663-1677). 0 disables it; at most "
        "XEN_SYSCTL_SCHED_RATELIMIT_MAX = 500000.",
    )
    tick_ms: SliceMs = Field(
        10.0,
        description="[CODE] tslice / CSCHED_TICKS_PER_TSLICE (3) = 10 ms "
        "(sched_credit.c @4.6, lines 49 and 1076-1083): a tick that finds a BOOSTed vCPU "
        "running drops it to UNDER (csched_vcpu_acct, lines 853-854).",
    )


class CpuCaches(StrictModel):
    """Cache sizes and load-to-use latencies of the platform's cores (from the preset).

    Bounds are generous brackets of x86 parts of 2013-2016 and later, not HSW/BDW only.
    """

    clock_ghz: _bracket(0.5, 6.0) = Field(
        description="Core clock that turns the cycle counts below into ns."
    )
    l1d_kb: _bracket(1, 1024) = Field(description="L1 data cache per core.")
    l1d_cycles: _bracket(1, 100) = Field(
        description="Load-to-use latency of an L1 hit (pointer chasing)."
    )
    l2_kb: _bracket(16, 65_536) = Field(description="L2 per core.")
    l2_cycles: _bracket(1, 200) = Field(description="L2 hit latency.")
    l3_kb: _bracket(0, 1_048_576) = Field(
        description="Last-level cache shared by the cores (0: none)."
    )
    l3_cycles: _bracket(1, 500) = Field(description="L3 hit latency.")
    dram_ns: _bracket(10, 1000) = Field(
        description="Load-to-use latency of a DRAM access, ns, on top of nothing else."
    )
    mispredict_cycles: _bracket(0, 100) = Field(
        description="Branch misprediction penalty: a tree descent goes left or right at "
        "random, so half its compares mispredict."
    )
    cache_share: CacheShare = Field(
        0.5,
        description="[ASSUMPTION] share of each cache level that Xen's rangeset nodes keep "
        "between traps: the guest runs in between (think time) with its own working set, "
        "so the nodes cannot count on a whole level. 1: the nodes own every cache.",
    )


class Host(StrictModel):
    pcpus: Pcpus | None = Field(
        None,
        description="[ASSUMPTION] physical CPUs for the guests' vCPUs, pinned round-robin. "
        "A pCPU runs one vCPU at a time, guest code and Xen's work for it alike, under "
        "the credit-like scheduler. null: one pCPU per guest vCPU (no contention). At most "
        "4096, Xen 4.6's NR_CPUS ceiling on x86.",
    )
    dom0_vcpus: Dom0Vcpus | None = Field(
        None,
        description="dom0 vCPUs shared by all device-model threads of all guests (gVirt "
        "ran 7 vGPUs, gScale 15: cost-anchors §1.6); each runs one thread at a time under "
        "the credit-like scheduler. Each dom0 vCPU is assumed to have a pCPU of its own "
        "([TRACE]: dom0 always ran on another, idle pCPU). null: each thread has its own "
        "dom0 vCPU. At most 512 (HVM_MAX_VCPUS at 4.6 is 128; dom0 is PV, generous).",
    )
    tsc_hz: TscHz = Field(
        2.8e9,
        description="[TRACE] the host's TSC rate, in Hz: the clock of a --xentrace capture "
        "(~2.798 GHz calibrated from a real capture's scheduler records, cost-anchors §6).",
    )
    scheduler: Scheduler = Field(default_factory=Scheduler)
    cpu: CpuCaches = Field(
        description="The platform's cache figures; from the preset unless given.",
    )
