"""Version profiles: every rule of trap routing that differs between Xen releases.

A :class:`VersionProfile` is an immutable record of what one release does, field by
field, and every field names the Xen source it was read from (``sources``: commit, file,
lines at the release tag). Four releases are modelled:

``"4.6"``   RELEASE-4.6.0 (b24ad7ba91), the release 2015 XenGT ran on.
``"4.9"``   RELEASE-4.9.0: first with ``p2m_ioreq_server`` claimed by one server.
``"4.12"``  RELEASE-4.12.0: direction-aware MMIO window, rep MMIO cut at page boundaries,
            no default ioreq server, servers in 8 slots.
``"master"`` xen.git master at c447b7308b.

Three designs for write-protected guest pages exist (:class:`Design`); a release runs
only some of them. ``xen-4.6`` needs the p2m type ``p2m_mmio_write_dm``, which left the
interface in 4.7 (c858e932c1) and was renamed ``p2m_ioreq_server`` in 4.8 (cb34624af5);
``p2m-ioreq-server`` needs ``XEN_DMOP_map_mem_type_to_ioreq_server`` (ca2b511d3f, 4.9).
``wp-split`` (f5a32c5b8e) was committed on the way to 4.7 and reverted 19 days later
(19e5e78324): no release has it. It is offered on top of 4.6, whose selector it patched,
and labelled as never released; :func:`resolve` refuses every other combination.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

XenVersion = Literal["4.6", "4.9", "4.12", "master"]
VERSIONS: tuple[XenVersion, ...] = ("4.6", "4.9", "4.12", "master")
DEFAULT_VERSION: XenVersion = "4.6"


class Design(StrEnum):
    """How the device model write-protects guest page-table pages (see sim.xen.ioreq)."""

    XEN_46 = "xen-4.6"
    WP_SPLIT = "wp-split"
    P2M_IOREQ_SERVER = "p2m-ioreq-server"


#: The release each design first ran on: the version a file gets when it names only a design.
FIRST_RELEASE: Mapping[Design, XenVersion] = MappingProxyType(
    {Design.XEN_46: "4.6", Design.WP_SPLIT: "4.6", Design.P2M_IOREQ_SERVER: "4.9"}
)


@dataclass(frozen=True)
class VersionProfile:
    """What one Xen release does at each step that decides where a trapped access goes.

    Every field but ``name``, ``ref`` and ``sources`` is a rule, and ``sources[rule]``
    cites where it was read. :mod:`sim.xen.intercept` holds the per-release table of Xen's
    internal emulators; :mod:`sim.xen.emulate` applies the splitting rules.
    """

    name: XenVersion
    ref: str  # the git ref the line numbers below refer to
    # -- the instruction emulator, before selection (sim.xen.emulate) ----------------------
    max_reps: int  # a rep string op is cut into rounds of at most this many reps
    rep_mmio_page_cut: bool  # a rep MMIO request stops at the next page boundary
    max_mmio_access: int  # the widest non-rep MMIO access the emulator takes, in bytes
    # -- Xen's internal emulators (sim.xen.intercept) ----------------------------------------
    mmio_accept_crash: Literal["size>1", "last!=first"]  # when a half-accepted access crashes
    # -- ioreq servers --------------------------------------------------------------------
    default_server: bool  # the catch-all server QEMU got by reading HVM_PARAM_IOREQ_PFN
    server_ids: Literal["counter", "slot"]  # "counter": ids 1, 2, ...; "slot": slot number
    server_order: Literal["newest-first list", "slots from the top"]
    server_limit: int  # secondary servers a domain can hold
    server_limit_errno: str  # what the create hypercall returns past the limit
    bufioreq_takes_page: bool  # a buffered ring takes a second ioreq page at creation
    created_disabled: bool  # a secondary server starts disabled
    # -- selection ------------------------------------------------------------------------
    mmio_window_df_aware: bool  # the MEMORY lookup covers the bytes a backwards rep touches
    amd_ext_families: tuple[int, int]  # CPU families (inclusive) that decode CF8[27:24]
    # -- hypercalls -----------------------------------------------------------------------
    map_start_above_end_einval: bool  # map/unmap with start > end is -EINVAL (else ASSERT)
    # -- write protection -----------------------------------------------------------------
    p2m_ioreq_server: bool  # one server claims p2m_ioreq_server pages (DMOP 15)
    set_mem_type_stale_rc: bool  # a refused page after changed ones returns 0 (4.6)
    designs: Mapping[Design, str]  # designs this release runs -> "" or a label
    sources: Mapping[str, str] = field(repr=False)

    def __post_init__(self) -> None:
        missing = sorted(set(rule_names()) - set(self.sources))
        extra = sorted(set(self.sources) - set(rule_names()))
        if missing or extra:
            raise ValueError(f"profile {self.name}: sources missing {missing}, unknown {extra}")

    @property
    def native_design(self) -> Design:
        """The design this release runs without a label (the one its interface offers)."""
        return next(d for d, label in self.designs.items() if not label)

    def describe(self) -> str:
        return f"xen {self.name} ({self.ref})"


def rule_names() -> tuple[str, ...]:
    """The fields of :class:`VersionProfile` that are rules (each needs a source)."""
    return tuple(f.name for f in fields(VersionProfile) if f.name not in ("name", "ref", "sources"))


# -- the sources, shared where releases agree --------------------------------------------
_REPS = (
    "hvmemul_linear_to_phys() and hvmemul_virtual_to_linear() clip *reps to 4096: "
    "xen/arch/x86/hvm/emulate.c @RELEASE-4.6.0 lines 424, 515-517; @RELEASE-4.9.0 "
    "lines 522, 600-623; @RELEASE-4.12.0 lines 719, 798-821; @master lines 870, 962-980"
)
_NO_PAGE_CUT = (
    "before 7626edeaca a rep MMIO request keeps its count; only the RAM side is clipped "
    "(hvmemul_do_io_addr, emulate.c @RELEASE-4.6.0 lines 282-305, @RELEASE-4.9.0 line 380)"
)
_PAGE_CUT = (
    "7626edeaca (first in RELEASE-4.12.0): hvmemul_do_io() truncates rep MMIO at the GFN "
    "boundary, emulate.c @RELEASE-4.12.0 lines 190-205, @master lines 278-293"
)
_CACHE_32 = "struct hvm_mmio_cache buffer[32], xen/include/asm-x86/hvm/vcpu.h line 53"
_CRASH_SIZE = (
    "hvm_mmio_accept(): domain_crash() if p->size > 1 and the last byte is outside, "
    "xen/arch/x86/hvm/intercept.c @RELEASE-4.6.0 lines 45-48"
)
_CRASH_LAST = "hvm_mmio_accept(): domain_crash() if last != first and the last byte is outside"
_DEFAULT = (
    "default_ioreq_server: the catch-all of hvm_select_ioreq_server(), created by "
    "hvm_create_ioreq_server(is_default) and enabled at once"
)
_NO_DEFAULT = "2c257bd69a (first in RELEASE-4.12.0) removed the default ioreq server"
_COUNTER_IDS = (
    "next_ioservid(): the previous id + 1, skipping ids in use; the default server takes one"
)
_LIST = "list_add() puts a new server at the head; the selector walks from the head"
_SLOTS = (
    "97a5a3e301 (RELEASE-4.11.0): servers in d->...ioreq_server.server[8], the lowest free "
    "slot, id = slot; FOR_EACH_IOREQ_SERVER walks from slot 7 down"
)
_PAGES = (
    "libxc provides NR_IOREQ_SERVER_PAGES = 8 ioreq pages; hvm_alloc_ioreq_gmfn() "
    "returns -ENOMEM when none is free"
)
_DISABLED = (
    "only the default server is enabled at creation; a secondary server waits for "
    "set_ioreq_server_state"
)
_WINDOW_46 = "MEMORY lookup [addr, addr + size * count - 1], df ignored: hvm_select_ioreq_server()"
_WINDOW_412 = "60a56dc006 (first in RELEASE-4.12.0): hvm_mmio_first_byte()/hvm_mmio_last_byte()"
_AMD_46 = (
    "2d67a7a4d3: d->arch.x86 >= 0x10 && <= 0x17, xen/arch/x86/hvm/hvm.c @RELEASE-4.6.0 "
    "line 2555 (and MSR_AMD64_NB_CFG bit 46)"
)
_AMD_49 = (
    "9841eb71ea (4.9.0-rc1) wrote x86_fam > 0x10 && <= 0x17, dropping family 10h: "
    "xen/arch/x86/hvm/ioreq.c"
)
_EINVAL_NO = "map/unmap only ASSERT(start <= end) (XSA-238; fixed by d59e55b018 in RELEASE-4.10.0)"
_EINVAL_YES = "d59e55b018 (RELEASE-4.10.0): -EINVAL if start > end"
_P2M_NO = "no XEN_DMOP_map_mem_type_to_ioreq_server before ca2b511d3f (RELEASE-4.9.0)"
_P2M_YES = (
    "ca2b511d3f: one claimer of p2m_ioreq_server (p2m_set_ioreq_server); set_mem_type "
    "needs a claimer; release resets every page to RAM"
)
_STALE_RC = (
    "hvmop_set_mem_type: a refused page jumps to the exit with rc as the previous page "
    "left it (0), else -EINVAL from line 6593: hvm.c @RELEASE-4.6.0 lines 6621-6627"
)
_RC_PER_PAGE = "set_mem_type(): rc = -EINVAL for the refused page"
_DESIGNS_46 = (
    "p2m_mmio_write_dm (b4986813c5) is in 4.6; wp-split is f5a32c5b8e on the 4.6-era "
    "selector, reverted by 19e5e78324: never released; p2m_ioreq_server claiming is 4.9+"
)
_DESIGNS_49 = (
    "c858e932c1 (4.7) removed HVMMEM_mmio_write_dm; cb34624af5 (4.8) renamed the type "
    "p2m_ioreq_server; ca2b511d3f (4.9) lets one server claim it"
)

_P46 = "@RELEASE-4.6.0"
_P49 = "@RELEASE-4.9.0"
_P412 = "@RELEASE-4.12.0"

#: What 4.6 and 4.9 share: the server list with its ioreq pages, and reps kept whole.
_LIST_ERA: dict[str, object] = {
    "max_reps": 4096,
    "rep_mmio_page_cut": False,
    "max_mmio_access": 32,
    "default_server": True,
    "server_ids": "counter",
    "server_order": "newest-first list",
    "server_limit": 8,
    "server_limit_errno": "ENOMEM",
    "bufioreq_takes_page": True,
    "created_disabled": True,
    "mmio_window_df_aware": False,
    "map_start_above_end_einval": False,
}
#: What 4.12 and master share: slots, no default server, reps cut at pages, the
#: direction-aware window, the p2m_ioreq_server claim.
_SLOT_ERA: dict[str, object] = {
    "max_reps": 4096,
    "rep_mmio_page_cut": True,
    "max_mmio_access": 64,
    "mmio_accept_crash": "last!=first",
    "default_server": False,
    "server_ids": "slot",
    "server_order": "slots from the top",
    "server_limit": 8,
    "server_limit_errno": "ENOSPC",
    "bufioreq_takes_page": False,
    "created_disabled": True,
    "mmio_window_df_aware": True,
    "map_start_above_end_einval": True,
    "p2m_ioreq_server": True,
    "set_mem_type_stale_rc": False,
    "designs": MappingProxyType({Design.P2M_IOREQ_SERVER: ""}),
}

PROFILES: Mapping[XenVersion, VersionProfile] = MappingProxyType(
    {
        "4.6": VersionProfile(
            name="4.6",
            ref="RELEASE-4.6.0",
            **_LIST_ERA,  # type: ignore[arg-type]
            mmio_accept_crash="size>1",
            amd_ext_families=(0x10, 0x17),
            p2m_ioreq_server=False,
            set_mem_type_stale_rc=True,
            designs=MappingProxyType(
                {
                    Design.XEN_46: "",
                    Design.WP_SPLIT: "4.6 + f5a32c5b8e, reverted by 19e5e78324: never released",
                }
            ),
            sources=MappingProxyType(
                {
                    "max_reps": _REPS,
                    "rep_mmio_page_cut": _NO_PAGE_CUT,
                    "max_mmio_access": f"{_CACHE_32} {_P46}",
                    "mmio_accept_crash": _CRASH_SIZE,
                    "default_server": f"{_DEFAULT}: xen/arch/x86/hvm/hvm.c {_P46} lines "
                    "1124-1138, 2615",
                    "server_ids": f"{_COUNTER_IDS}: hvm.c {_P46} lines 1079-1103",
                    "server_order": f"{_LIST}: hvm.c {_P46} lines 1132-1133, 2571-2573",
                    "server_limit": f"{_PAGES}: tools/libxc/xc_hvm_build_x86.c {_P46} line 51; "
                    f"hvm.c {_P46} lines 581-598",
                    "server_limit_errno": f"hvm_alloc_ioreq_gmfn(), hvm.c {_P46} line 586",
                    "bufioreq_takes_page": f"hvm_ioreq_server_setup_pages(), hvm.c {_P46} "
                    "lines 877-881",
                    "created_disabled": f"{_DISABLED}: hvm.c {_P46} lines 1135-1139",
                    "mmio_window_df_aware": f"{_WINDOW_46}, hvm.c {_P46} line 2598",
                    "amd_ext_families": _AMD_46,
                    "map_start_above_end_einval": f"{_EINVAL_NO}; hvm.c {_P46} lines 1236-1332",
                    "p2m_ioreq_server": _P2M_NO,
                    "set_mem_type_stale_rc": _STALE_RC,
                    "designs": _DESIGNS_46,
                }
            ),
        ),
        "4.9": VersionProfile(
            name="4.9",
            ref="RELEASE-4.9.0",
            **_LIST_ERA,  # type: ignore[arg-type]
            mmio_accept_crash="last!=first",
            amd_ext_families=(0x11, 0x17),
            p2m_ioreq_server=True,
            set_mem_type_stale_rc=False,
            designs=MappingProxyType({Design.P2M_IOREQ_SERVER: ""}),
            sources=MappingProxyType(
                {
                    "max_reps": _REPS,
                    "rep_mmio_page_cut": _NO_PAGE_CUT,
                    "max_mmio_access": f"{_CACHE_32} {_P49}",
                    "mmio_accept_crash": f"{_CRASH_LAST}: intercept.c {_P49} lines 44-47",
                    "default_server": f"{_DEFAULT}: xen/arch/x86/hvm/ioreq.c {_P49} lines "
                    "713-717, 1256",
                    "server_ids": f"{_COUNTER_IDS}: ioreq.c {_P49} lines 657-681",
                    "server_order": f"{_LIST}: ioreq.c {_P49} lines 710-711, 1214",
                    "server_limit": f"{_PAGES}: tools/libxc/xc_dom_x86.c {_P49} line 65; "
                    f"ioreq.c {_P49} lines 184-198",
                    "server_limit_errno": f"hvm_alloc_ioreq_gmfn(), ioreq.c {_P49} line 189",
                    "bufioreq_takes_page": f"hvm_ioreq_server_setup_pages(), ioreq.c {_P49} "
                    "lines 454-457",
                    "created_disabled": f"{_DISABLED}: ioreq.c {_P49} lines 713-717",
                    "mmio_window_df_aware": f"{_WINDOW_46}, ioreq.c {_P49} line 1239",
                    "amd_ext_families": f"{_AMD_49} {_P49} lines 1194-1198",
                    "map_start_above_end_einval": f"{_EINVAL_NO}; ioreq.c {_P49} line 816",
                    "p2m_ioreq_server": f"{_P2M_YES}: xen/arch/x86/mm/p2m.c {_P49} lines "
                    f"291-339, xen/arch/x86/hvm/dm.c {_P49} lines 254-300, 481-507",
                    "set_mem_type_stale_rc": f"{_RC_PER_PAGE}, dm.c {_P49} lines 317-318",
                    "designs": _DESIGNS_49,
                }
            ),
        ),
        "4.12": VersionProfile(
            name="4.12",
            ref="RELEASE-4.12.0",
            **_SLOT_ERA,  # type: ignore[arg-type]
            amd_ext_families=(0x11, 0x17),
            sources=MappingProxyType(
                {
                    "max_reps": _REPS,
                    "rep_mmio_page_cut": _PAGE_CUT,
                    "max_mmio_access": "struct hvm_mmio_cache buffer[64], "
                    f"xen/include/asm-x86/hvm/vcpu.h {_P412} line 52",
                    "mmio_accept_crash": f"{_CRASH_LAST}: intercept.c {_P412} lines 44-47",
                    "default_server": _NO_DEFAULT,
                    "server_ids": f"{_SLOTS}: xen/arch/x86/hvm/ioreq.c {_P412} lines 820-843",
                    "server_order": f"{_SLOTS}: ioreq.c {_P412} lines 69-72, 1307",
                    "server_limit": "MAX_NR_IOREQ_SERVERS 8, xen/include/asm-x86/hvm/domain.h "
                    f"{_P412} line 92",
                    "server_limit_errno": f"hvm_create_ioreq_server(), ioreq.c {_P412} lines "
                    "826-828",
                    "bufioreq_takes_page": "ioreq pages are allocated when the emulator maps "
                    f"them (hvm_get_ioreq_server_info, ioreq.c {_P412} line 923), not "
                    "at creation",
                    "created_disabled": f"{_DISABLED}: s->enabled is set only by "
                    f"hvm_ioreq_server_enable(), ioreq.c {_P412} line 709",
                    "mmio_window_df_aware": f"{_WINDOW_412}: ioreq.c {_P412} lines 1329-1330",
                    "amd_ext_families": f"{_AMD_49} {_P412} lines 1287-1291",
                    "map_start_above_end_einval": f"{_EINVAL_YES}: ioreq.c {_P412} lines "
                    "1007, 1059",
                    "p2m_ioreq_server": f"{_P2M_YES}: xen/arch/x86/mm/p2m.c {_P412} lines "
                    f"362-410, xen/arch/x86/hvm/dm.c {_P412} lines 220-266, 473-503",
                    "set_mem_type_stale_rc": f"{_RC_PER_PAGE}, dm.c {_P412}",
                    "designs": _DESIGNS_49,
                }
            ),
        ),
        "master": VersionProfile(
            name="master",
            ref="c447b7308b",
            **_SLOT_ERA,  # type: ignore[arg-type]
            amd_ext_families=(0x10, 0x16),
            sources=MappingProxyType(
                {
                    "max_reps": _REPS,
                    "rep_mmio_page_cut": _PAGE_CUT,
                    "max_mmio_access": "hvmemul_cache_init(): max_bytes = 64, "
                    "xen/arch/x86/hvm/emulate.c @master line 3064",
                    "mmio_accept_crash": f"{_CRASH_LAST}: intercept.c @master lines 33-37",
                    "default_server": _NO_DEFAULT,
                    "server_ids": f"{_SLOTS}: xen/common/ioreq.c @master lines 663-687",
                    "server_order": f"{_SLOTS}: xen/common/ioreq.c @master lines 90-94, 1112",
                    "server_limit": "MAX_NR_IOREQ_SERVERS 8, xen/include/xen/sched.h @master "
                    "line 374",
                    "server_limit_errno": "ioreq_server_create(), xen/common/ioreq.c @master "
                    "lines 669-671",
                    "bufioreq_takes_page": "ioreq pages are allocated when the emulator maps "
                    "or acquires them, not at creation (xen/common/ioreq.c @master)",
                    "created_disabled": f"{_DISABLED}: xen/common/ioreq.c @master line 550",
                    "mmio_window_df_aware": "ioreq_mmio_first_byte()/ioreq_mmio_last_byte(), "
                    "xen/common/ioreq.c @master lines 1133-1134",
                    "amd_ext_families": "e0fbf3bf98 (RELEASE-4.13.0): x86_fam >= 0x10 && "
                    "< 0x17, xen/arch/x86/hvm/ioreq.c @master lines 288-292",
                    "map_start_above_end_einval": f"{_EINVAL_YES}: xen/common/ioreq.c @master "
                    "lines 850, 902",
                    "p2m_ioreq_server": f"{_P2M_YES}: xen/arch/x86/mm/p2m.c @master lines "
                    "174-222, xen/arch/x86/hvm/dm.c @master lines 206-253, 397-427",
                    "set_mem_type_stale_rc": f"{_RC_PER_PAGE}, dm.c @master",
                    "designs": _DESIGNS_49,
                }
            ),
        ),
    }
)


def profile(version: str) -> VersionProfile:
    """The profile of ``version``; ValueError names the versions there are."""
    try:
        return PROFILES[version]  # type: ignore[index]
    except KeyError:
        known = ", ".join(f'"{v}"' for v in VERSIONS)
        raise ValueError(f"unknown Xen version {version!r}: use one of {known}") from None


def resolve(version: str | None, design: str | None) -> tuple[VersionProfile, Design]:
    """The profile and design a file means when it names either, both or neither.

    Neither: 4.6 with its design. A design alone: the first release that has it
    (:data:`FIRST_RELEASE`). A version alone: that release's own design. Both: they must
    go together, else ValueError says why and what would.
    """
    if version is None:
        version = FIRST_RELEASE[Design(design)] if design is not None else DEFAULT_VERSION
    prof = profile(version)
    if design is None:
        return prof, prof.native_design
    chosen = Design(design)
    if chosen not in prof.designs:
        raise ValueError(design_refusal(prof, chosen))
    return prof, chosen


def design_refusal(prof: VersionProfile, design: Design) -> str:
    """Why ``prof`` cannot run ``design``, with the source and the combination that can."""
    runs = ", ".join(sorted(prof.designs))
    if design is Design.P2M_IOREQ_SERVER:
        why = (
            "p2m-ioreq-server needs XEN_DMOP_map_mem_type_to_ioreq_server (ca2b511d3f), "
            'first in Xen 4.9: use xen "4.9" or later'
        )
    elif design is Design.XEN_46:
        why = (
            "xen-4.6 needs p2m_mmio_write_dm, removed from the interface in 4.7 "
            '(c858e932c1): use xen "4.6", or design p2m-ioreq-server'
        )
    else:
        why = (
            "wp-split (f5a32c5b8e) was reverted by 19e5e78324 and is in no release; it is "
            'modelled only on the 4.6 selector it patched: use xen "4.6"'
        )
    return f"Xen {prof.name} cannot run design {design}: {why} ({prof.name} runs {runs})"


def design_label(prof: VersionProfile, design: Design) -> str:
    """How a report names the combination: ``"xen 4.6, design wp-split (4.6 + ...)"``."""
    label = prof.designs.get(design, "")
    return f"{prof.describe()}, design {design}" + (f" ({label})" if label else "")
