"""ioreq servers and how Xen routes a trapped access to one of them.

Selection reproduces Xen 4.6's ``hvm_select_ioreq_server()`` (``xen/arch/x86/hvm/hvm.c``
@RELEASE-4.6.0, lines 2519-2605), the routing around it in ``hvmemul_do_io()``
(``xen/arch/x86/hvm/emulate.c`` @4.6, from line 96), and the hypercalls that fill the
rangesets (``hvm_map_io_range_to_ioreq_server`` / ``hvm_unmap_...``, hvm.c @4.6, lines
1236-1332). Section numbers refer to ``shared/reference/xen-semantics.md``.

Three designs for write-protected (PPGTT) guest pages are strategies chosen per domain:

``xen-4.6``
    What 2015 XenGT did on Xen 4.6 (``intel/XenGT-Preview-kernel`` ``xengt.c``,
    ``hvm_wp_page_to_ioreq_server``): each page's byte range goes into the server's
    MEMORY rangeset, shared with the BARs; neighbours merge. The page's p2m type becomes
    ``p2m_mmio_write_dm`` (b4986813c5), so a guest write exits as MMIO and is routed by
    the MEMORY lookup.
``wp-split``
    Patch 2 of the 2015 series, f5a32c5b8e (committed 2016-01-29, **reverted** by
    19e5e78324 on 2016-02-17, never in a release): a separate gfn-keyed ``WP_MEM``
    rangeset. The selector looks up the p2m type of ``addr >> 12`` for every MMIO access
    and, for a write-protected page, checks ``contains_singleton(gfn)`` in WP_MEM only.
``p2m-ioreq-server``
    Upstream's answer, Xen 4.9+ (ca2b511d3f, ``XEN_DMOP_map_mem_type_to_ioreq_server``):
    page membership lives in the p2m type ``p2m_ioreq_server``; one server claims the
    type, and a write to such a page goes to it with no rangeset lookup. Reads of such
    a page are emulated by Xen from RAM (``hvmemul_do_io``, emulate.c @master, line 211).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from sim.xen.abi import (
    CF8_PORT,
    CFC_PORT,
    MAX_NR_IO_RANGES,
    PAGE_SHIFT,
    IoreqType,
    P2mType,
    RangeType,
)
from sim.xen.rangeset import U64_MAX, Rangeset, RangesetImpl


class Design(StrEnum):
    XEN_46 = "xen-4.6"
    WP_SPLIT = "wp-split"
    P2M_IOREQ_SERVER = "p2m-ioreq-server"


class HypercallError(Exception):
    """A map/unmap/claim hypercall that Xen would refuse, with its errno name."""

    def __init__(self, errno_name: str, message: str, visits: int = 0) -> None:
        super().__init__(f"-{errno_name}: {message}")
        self.errno_name = errno_name
        self.visits = visits


@dataclass(slots=True)
class Access:
    """A trapped guest access, as ``hvmemul_do_io()`` builds its ioreq."""

    kind: Literal["pio", "mmio"]
    addr: int
    size: int
    is_write: bool
    count: int = 1
    df: bool = False
    data: int | None = None


class IoreqServer:
    """One ioreq server: a name, an enabled flag and one rangeset per range type."""

    __slots__ = ("enabled", "id", "is_default", "name", "rangesets")

    def __init__(
        self,
        name: str,
        server_id: int,
        impl: RangesetImpl,
        limit: int | None,
        *,
        is_default: bool = False,
        enabled: bool = True,
        wp_mem: bool = False,
    ) -> None:
        self.name = name
        self.id = server_id
        self.is_default = is_default
        self.enabled = enabled
        # hvm_ioreq_server_alloc_rangesets() (hvm.c @4.6, line 926 onward) names them
        # "ioreq_server <id> port|memory|pci" and applies rangeset_limit() to each.
        types = [RangeType.PORT, RangeType.MEMORY, RangeType.PCI]
        if wp_mem:
            types.append(RangeType.WP_MEM)
        self.rangesets: dict[RangeType, Rangeset] = {
            t: Rangeset(impl, limit, name=f"ioreq_server {server_id} {t.name.lower()}")
            for t in types
        }

    def __repr__(self) -> str:
        return f"IoreqServer({self.name!r}, id={self.id})"


@dataclass(slots=True)
class Route:
    """Where a trapped access went, the request as rewritten, and what choosing cost.

    ``handler`` is a server name, ``"none"`` for Xen's null handler (reads all-ones,
    writes dropped) or ``"ram"`` for a p2m_ioreq_server read that Xen emulates itself.
    ``tried`` lists ``(server name, nodes visited)`` for each rangeset query, in order.
    """

    handler: str
    server: IoreqServer | None
    ioreq_type: IoreqType
    addr: int
    tried: tuple[tuple[str, int], ...]
    visits: int
    p2m_lookups: int = 0
    cf8_latched: bool = False


@dataclass
class IoreqDomain:
    """The ioreq state of one guest domain: its servers, p2m types and latched CF8.

    ``vendor="amd"`` stands for an AMD family 10h-17h host whose ``MSR_AMD64_NB_CFG`` has
    bit 46 set, the condition under which 4.6 decodes extended config registers
    (2d67a7a4d3). ``mmio_window="xen-4.12"`` uses the direction-aware window of
    60a56dc006 instead of 4.6's, which ignores ``df``.
    """

    design: Design = Design.XEN_46
    impl: RangesetImpl = "list"
    max_nr_io_ranges: int | None = MAX_NR_IO_RANGES
    vendor: Literal["intel", "amd"] = "intel"
    mmio_window: Literal["xen-4.6", "xen-4.12"] = "xen-4.6"
    servers: list[IoreqServer] = field(default_factory=list)  # creation order
    default_server: IoreqServer | None = None
    p2m: dict[int, P2mType] = field(default_factory=dict)  # gfn -> type; RAM_RW if absent
    p2m_claimer: IoreqServer | None = None
    pci_cf8: int = 0

    def __post_init__(self) -> None:
        self.design = Design(self.design)
        # Newest server first: hvm_create_ioreq_server() uses list_add() (hvm.c @4.6,
        # line 1132). Kept as a reversed copy so selection never re-sorts.
        self._search_order: list[IoreqServer] = []

    # -- server life cycle ---------------------------------------------------------------
    def create_server(
        self, name: str, *, default: bool = False, enabled: bool = True
    ) -> IoreqServer:
        if any(s.name == name for s in self.servers):
            raise ValueError(f"duplicate ioreq server name {name!r}")
        if default and self.default_server is not None:
            raise ValueError("a domain has at most one default ioreq server")
        if default and not enabled:
            # 4.6's hvm_set_ioreq_server_state() finds servers by id among the non-default
            # ones only (hvm.c @4.6), so the default server is always enabled.
            raise ValueError("the default ioreq server cannot be disabled")
        server = IoreqServer(
            name,
            len(self.servers),
            self.impl,
            self.max_nr_io_ranges,
            is_default=default,
            enabled=enabled,
            wp_mem=self.design is Design.WP_SPLIT,
        )
        self.servers.append(server)
        if default:
            self.default_server = server
        self._search_order = [s for s in reversed(self.servers) if not s.is_default]
        return server

    # -- hypercalls ------------------------------------------------------------------------
    # Each hypercall has a return-code core (the model's hot path: no exceptions) and a
    # raising wrapper for users and tests. Errno names follow Xen's return values.

    def map_io_range_rc(
        self, server: IoreqServer, rtype: RangeType, s: int, e: int
    ) -> tuple[str | None, int]:
        """``HVMOP_map_io_range_to_ioreq_server``: ``(errno name or None, nodes visited)``.

        ``EEXIST`` when ``[s, e]`` overlaps a range already in that set, else the result
        of ``rangeset_add_range()`` (``ENOMEM`` at the limit). Visits: one ``find_range``
        for the overlap check and two for the add (xen-semantics.md §6).
        """
        r, rc = self._rangeset_rc(server, rtype, s, e)
        if r is None:
            return rc, 0
        _, overlaps, visits_s, visits_e = r.probe(s, e)
        if overlaps:
            return "EEXIST", visits_e
        visits = visits_e + visits_s + visits_e
        return (None if r.try_add_range(s, e) else "ENOMEM"), visits

    def unmap_io_range_rc(
        self, server: IoreqServer, rtype: RangeType, s: int, e: int
    ) -> tuple[str | None, int]:
        """``HVMOP_unmap_io_range_from_ioreq_server``: ``(errno name or None, visits)``.

        ``ENOENT`` unless ``[s, e]`` lies inside one range; a split can still fail with
        ``ENOMEM``. Visits: ``find_range(s)`` for the check, two for the remove.
        """
        r, rc = self._rangeset_rc(server, rtype, s, e)
        if r is None:
            return rc, 0
        contains, _, visits_s, visits_e = r.probe(s, e)
        if not contains:
            return "ENOENT", visits_s
        visits = visits_s + visits_s + visits_e
        return (None if r.try_remove_range(s, e) else "ENOMEM"), visits

    def map_io_range(self, server: IoreqServer, rtype: RangeType, s: int, e: int) -> int:
        """:meth:`map_io_range_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.map_io_range_rc(server, rtype, s, e)
        if rc is not None:
            raise HypercallError(rc, f"map [{s:#x}, {e:#x}] {rtype.name} of {server.name}", visits)
        return visits

    def unmap_io_range(self, server: IoreqServer, rtype: RangeType, s: int, e: int) -> int:
        """:meth:`unmap_io_range_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.unmap_io_range_rc(server, rtype, s, e)
        if rc is not None:
            raise HypercallError(
                rc, f"unmap [{s:#x}, {e:#x}] {rtype.name} of {server.name}", visits
            )
        return visits

    def _rangeset_rc(
        self, server: IoreqServer, rtype: RangeType, s: int, e: int
    ) -> tuple[Rangeset | None, str | None]:
        if s > e or s < 0 or e > U64_MAX:
            # 4.6 only ASSERTs s <= e; -EINVAL since the XSA-238 fix d59e55b018 (4.10).
            return None, "EINVAL"
        if server.is_default:
            # hvm_map_io_range_to_ioreq_server() looks the id up among the non-default
            # servers only (hvm.c @4.6), so the default server is "not found".
            return None, "ENOENT"
        r = server.rangesets.get(rtype)
        if r is None:
            return None, "EINVAL"  # a range type this design does not have
        return r, None

    # -- write protection of guest page-table pages (strategy by design) -------------
    def write_protect_rc(
        self, server: IoreqServer, first_gfn: int, last_gfn: int
    ) -> tuple[str | None, int]:
        """Write-protect guest pages ``first_gfn..last_gfn`` for ``server``.

        Returns ``(errno name or None, visits)``. On failure the pages keep their RAM
        type, so guest writes to them are not trapped.
        """
        if first_gfn > last_gfn:
            return "EINVAL", 0
        design = self.design
        if design is Design.XEN_46:
            rc, visits = self.map_io_range_rc(
                server,
                RangeType.MEMORY,
                first_gfn << PAGE_SHIFT,
                ((last_gfn + 1) << PAGE_SHIFT) - 1,
            )
        elif design is Design.WP_SPLIT:
            rc, visits = self.map_io_range_rc(server, RangeType.WP_MEM, first_gfn, last_gfn)
        else:
            # XEN_DMOP_map_mem_type_to_ioreq_server: one claimer only (ca2b511d3f;
            # p2m_set_ioreq_server() returns -EBUSY to a second server).
            if self.p2m_claimer is None:
                self.p2m_claimer = server
            elif self.p2m_claimer is not server:
                return "EBUSY", 0
            rc, visits = None, 0
        if rc is None:
            p2m = self.p2m
            for gfn in range(first_gfn, last_gfn + 1):
                p2m[gfn] = P2mType.WRITE_DM
        return rc, visits

    def unprotect_rc(
        self, server: IoreqServer, first_gfn: int, last_gfn: int
    ) -> tuple[str | None, int]:
        """Give pages back to RAM and drop them from the design's tracking.

        The p2m type is reset first, so even when the unmap fails (``ENOMEM`` on a split
        at the limit) the page is writable again; the stale range stays in the set.
        """
        p2m = self.p2m
        for gfn in range(first_gfn, last_gfn + 1):
            p2m.pop(gfn, None)
        if self.design is Design.XEN_46:
            return self.unmap_io_range_rc(
                server,
                RangeType.MEMORY,
                first_gfn << PAGE_SHIFT,
                ((last_gfn + 1) << PAGE_SHIFT) - 1,
            )
        if self.design is Design.WP_SPLIT:
            return self.unmap_io_range_rc(server, RangeType.WP_MEM, first_gfn, last_gfn)
        return None, 0

    def write_protect(self, server: IoreqServer, first_gfn: int, last_gfn: int) -> int:
        """:meth:`write_protect_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.write_protect_rc(server, first_gfn, last_gfn)
        if rc is not None:
            raise HypercallError(
                rc, f"write-protect gfns {first_gfn:#x}..{last_gfn:#x} for {server.name}", visits
            )
        return visits

    def unprotect(self, server: IoreqServer, first_gfn: int, last_gfn: int) -> int:
        """:meth:`unprotect_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.unprotect_rc(server, first_gfn, last_gfn)
        if rc is not None:
            raise HypercallError(
                rc, f"unprotect gfns {first_gfn:#x}..{last_gfn:#x} of {server.name}", visits
            )
        return visits

    def is_write_protected(self, gfn: int) -> bool:
        return gfn in self.p2m

    # -- routing ---------------------------------------------------------------------------
    def route(self, access: Access) -> Route:
        """Route one trapped access the way ``hvmemul_do_io()`` does, with an explanation.

        1. The internal port handler ``hvm_access_cf8`` (hvm.c @4.6, line 689) latches
           CF8 on a 4-byte write to 0xcf8 and then declines, so the write is forwarded.
        2. Under ``p2m-ioreq-server``, an MMIO access to a ``p2m_ioreq_server`` page goes
           to the claiming server (writes) or is emulated from RAM (reads), with no
           rangeset lookup (emulate.c @master, ``hvmemul_do_io``, line 211).
        3. Otherwise ``hvm_select_ioreq_server()``; with no server, the null handler.
        """
        tried: list[tuple[str, int]] = []
        latched = self._latch_cf8(access)
        handler, server, ioreq_type, addr, visits, p2m = self._route(access, tried)
        return Route(handler, server, ioreq_type, addr, tuple(tried), visits, p2m, latched)

    def route_fast(self, access: Access) -> tuple[str, IoreqServer | None, int, int]:
        """:meth:`route` for the model's hot path: ``(handler, server, visits, p2m_lookups)``."""
        if access.kind == "pio":
            self._latch_cf8(access)
        handler, server, _, _, visits, p2m = self._route(access, None)
        return handler, server, visits, p2m

    def select_ioreq_server(self, access: Access) -> Route:
        """``hvm_select_ioreq_server(d, p)`` alone (hvm.c @RELEASE-4.6.0, lines 2519-2605)."""
        tried: list[tuple[str, int]] = []
        handler, server, ioreq_type, addr, visits, p2m = self._select(access, tried)
        return Route(handler, server, ioreq_type, addr, tuple(tried), visits, p2m)

    def _latch_cf8(self, access: Access) -> bool:
        if (
            access.kind == "pio"
            and access.addr == CF8_PORT
            and access.size == 4
            and access.is_write
            and access.data is not None
        ):
            self.pci_cf8 = access.data & 0xFFFFFFFF
            return True
        return False

    def _route(
        self, access: Access, tried: list[tuple[str, int]] | None
    ) -> tuple[str, IoreqServer | None, IoreqType, int, int, int]:
        if access.kind == "mmio" and self.design is Design.P2M_IOREQ_SERVER:
            # One p2m type query for every MMIO access, before any selection.
            if self.p2m.get(access.addr >> PAGE_SHIFT) is P2mType.WRITE_DM:
                if not access.is_write:
                    return "ram", None, IoreqType.COPY, access.addr, 0, 1
                # With no claimer Xen 4.9+ returns X86EMUL_RETRY; unreachable here, as
                # pages only get this type through write_protect(), which claims first.
                claimer = self.p2m_claimer
                name = claimer.name if claimer is not None else "none"
                return name, claimer, IoreqType.COPY, access.addr, 0, 1
            handler, server, ioreq_type, addr, visits, p2m = self._select(access, tried)
            return handler, server, ioreq_type, addr, visits, p2m + 1
        return self._select(access, tried)

    def _select(
        self, access: Access, tried: list[tuple[str, int]] | None
    ) -> tuple[str, IoreqServer | None, IoreqType, int, int, int]:
        """The selection proper; appends ``(server, visits)`` to ``tried`` if given."""
        if not self.servers:
            # Step 1: no ioreq servers at all -> NULL -> null handler.
            ioreq_type = IoreqType.PIO if access.kind == "pio" else IoreqType.COPY
            return "none", None, ioreq_type, access.addr, 0, 0
        p2m_lookups = 0
        cf8 = self.pci_cf8
        if access.kind == "pio":
            ioreq_type = IoreqType.PIO
            if (access.addr & ~3) == CFC_PORT and cf8 & 0x80000000:
                # Step 3: config-space decode; sbdf << 32 | register, segment 0.
                bdf = (cf8 & 0x00FFFF00) >> 8  # CF8_BDF: bus[15:8] dev[7:3] fn[2:0]
                reg = (cf8 & 0xFC) | (access.addr & 3)  # CF8_ADDR_LO | port offset
                ext = (cf8 & 0x0F000000) >> 16  # CF8_ADDR_HI: bits 27:24 -> 11:8
                if ext and self.vendor == "amd":
                    reg |= ext
                rtype = RangeType.PCI
                lookup_s = lookup_e = bdf
                rewritten_addr = (bdf << 32) | reg
            else:
                rtype = RangeType.PORT
                lookup_s = access.addr
                lookup_e = access.addr + access.size - 1
                rewritten_addr = access.addr
        else:
            ioreq_type = IoreqType.COPY
            rtype = RangeType.MEMORY
            rewritten_addr = access.addr
            if self.mmio_window == "xen-4.12" and access.df:
                # hvm_mmio_first_byte/last_byte (60a56dc006, RELEASE-4.12.0).
                lookup_s = access.addr - (access.count - 1) * access.size
                lookup_e = access.addr + access.size - 1
            else:
                # 4.6 ignores df: [addr, addr + size*count - 1].
                lookup_s = access.addr
                lookup_e = access.addr + access.size * access.count - 1
            if self.design is Design.WP_SPLIT:
                # f5a32c5b8e: get_page_from_gfn(PFN_DOWN(addr)); a p2m_mmio_write_dm page
                # is looked up as a gfn singleton in WP_MEM instead of MEMORY.
                p2m_lookups = 1
                if self.p2m.get(access.addr >> PAGE_SHIFT) is P2mType.WRITE_DM:
                    rtype = RangeType.WP_MEM
                    lookup_s = lookup_e = access.addr >> PAGE_SHIFT
        if lookup_s < 0 or lookup_e > U64_MAX:
            raise ValueError(f"access window [{lookup_s:#x}, {lookup_e:#x}] leaves 0..2^64-1")

        # Step 5: newest server first; default and disabled servers are skipped.
        total = 0
        for server in self._search_order:
            if not server.enabled:
                continue
            hit, visits = server.rangesets[rtype].query_range(lookup_s, lookup_e)
            if tried is not None:
                tried.append((server.name, visits))
            total += visits
            if hit:
                if rtype is RangeType.PCI:
                    # The request is rewritten in place into a config-space access.
                    return (
                        server.name,
                        server,
                        IoreqType.PCI_CONFIG,
                        rewritten_addr,
                        total,
                        p2m_lookups,
                    )
                return server.name, server, ioreq_type, access.addr, total, p2m_lookups
        # Step 6: the default server, unrewritten (an unmatched config cycle stays a PIO).
        default = self.default_server
        name = default.name if default is not None else "none"
        return name, default, ioreq_type, access.addr, total, p2m_lookups

    def range_count(self, server: IoreqServer) -> int:
        """Nodes across all of a server's rangesets."""
        return sum(len(r) for r in server.rangesets.values())
