"""The trap path as Xen runs it (issue #12): hand timelines and conservation checks.

Each test computes event times by hand from constant costs in scenarios/small/
timeline.yaml (vmexit 300, vmentry 200, EPT path 500, MMIO decode 1000, port handling
100, handler check 2, visit 10, ioreq send 400, vCPU wake 700, hypercall 1000; XenGT
wake-up 2000 and service 3000; guest think 10000), all in ns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.model.cache import VisitCost
from sim.model.locks import RwLockTimeline
from sim.model.scenario import guest_instances, load_scenario
from sim.model.simulation import Simulation
from sim.model.summary import totals
from tests.test_validation import SMALL, trace_of

EXIT_MMIO = 300 + 500 + 1000 + 2 * 19 * 2  # exit, EPT path, decode, two handler scans
RESUME_MMIO = 700 + 1000 + 200  # wake, second emulation, entry
CONST = {"dist": "constant"}


def const(ns: float) -> dict:
    return {**CONST, "value_ns": ns}


# -- item 3: the rangeset lock --------------------------------------------------------
def test_rwlock_prefers_writers_and_readers_share() -> None:
    """xen/common/spinlock.c @4.6: a writer waits for the readers inside, then holds;
    readers arriving after the writer wait for it; readers alone never wait."""
    lock = RwLockTimeline()
    assert lock.read(100, 50) == 100  # [100, 150)
    assert lock.read(120, 50) == 120  # readers share: [120, 170)
    assert lock.write(130, 40) == 170  # claims at 130, drains the two readers
    assert lock.read(140, 10) == 210  # came after the writer: waits for it
    assert lock.write(150, 5) == 220  # after the earlier writer and the reader queued behind it
    assert lock.read(300, 10) == 300
    assert lock.readers_waited == 1
    assert lock.reader_wait_ns == 70
    assert lock.writer_wait_ns == (170 - 130) + (220 - 150)


def test_a_lookup_waits_for_a_map_holding_the_write_lock() -> None:
    """A PPGTT replacement run by XenGT's thread for vCPU 0's register write, and a
    QEMU-bound trap of vCPU 1 whose lookup falls inside the unmap's write hold.

    One page-table page (1 node) below the BAR (1 node); visits cost a flat 1000 ns.
    The PPGTT's lifetime is 5 us, so a replacement is due from 5000. vCPU 0 writes a
    register at 10000: the walk passes both nodes (2000), selected 13876; the request
    reaches the sleeping XenGT thread at 14276, which wakes at 16276 and, before the
    write, replaces the PPGTT: unmap (contains check 2 visits under the read lock,
    remove 2 + 2 under the write lock) 1000 + 2000 + 4000, write hold [19276, 23276);
    map into {BAR} (1 + 1 + 1 visits) from 23276, write hold [25276, 27276). Service
    3000: served 30276, resumed 32176.

    vCPU 1 traps at 19000 to a NIC above the BAR, so its lookup walks XenGT's MEMORY
    nodes first: at 20876, inside the unmap's hold; it waits to 23276 and walks the one
    node left (the unmap was applied when issued): selected 24276. QEMU wakes at 26676,
    serves to 29676; resumed 31576.
    """
    from sim.xen.ioreq import Access

    scenario = load_scenario(
        SMALL / "timeline.yaml",
        [
            ("duration_ms", 0.04),
            ("costs.visit_ns", 1000),
            ("guests[0].vcpus", 2),
            ("guests[0].qemu", {"wakeup": const(2000), "service": {"default": const(3000)}}),
            ("guests[0].vgpu.ppgtt", {"live_pages": 1, "pages_per_ppgtt": 1, "lifetime_ms": 0.005}),
        ],
    )
    sim = Simulation(scenario, base_dir=SMALL)
    guest = sim.guests[0]
    for vcpu, think in zip(guest.vcpus, (10_000, 19_000), strict=True):
        vcpu.think = lambda think=think: think
    script = [
        ("mmio", Access("mmio", 0xF7800010, 4, True)),  # vCPU 0: a register write
        ("other", Access("mmio", 0xFEBF0010, 4, False)),  # vCPU 1: the NIC, via QEMU
    ]
    guest.workload.next = lambda: script.pop(0) if script else ("mmio", None)
    rows: list = []
    sim.recorder.trace = rows.append
    sim.run()
    v0, v1 = rows[1], rows[0]
    assert (v0.vcpu.name, v1.vcpu.name) == ("vm1/vcpu0", "vm1/vcpu1")
    assert (v0.t_trap, v0.visits, v0.t_selected) == (10_000, 2, 13_876)
    assert (v0.t_served, v0.t_resumed) == (30_276, 32_176)
    assert (v1.t_trap, v1.visits, v1.t_selected) == (19_000, 1, 24_276)
    assert (v1.t_served, v1.t_resumed) == (29_676, 31_576)
    assert guest.page_lock.readers_waited == 1
    assert guest.page_lock.reader_wait_ns == 23_276 - 20_876
    assert sim.recorder.counters.hypercall_ns == 7000 + 4000


def test_a_page_whose_map_failed_takes_no_hypercall_to_replace() -> None:
    """Two page-table pages under a node limit of 2 (the BAR holds one node of MEMORY):
    the first page's map succeeds, the second's fails with -ENOMEM and the page stays
    RAM (hvm.c @4.6 line 1277; rangeset.c's alloc_range). Replacing the PPGTT unmaps the
    first page, one hypercall, and frees the second with none: XenGT never protected it.
    Then each page of the new PPGTT is one map hypercall."""
    scenario = load_scenario(
        SMALL / "timeline.yaml",
        [
            ("xen.max_nr_io_ranges", 2),
            ("guests[0].vgpu.ppgtt", {"live_pages": 2, "pages_per_ppgtt": 2}),
        ],
    )
    sim = Simulation(scenario, base_dir=SMALL)
    guest = sim.guests[0]
    counters = sim.recorder.counters
    assert (counters.maps, counters.failed_maps) == (2, 1)
    protected, failed = guest.ppgtt.ppgtts[0]
    assert guest.domain.is_write_protected(protected)
    assert not guest.domain.is_write_protected(failed)
    steps = []
    for hypercall, arg in guest.ppgtt.replace_steps(0):
        steps.append((hypercall.__name__, arg))
        hypercall(arg)
    assert steps == [("unmap_page", protected), ("map_page", 0), ("map_page", 0)]
    assert (counters.unmaps, counters.maps) == (1, 4)
    assert failed not in guest.live_pages
    assert len(guest.live_pages) == 2


# -- item 4: shared CPUs --------------------------------------------------------------
def test_two_vcpus_on_one_pcpu_take_turns_running_guest_code() -> None:
    """vCPU0 runs guest code [0, 10000) while vCPU1 waits; vCPU0's exit takes X; vCPU1
    runs [10000 + X, 20000 + X). vCPU0's reply comes at 10000 + X + 5000, but its pCPU
    is busy: it waits for vCPU1's exit and resumes from 20000 + 2X, done at + W.
    vCPU1's request finds the XenGT thread asleep again: served at 20000 + 2X + 5000,
    then it waits for vCPU0 (resume W, guest code 10000, exit X) until 30000 + 3X + W.
    """
    scenario = load_scenario(SMALL / "timeline.yaml", [("host.pcpus", 1), ("guests[0].vcpus", 2)])
    rows, sim = trace_of(scenario)
    assert sim.pcpus[0].pool is not None
    x = EXIT_MMIO + 4 * 10 + 400  # 3 page nodes + the BAR, then the ioreq send
    w = RESUME_MMIO
    by_vcpu = {}
    for r in rows:
        by_vcpu.setdefault(r["vcpu"], r)
    v0, v1 = by_vcpu["vm1/vcpu0"], by_vcpu["vm1/vcpu1"]
    assert (v0["trap"], v0["served"], v0["resumed"]) == (10_000, 15_000 + x, 20_000 + 2 * x + w)
    assert (v1["trap"], v1["served"]) == (20_000 + x, 25_000 + 2 * x)
    assert v1["resumed"] == 30_000 + 3 * x + 2 * w


def test_a_woken_vcpu_preempts_after_the_rate_limit() -> None:
    """Guest code of 5 ms: vCPU1 (UNDER) runs [5 ms + X, ...) when vCPU0's reply makes
    vCPU0 BOOST; credit lets it preempt once vCPU1 has run ratelimit_us (1 ms), checked
    at that boundary, so vCPU0 resumes at 5 ms + X + 1 ms and completes after W."""
    think = 5_000_000
    scenario = load_scenario(
        SMALL / "timeline.yaml",
        [
            ("host.pcpus", 1),
            ("guests[0].vcpus", 2),
            ("guests[0].think", const(think)),
            ("duration_ms", 12),
        ],
    )
    rows, _ = trace_of(scenario)
    x = EXIT_MMIO + 4 * 10 + 400
    v0 = next(r for r in rows if r["vcpu"] == "vm1/vcpu0")
    assert v0["trap"] == think
    assert v0["served"] == think + x + 5_000
    assert v0["resumed"] == think + x + 1_000_000 + RESUME_MMIO
    # Without the rate limit's wait the woken vCPU would still wait for a boundary:
    # with ratelimit 0 the checks run every 100 us (XEN_SYSCTL_SCHED_RATELIMIT_MIN).
    fast = load_scenario(
        SMALL / "timeline.yaml",
        [
            ("host.pcpus", 1),
            ("guests[0].vcpus", 2),
            ("guests[0].think", const(think)),
            ("duration_ms", 12),
            ("host.scheduler.ratelimit_us", 0),
        ],
    )
    rows, _ = trace_of(fast)
    v0 = next(r for r in rows if r["vcpu"] == "vm1/vcpu0")
    assert v0["resumed"] == think + x + 100_000 + RESUME_MMIO


# -- item 5: per-structure visit costs --------------------------------------------------
def test_visits_priced_by_the_cache_model() -> None:
    """With visit_ns null, 4 list nodes (256 B) sit in L1 (32 KB x cache_share 0.5) of
    the HSW preset: each visit costs 4 cycles + 1 for the compare at 3.4 GHz."""
    scenario = load_scenario(SMALL / "timeline.yaml", [("costs.visit_ns", None)])
    rows, _ = trace_of(scenario)
    walk = 4 * (4 + 1) / 3.4
    for row in rows:
        assert row["visits"] == 4
        assert row["selected"] == pytest.approx(row["trap"] + EXIT_MMIO + walk, abs=1e-6)


def test_cache_model_levels_and_structures() -> None:
    hsw = load_scenario(SMALL / "timeline.yaml").host.cpu
    lst = VisitCost(hsw, "list")
    ghz = hsw.clock_ghz
    assert lst.list_visit_ns(10) == pytest.approx(5 / ghz)  # L1
    # 4096 nodes = 256 KB: 16 KB of it in L1, 128 KB in L2 (halves), the rest in L3.
    share_l1, share_l2 = 16 / 256, 128 / 256
    expected = (share_l1 * 4 + (share_l2 - share_l1) * 10 + (1 - share_l2) * 34 + 1) / ghz
    assert lst.list_visit_ns(4096) == pytest.approx(expected)
    assert lst.list_visit_ns(1 << 20) > 40  # 64 MB of nodes: mostly DRAM
    tree = VisitCost(hsw, "rbtree")
    path = tree.tree_path(8192)
    # The root and its level are hot (L1); a visit adds half a misprediction.
    assert path[1] == pytest.approx((4 + 1 + 7) / ghz)
    assert path[14] > 14 * path[1]  # deep levels leave L1
    flat = VisitCost(hsw, "rbtree", flat_ns=15)
    assert flat.walk_ns(7, 1000) == 105


def test_list_beats_tree_for_short_walks_and_loses_long_ones() -> None:
    """The crossover at small N: a tree visit costs a misprediction on top of its load,
    so a short list walk is cheaper than a tree path of the same lookup."""
    hsw = load_scenario(SMALL / "timeline.yaml").host.cpu
    lst, tree = VisitCost(hsw, "list"), VisitCost(hsw, "rbtree")
    assert lst.walk_ns(8, 8) < tree.walk_ns(4, 8)  # a BAR lookup past 7 pages
    assert lst.walk_ns(64, 64) > tree.walk_ns(7, 64)


# -- item 6: XenGT's service order --------------------------------------------------------
def test_xengt_serves_pending_vcpus_in_index_order() -> None:
    """vCPU 2 traps first (at 10000); its request reaches the sleeping XenGT thread at
    10000 + X, which wakes 2000 later and serves it for 20 us. vCPUs 1 and 0 trap at
    13000 and 13100, while it is busy. vgt's emulation thread finishes its sweep
    (nothing above vCPU 2 is pending) and sweeps again from vCPU 0: vCPU 0 before
    vCPU 1, although vCPU 1 came first. FIFO (QEMU's order) serves vCPU 1 first."""
    base = [
        ("guests[0].vcpus", 3),
        ("duration_ms", 0.1),
        ("guests[0].vgpu.device_model.service.default", const(20_000)),
    ]
    x = EXIT_MMIO + 4 * 10 + 400

    def served(order: str) -> list[tuple[str, float]]:
        scenario = load_scenario(
            SMALL / "timeline.yaml",
            [*base, ("guests[0].vgpu.device_model.order", order)],
        )
        sim = Simulation(scenario, base_dir=SMALL)
        for vcpu, think in zip(sim.guests[0].vcpus, (13_100, 13_000, 10_000), strict=True):
            vcpu.think = lambda think=think: think
        rows: list = []
        sim.recorder.trace = rows.append
        sim.run()
        return sorted((t.t_served, t.vcpu.name) for t in rows[:3])

    first = 10_000 + x + 2_000 + 20_000
    assert served("vcpu-index") == [
        (first, "vm1/vcpu2"),
        (first + 20_000, "vm1/vcpu0"),
        (first + 40_000, "vm1/vcpu1"),
    ]
    assert [name for _, name in served("fifo")] == ["vm1/vcpu2", "vm1/vcpu1", "vm1/vcpu0"]


def test_default_qemu_round_trip_matches_the_capture() -> None:
    """With the schema's defaults, a port I/O to QEMU takes what the capture measured:
    median 50.0 us exit -> entry ([TRACE], cost-anchors §6), within 10%."""
    scenario = load_scenario(
        SMALL / "tiny.yaml",
        [
            ("duration_ms", 200),
            ("guests[0].mix", {"mmio": 0.0, "pio": 0.0, "ppgtt_write": 0.0, "other": 1.0}),
            ("guests[0].other_devices.mmio_fraction", 0.0),
            ("guests[0].think", {"dist": "exponential", "mean_ns": 500_000}),
        ],
    )
    result = Simulation(scenario, base_dir=SMALL).run()
    import numpy as np

    lat = np.frombuffer(result.groups[("other", "vm1/qemu")][0], dtype=np.float64)
    assert len(lat) > 200
    assert float(np.median(lat)) == pytest.approx(50_000, rel=0.10)


# -- item 7: CPU use ----------------------------------------------------------------------
def test_thread_busy_time_is_the_service_it_did() -> None:
    """Conservation: with constant service, a thread's busy time is served x service
    (less what fell before the warm-up), and a shared dom0 pool is busy exactly as long
    as the threads on it."""
    scenario = load_scenario(
        SMALL / "tiny.yaml",
        [
            ("guests[0].vgpu.device_model.service", {"default": const(3000)}),
            ("guests[0].vgpu.ppgtt.lifetime_ms", None),
            ("warmup_ms", 0),
            ("host.dom0_vcpus", 2),
        ],
    )
    result = Simulation(scenario, base_dir=SMALL).run()
    usage = result.usage
    threads = {name: (busy, served) for name, busy, served in usage.threads}
    busy, served = threads["vm1/xengt/0"]
    assert served > 50
    assert served * 3000 - 3000 <= busy <= served * 3000 + 3000  # one may be running
    assert sum(b for _, b in usage.dom0_vcpus) == pytest.approx(
        sum(b for b, _ in threads.values()), rel=1e-9
    )
    tot = totals(result)
    dom0 = tot["cpu_use"]
    assert 0 < dom0["dom0_vcpus"]["dom0/vcpu0"] <= 1
    assert dom0["threads"]["vm1/xengt/0"] == pytest.approx(busy / result.measured_ns)


# -- many vGPUs ---------------------------------------------------------------------------
def test_guest_count_makes_independent_domains() -> None:
    scenario = load_scenario(
        SMALL / "tiny.yaml", [("guests", [{"name": "vm", "count": 3, "vgpu": {"ppgtt": {}}}])]
    )
    assert [n for _, n in guest_instances(scenario)] == ["vm-1", "vm-2", "vm-3"]
    sim = Simulation(scenario, base_dir=SMALL)
    assert [g.name for g in sim.guests] == ["vm-1", "vm-2", "vm-3"]
    assert len(sim.pcpus) == 3
    rows = totals(sim.run())["ranges"]
    assert sorted(rows) == ["vm-1", "vm-2", "vm-3"]


def test_guest_count_names_must_stay_unique(tmp_path: Path) -> None:
    from sim.inputs import InputError

    with pytest.raises(InputError, match="vm-2"):
        load_scenario(
            SMALL / "tiny.yaml",
            [
                (
                    "guests",
                    [
                        {"name": "vm", "count": 2, "vgpu": {"ppgtt": {}}},
                        {"name": "vm-2", "vgpu": {"ppgtt": {}}},
                    ],
                )
            ],
        )
    with pytest.raises(InputError, match=r"guests\[0\]\.count"):
        load_scenario(SMALL / "tiny.yaml", [("guests[0].count", 0)])


# -- the credit-like scheduler, rule by rule -----------------------------------------------
def test_credit_like_rules() -> None:
    """BOOST waiters go first; the rate limit, the time slice and the tick (sched_credit.c
    @4.6: csched_vcpu_wake, csched_schedule, csched_vcpu_acct) decide preemption."""
    import simpy

    from sim.model.cpu import BOOST, UNDER, Cpu, CpuPool, Runner
    from sim.model.host import Scheduler

    env = simpy.Environment()
    pool = CpuPool(env, [Cpu("c0", 0.0)], Scheduler(), window_start=0.0)
    a, b, c = Runner("a"), Runner("b"), Runner("c")
    assert pool.acquire(a, woken=False) is None  # a free CPU is granted at once
    wait_b = pool.acquire(b, woken=False)
    wait_c = pool.acquire(c, woken=True)
    assert wait_b is not None
    assert wait_c is not None
    assert (a.pri, b.pri, c.pri) == (UNDER, UNDER, BOOST)
    env.run(until=999_999)
    assert not pool.should_yield(a)  # c is BOOST, but a has run < ratelimit (1 ms)
    env.run(until=1_000_000)
    assert pool.should_yield(a)
    pool.release(a)
    assert wait_c.triggered
    assert not wait_b.triggered
    assert c.cpu is not None
    assert c.run_start == 1_000_000
    # c keeps BOOST until a tick (every 10 ms) finds it running.
    env.run(until=9_999_999)
    assert not pool.should_yield(c)
    assert c.pri == BOOST
    env.run(until=10_000_001)
    assert not pool.should_yield(c)  # the tick dropped it to UNDER; b is UNDER too
    assert c.pri == UNDER
    env.run(until=31_000_000)
    assert pool.should_yield(c)  # 30 ms slice used up, an equal-priority waiter
    assert pool.requeue(c) is not None  # back to the tail, behind b
    assert wait_b.triggered
    assert b.cpu is not None
    assert pool.cpus[0].busy.total(env.now) == 31_000_000  # never idle


def test_busy_time_counts_only_the_measured_window() -> None:
    from sim.model.cpu import Busy

    busy = Busy(window_start=100.0)
    busy.add(50.0, 150.0)  # half of it before the window
    busy.start(200.0)
    busy.stop(260.0)
    busy.start(300.0)
    assert busy.total(350.0) == 50 + 60 + 50


def test_a_capture_of_counted_guests_has_a_domain_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run --xentrace`` writes each of the N guests of a ``count: N`` entry as a domain."""
    import csv
    import io

    from sim.cli import main

    out = tmp_path / "run"
    scenario = SMALL.parent / "multi-vgpu.yaml"
    args = ["run", str(scenario), "--out", str(out), "--xentrace", "--no-progress"]
    assert main([*args, "--set", "duration_ms=20", "--set", "warmup_ms=2"]) == 0
    capsys.readouterr()
    assert main(["trace", "summarize", str(out / "xentrace.bin"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {int(r["domain"]) for r in rows} == set(range(1, 8))
