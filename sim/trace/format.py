"""The xentrace binary format: record layout, event ids, and the names xenalyze prints.

Sources (read to learn, nothing copied): ``xen/include/public/trace.h`` (event classes and
ids, the header word, ``TRC_64_FLAG``), ``tools/xentrace/xentrace.c`` (per-pCPU windows
opened by a ``TRC_TRACE_CPU_CHANGE`` record), ``tools/xentrace/xenalyze.c`` (exit-reason
names, runstate numbering, the lost-records layout). Facts are summarised in
``shared/reference/xentrace.md`` and ``xen-semantics.md`` §5.

A record is little-endian 32-bit words: a header (event id in bits 0-27, the number of
extra data words 0..7 in bits 28-30, bit 31 set when a 64-bit TSC follows), then the TSC
(low word first) if flagged, then the extra words.
"""

from __future__ import annotations

import struct

# -- header word (trace.h: TRC_HD_TO_EVENT, TRACE_EXTRA_SHIFT, TRC_HD_CYCLE_FLAG) ----------
EVENT_MASK = 0x0FFFFFFF
EXTRA_SHIFT = 28
EXTRA_MASK = 0x7
CYCLE_FLAG = 1 << 31
MAX_EXTRA_WORDS = 7

# -- classes and sub-classes (trace.h @RELEASE-4.6.0 and master) -------------------------
TRC_GEN = 0x0001F000
TRC_64_FLAG = 0x100

#: The class bits (16..27) of an event, xenalyze's ``evt.main``, and the sub-class (12..15).
MAIN_SHIFT = 16
SUB_SHIFT = 12
MAIN_SCHED, MAIN_HVM, MAIN_PV = 0x002, 0x008, 0x020  # TRC_SCHED, TRC_HVM, TRC_PV >> 16
SUB_SCHED_MIN = 1  # runstate changes (TRC_SCHED_MIN)
SUB_HVM_EMUL = 4  # emulated-device timers: no vCPU context (TRC_HVM_EMUL)

TRC_LOST_RECORDS = TRC_GEN + 1
TRC_TRACE_CPU_CHANGE = TRC_GEN + 3

TRC_SCHED_MIN = 0x00021000
TRC_SCHED_RUNSTATE_CHANGE = TRC_SCHED_MIN + 1
TRC_SCHED_CONTINUE_RUNNING = TRC_SCHED_MIN + 2

TRC_HVM_ENTRYEXIT = 0x00081000
TRC_HVM_HANDLER = 0x00082000
TRC_HVM_VMENTRY = TRC_HVM_ENTRYEXIT + 0x01
TRC_HVM_VMX_EXIT = TRC_HVM_ENTRYEXIT + 0x02
TRC_HVM_VMX_EXIT64 = TRC_HVM_VMX_EXIT + TRC_64_FLAG
TRC_HVM_SVM_EXIT = TRC_HVM_ENTRYEXIT + 0x03
TRC_HVM_SVM_EXIT64 = TRC_HVM_SVM_EXIT + TRC_64_FLAG
TRC_HVM_IOPORT_READ = TRC_HVM_HANDLER + 0x16
TRC_HVM_IOMEM_READ = TRC_HVM_HANDLER + 0x17
TRC_HVM_IOPORT_WRITE = TRC_HVM_HANDLER + 0x216
TRC_HVM_IOMEM_WRITE = TRC_HVM_HANDLER + 0x217
TRC_HVM_NPF = TRC_HVM_HANDLER + 0x21
#: Bit 0x200 of an I/O event id means a write (xenalyze decodes ``minor:8, x64:1, write:2``).
IO_WRITE_BIT = 0x200

CPU_CHANGE_HEADER = TRC_TRACE_CPU_CHANGE | (2 << EXTRA_SHIFT)  # no TSC, 2 extra words
CPU_CHANGE_BYTES = 12

#: xenalyze's pseudo-domains: the idle domain, and the "default domain" whose vCPU n stands
#: for whatever ran on pCPU n before the first scheduler record there.
IDLE_DOMAIN = 32767
DEFAULT_DOMAIN = 32768
#: xenalyze refuses vCPU and pCPU numbers above this (``MAX_CPUS``).
MAX_CPUS = 256

# -- runstates: Xen's public numbering in records, xenalyze's extra states after it -------
RUNNING, RUNNABLE, BLOCKED, OFFLINE, LOST, QUEUED, INIT = range(7)

# -- VMX exit reasons: Intel SDM Vol. 3 appendix C, spelled as xenalyze prints them -------
VMX_EXIT_REASONS: dict[int, str] = {
    0: "EXCEPTION_NMI",
    1: "EXTERNAL_INTERRUPT",
    2: "TRIPLE_FAULT",
    3: "INIT",
    4: "SIPI",
    5: "IO_SMI",
    6: "OTHER_SMI",
    7: "PENDING_VIRT_INTR",
    8: "PENDING_VIRT_NMI",
    9: "TASK_SWITCH",
    10: "CPUID",
    11: "GETSEC",
    12: "HLT",
    13: "INVD",
    14: "INVLPG",
    15: "RDPMC",
    16: "RDTSC",
    17: "RSM",
    18: "VMCALL",
    19: "VMCLEAR",
    20: "VMLAUNCH",
    21: "VMPTRLD",
    22: "VMPTRST",
    23: "VMREAD",
    24: "VMRESUME",
    25: "VMWRITE",
    26: "VMXOFF",
    27: "VMXON",
    28: "CR_ACCESS",
    29: "DR_ACCESS",
    30: "IO_INSTRUCTION",
    31: "MSR_READ",
    32: "MSR_WRITE",
    33: "INVALID_GUEST_STATE",
    34: "MSR_LOADING",
    36: "MWAIT_INSTRUCTION",
    37: "MONITOR_TRAP_FLAG",
    39: "MONITOR_INSTRUCTION",
    40: "PAUSE_INSTRUCTION",
    41: "MCE_DURING_VMENTRY",
    43: "TPR_BELOW_THRESHOLD",
    44: "APIC_ACCESS",
    46: "ACCESS_GDTR_OR_IDTR",
    47: "ACCESS_LDTR_OR_TR",
    48: "EPT_VIOLATION",
    49: "EPT_MISCONFIG",
    50: "INVEPT",
    51: "RDTSCP",
    52: "VMX_PREEMPTION_TIMER_EXPIRED",
    53: "INVVPID",
    54: "WBINVD",
    55: "XSETBV",
}
EXIT_IO_INSTRUCTION = 30
EXIT_EPT_VIOLATION = 48


def exit_reason_name(code: int) -> str:
    """xenalyze's name for a VMX exit reason, or the number for one it has no name for."""
    return VMX_EXIT_REASONS.get(code, str(code))


#: p2m types in the NPF record (``p2m_type_t``, xen/include/asm-x86/p2m.h). Type 15 was
#: ``p2m_mmio_write_dm`` in 4.5-4.8 and became ``p2m_ioreq_server`` in 4.9 (ca2b511d3f).
P2M_TYPES: dict[int, str] = {
    0: "ram_rw",
    1: "invalid",
    2: "ram_logdirty",
    3: "ram_ro",
    4: "mmio_dm",
    5: "mmio_direct",
    6: "populate_on_demand",
    7: "grant_map_rw",
    8: "grant_map_ro",
    9: "ram_paging_out",
    10: "ram_paged",
    11: "ram_paging_in",
    12: "ram_shared",
    13: "ram_broken",
    14: "map_foreign",
    15: "ioreq_server",
}
P2M_MMIO_DM = 4
P2M_IOREQ_SERVER = 15


def p2m_type_name(code: int) -> str:
    return P2M_TYPES.get(code, str(code))


# -- encoding ------------------------------------------------------------------------------
def header(event: int, n_extra: int, with_tsc: bool) -> int:
    if not 0 <= n_extra <= MAX_EXTRA_WORDS:
        raise ValueError(f"a record has 0..7 extra words, not {n_extra}")
    return (event & EVENT_MASK) | (n_extra << EXTRA_SHIFT) | (CYCLE_FLAG if with_tsc else 0)


def encode(event: int, words: tuple[int, ...] = (), tsc: int | None = None) -> bytes:
    """One record's bytes: header, optional TSC, extra words (each taken modulo 2**32)."""
    head = header(event, len(words), tsc is not None)
    parts = [head]
    if tsc is not None:
        parts += [tsc & 0xFFFFFFFF, (tsc >> 32) & 0xFFFFFFFF]
    parts += [w & 0xFFFFFFFF for w in words]
    return struct.pack(f"<{len(parts)}I", *parts)


def cpu_change(pcpu: int, window_bytes: int) -> bytes:
    """The record that opens a window of ``window_bytes`` bytes of pCPU ``pcpu``'s records."""
    return struct.pack("<3I", CPU_CHANGE_HEADER, pcpu, window_bytes)


def runstate_event(old: int, new: int) -> int:
    """``TRC_SCHED_RUNSTATE_CHANGE`` with the old state in bits 8-11 and the new in 4-7
    (``trace_runstate_change``, xen/common/sched/core.c; schedule.c @4.6 lines 84-100)."""
    return TRC_SCHED_RUNSTATE_CHANGE | ((old & 0xF) << 8) | ((new & 0xF) << 4)


def vcpu_word(domain: int, vcpu: int) -> int:
    """``{uint16_t vcpu, domain}``: the vCPU in the low half, the domain in the high half."""
    return (vcpu & 0xFFFF) | ((domain & 0xFFFF) << 16)
