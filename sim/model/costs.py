"""The trap path's costs: what each step of Xen's handling of a trap takes, in ns.

Every default names its source with the tags of ``shared/reference/cost-anchors.md``.
[TRACE] figures come from a public xentrace capture (cost-anchors §6) whose TSC runs at
2.798 GHz; its cycle counts become ns at that clock. Where each cost is charged on the
path is in :mod:`sim.model.processes`; node visits are priced by :mod:`sim.model.cache`.
"""

from __future__ import annotations

from pydantic import Field

from sim.inputs import StrictModel, bounded

#: A cost of one step, ns. No single step of the trap path comes near a millisecond; a
#: value above that is a typo (a unit slip), not a measurement.
CostNs = bounded(
    float, 0, 1_000_000, "no step of the trap path comes near 1 ms: more is a unit slip"
)


class Costs(StrictModel):
    """Hypervisor-side cost of each step of a trap, in ns; every one may be set to 0."""

    vmexit_ns: CostNs = Field(
        447,
        description="[TRACE]+[PUB] half of a trivial exit + entry of ~2,500 cycles: Xen "
        "CPUID exit -> entry median 2,555 cycles in the capture (cost-anchors §6); KVM "
        "tscdeadline_immed 2,500 cycles on a Haswell Xeon (kvm-unit-tests cfbd129ca4). "
        "2,500 / 2.798 GHz = 893 ns. The even split is an [ASSUMPTION].",
    )
    vmentry_ns: CostNs = Field(447, description="[TRACE]+[PUB] the other half; see vmexit_ns.")
    ept_violation_ns: CostNs = Field(
        2342,
        description="[TRACE] the EPT-violation path an MMIO or page-table-write exit takes "
        "before it emulates (hvm_hap_nested_page_fault: the p2m lookup of the gfn, type "
        "checks): an EPT violation handled inside Xen takes 9,108 cycles (median) in the "
        "capture against 2,555 for a trivial exit; (9,108 - 2,555) / 2.798 GHz = 2,342 ns. "
        "That fault also marks the page dirty, so this is an upper bound.",
    )
    mmio_decode_ns: CostNs = Field(
        1100,
        description="[PUB] instruction decode + emulation ~3,300 cycles (kvm-unit-tests "
        "00bfecaa, cost-anchors §1.3). Charged twice per forwarded MMIO or page-table "
        "write: at the exit, and when hvm_do_resume() re-runs handle_mmio() to complete "
        "it (HVMIO_mmio_completion, hvm.c @4.6, lines 522-523; io.c lines 93-94).",
    )
    pio_decode_ns: CostNs = Field(
        300,
        description="[ASSUMPTION] handle_pio()'s work: an I/O-instruction exit carries port "
        "and size in the exit qualification, so nothing is decoded. Charged again on "
        "resume, when hvm_do_resume() re-runs handle_pio() (HVMIO_pio_completion, hvm.c "
        "@4.6, lines 525-527).",
    )
    handler_check_ns: CostNs = Field(
        3,
        description="[ASSUMPTION] one entry of Xen's internal I/O handler table looked at "
        "by hvm_find_io_handler() (intercept.c @4.6, lines 205-227): a type compare, and "
        "an indirect accept() call for handlers of the access's type. About 1 ns per "
        "entry of a hot linear walk (cost-anchors §2, [DERIVED] from KVM's bsearch "
        "commit) plus the call. Charged per handler checked (sim.model.processes).",
    )
    visit_ns: CostNs | None = Field(
        None,
        description="null: a node visit costs what the cache model of sim.model.cache "
        "gives for its structure, size and the platform's caches (host.cpu). A number: "
        "that flat cost per visit for every structure (the model before issue #12, whose "
        "warm-L3 default was 15 ns; for tests and sensitivity sweeps).",
    )
    p2m_lookup_ns: CostNs = Field(
        50,
        description="[ASSUMPTION] get_page_from_gfn()/p2m type query on the selection "
        "path (wp-split and p2m-ioreq-server designs).",
    )
    ioreq_send_ns: CostNs = Field(
        500,
        description="[ASSUMPTION] copy the ioreq into the shared page and "
        "notify_via_xen_event_channel(). With the exit costs above, a port-I/O exit "
        "reaches the notify in ~1.3 us; the capture's exit -> dom0 vCPU woken is 1.21 us.",
    )
    vcpu_wake_ns: CostNs = Field(
        3820,
        description="[TRACE] guest vCPU woken -> running: 3.82 us in the capture "
        "(cost-anchors §6). The completion and the VM entry follow it.",
    )
    hypercall_ns: CostNs = Field(
        1000,
        description="[ASSUMPTION] fixed cost of one page's write protection from dom0 "
        "(XenGT issues a map and a set_mem_type hypercall per page), on top of its "
        "rangeset walks and lock wait.",
    )
