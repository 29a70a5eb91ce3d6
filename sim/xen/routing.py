"""Routing one request: Xen's own emulators, the p2m_ioreq_server check, then selection.

:class:`Routing` is the part of :class:`sim.xen.ioreq.IoreqDomain` that decides where a
request goes; the stages and their sources are described in :mod:`sim.xen.ioreq`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sim.xen.abi import CF8_PORT, CFC_PORT, PAGE_SHIFT, IoreqType, RangeType
from sim.xen.intercept import Emulator, Probe
from sim.xen.profiles import Design
from sim.xen.rangeset import U64_MAX

if TYPE_CHECKING:
    from sim.xen.ioreq import IoreqDomain, IoreqServer

#: Handlers that are not servers: the null handler, a read emulated from RAM, Xen's own
#: emulators, ``X86EMUL_RETRY`` for an unclaimed p2m_ioreq_server page, and a crashed domain.
NOT_SERVERS = ("none", "ram", "xen", "retry", "crash")

# Enum members the selection uses on every request, bound once: ``RangeType.MEMORY``
# looks the member up through the enum's metaclass (~70 ns in CPython 3.11), a module
# constant costs a dict lookup.
_PIO, _COPY, _PCI_CONFIG = IoreqType.PIO, IoreqType.COPY, IoreqType.PCI_CONFIG
_PORT, _MEMORY, _PCI, _WP_MEM = RangeType.PORT, RangeType.MEMORY, RangeType.PCI, RangeType.WP_MEM
_WP_SPLIT = Design.WP_SPLIT


@dataclass(slots=True)
class Access:
    """One request as ``hvmemul_do_io()`` builds it (after :mod:`sim.xen.emulate` split it)."""

    kind: Literal["pio", "mmio"]
    addr: int
    size: int
    is_write: bool
    count: int = 1
    df: bool = False
    data: int | None = None  # a write's value; for a rep, its first element


@dataclass(slots=True)
class Route:
    """Where a request went, the request as rewritten, and what choosing cost.

    ``handler`` is a server name or one of :data:`NOT_SERVERS`. ``tried`` lists ``(server,
    nodes visited)`` per rangeset query in order; ``emulator`` names the internal handler
    that accepted the request, and ``emulators_checked`` counts the ``io_handler[]``
    entries walked. ``buffered``: sent on the server's buffered ring (stdvga VRAM writes).
    """

    handler: str
    server: IoreqServer | None
    ioreq_type: IoreqType
    addr: int
    tried: tuple[tuple[str, int], ...]
    visits: int
    p2m_lookups: int = 0
    cf8_latched: bool = False
    emulator: str | None = None
    emulators_checked: int = 0
    buffered: bool = False


class Routing:
    """The routing stages of :class:`~sim.xen.ioreq.IoreqDomain` (a mixin)."""

    def route(self: IoreqDomain, access: Access) -> Route:
        """Route one request through the three stages, with an explanation."""
        tried: list[tuple[str, int]] = []
        route = Route("none", None, IoreqType.PIO, access.addr, (), 0)
        self._route(access, tried, route)
        route.tried = tuple(tried)
        return route

    def route_fast(
        self: IoreqDomain, access: Access
    ) -> tuple[str, IoreqServer | None, int, int, int]:
        """:meth:`route` for the model's hot path, without the explanation.

        Returns ``(handler, server, visits, p2m_lookups, emulators_checked)``. One request,
        as the model's accesses are aligned single accesses (no splitting here). A request
        no emulator can take (nearly all of them) skips the walk: its count is known.
        The common case, a port or a single MMIO request that no emulator and no config
        decode takes, is :meth:`_select` flattened into this frame (the model calls this
        on every trap); ``tests/test_ioreq.py`` checks it against :meth:`route`.
        """
        internal = self.internal
        kind = access.kind
        addr = access.addr
        p2m = 0
        if kind == "pio":
            if addr in internal.ports or ((addr & ~3) == CFC_PORT and self.pci_cf8 & 0x80000000):
                return self._route_fast_general(access)
            rtype, lookup_s, lookup_e = _PORT, addr, addr + access.size - 1
        else:
            if access.df or access.count != 1 or addr >> PAGE_SHIFT in internal.pages:
                return self._route_fast_general(access)
            if self.profile.p2m_ioreq_server:
                claimed = self._p2m_route(access)
                if claimed is not None:
                    return claimed[0], claimed[1], 0, 1, internal.count
                p2m = 1
            if not self.servers:
                return "none", None, 0, p2m, internal.count
            rtype, lookup_s, lookup_e = _MEMORY, addr, addr + access.size - 1
            if self.design is _WP_SPLIT:
                p2m += 1
                if addr >> PAGE_SHIFT in self.p2m:
                    rtype = _WP_MEM
                    lookup_s = lookup_e = addr >> PAGE_SHIFT
            if lookup_s < 0 or lookup_e > U64_MAX:
                raise ValueError(f"access window [{lookup_s:#x}, {lookup_e:#x}] leaves 0..2^64-1")
        total = 0
        for server in self._search_order:
            if server.enabled:
                hit, visits = server.rangesets[rtype].query_range(lookup_s, lookup_e)
                total += visits
                if hit:
                    return server.name, server, total, p2m, internal.count
        default = self.default_server
        if default is None:
            return "none", None, total, p2m, internal.count
        return default.name, default, total, p2m, internal.count

    def _route_fast_general(
        self: IoreqDomain, access: Access
    ) -> tuple[str, IoreqServer | None, int, int, int]:
        """:meth:`route_fast` for any request: emulators, config decode, reps."""
        internal = self.internal
        if access.kind == "pio":
            hot = access.addr in internal.ports
        else:
            first = access.addr - (access.count - 1) * access.size if access.df else access.addr
            hot = first >> PAGE_SHIFT in internal.pages
        if hot:
            route = Route("none", None, IoreqType.PIO, access.addr, (), 0)
            self._route(access, None, route)
            return (
                route.handler,
                route.server,
                route.visits,
                route.p2m_lookups,
                route.emulators_checked,
            )
        if access.kind == "mmio" and self.profile.p2m_ioreq_server:
            claimed = self._p2m_route(access)
            if claimed is not None:
                return claimed[0], claimed[1], 0, 1, internal.count
            handler, server, _, _, visits, p2m = self._select(access, None)
            return handler, server, visits, p2m + 1, internal.count
        handler, server, _, _, visits, p2m = self._select(access, None)
        return handler, server, visits, p2m, internal.count

    def _route(
        self: IoreqDomain, access: Access, tried: list[tuple[str, int]] | None, route: Route
    ) -> None:
        route.ioreq_type = IoreqType.PIO if access.kind == "pio" else IoreqType.COPY
        internal = self.internal
        if internal.might_accept(access.kind, self._first_byte(access)):
            probe = Probe(
                access.kind, access.addr, access.size, access.count, access.df, access.is_write
            )
            emulator, walked, crashed = internal.scan(probe, self._vga_accepts)
            route.emulators_checked = walked
            if emulator is not None and self._intercepted(access, emulator, crashed, tried, route):
                return
        else:
            route.emulators_checked = internal.count
        if access.kind == "mmio" and self.profile.p2m_ioreq_server:
            route.p2m_lookups += 1
            claimed = self._p2m_route(access)
            if claimed is not None:
                route.handler, route.server = claimed
                return
        self._select_into(access, tried, route)

    def _p2m_route(self: IoreqDomain, access: Access) -> tuple[str, IoreqServer | None] | None:
        """From 4.9 (emulate.c @RELEASE-4.9.0 lines 236-266): an MMIO request to a
        ``p2m_ioreq_server`` page goes to the claimer, with no rangeset lookup; its read
        half of a read-modify-write is emulated from RAM; with no claimer it is retried.
        None for any other request (one p2m type query was made for every MMIO one)."""
        if (
            access.kind != "mmio"
            or not self.profile.p2m_ioreq_server
            or access.addr >> PAGE_SHIFT not in self.p2m
        ):
            return None
        claimer = self.p2m_claimer
        if claimer is None:
            return "retry", None  # a race with an unmap: X86EMUL_RETRY
        if not access.is_write:
            return "ram", None
        return claimer.name, claimer

    @staticmethod
    def _first_byte(access: Access) -> int:
        if access.kind == "mmio" and access.df:
            return access.addr - (access.count - 1) * access.size
        return access.addr

    def _intercepted(
        self: IoreqDomain,
        access: Access,
        emulator: Emulator,
        crashed: bool,
        tried: list[tuple[str, int]] | None,
        route: Route,
    ) -> bool:
        """Run the accepting emulator; True if that settled the request."""
        route.emulator = emulator.name
        if crashed:
            route.handler = "crash"  # accepted the first byte, not the last: domain_crash()
            return True
        if emulator.behaviour == "emulate":
            route.handler = "xen"
            return True
        if emulator.behaviour == "decline":
            if emulator.first == CF8_PORT:
                self._latch_cf8(access, route)
            return False  # X86EMUL_UNHANDLEABLE: on to the servers
        if not access.is_write:
            route.handler = "xen"  # a read from Xen's VRAM copy (stdvga_mem_read)
            return True
        # VGA memory, a single write: stdvga_mem_write() selects a server and sends the
        # write buffered (stdvga.c @RELEASE-4.6.0 lines 482-487). Without a buffered ring
        # that fails and hvmemul_do_io() selects again for a synchronous send.
        self._select_into(access, tried, route)
        if route.server is not None and route.server.bufioreq:
            route.buffered = True
            return True
        return False

    def _vga_accepts(self: IoreqDomain, emulator: Emulator, probe: Probe) -> bool:
        """``stdvga_mem_accept()`` (stdvga.c @RELEASE-4.6.0 lines 490-535; @master 71-84)."""
        if self.profile.name == "master":
            return probe.is_write and probe.count == 1
        if probe.is_write:
            if probe.count > 1:
                self.stdvga_cache = False  # a rep write leaves caching mode (line 518-522)
                return False
            return True
        return self.stdvga_cache

    def _latch_cf8(self: IoreqDomain, access: Access, route: Route) -> None:
        """``hvm_access_cf8`` (hvm.c @RELEASE-4.6.0 line 689): a 4-byte write is latched.

        For a rep OUTSD the intercept loop writes the first element, which the handler
        latches, and stops (intercept.c @4.6 lines 163-199): ``data`` is that element.
        """
        if access.is_write and access.size == 4 and access.data is not None:
            self.pci_cf8 = access.data & 0xFFFFFFFF
            route.cf8_latched = True

    def _select_into(
        self: IoreqDomain, access: Access, tried: list[tuple[str, int]] | None, route: Route
    ) -> None:
        """:meth:`_select`, adding its outcome and cost to ``route``."""
        handler, server, ioreq_type, addr, visits, p2m = self._select(access, tried)
        route.handler, route.server = handler, server
        route.ioreq_type, route.addr = ioreq_type, addr
        route.visits += visits
        route.p2m_lookups += p2m

    def _select(
        self: IoreqDomain, access: Access, tried: list[tuple[str, int]] | None
    ) -> tuple[str, IoreqServer | None, IoreqType, int, int, int]:
        """``hvm_select_ioreq_server()``: the release's order, first match wins.

        Returns ``(handler, server, ioreq type, address, nodes visited, p2m lookups)``
        and appends ``(server, visits)`` to ``tried`` if given.
        """
        addr = access.addr
        p2m = 0
        if not self.servers:
            ioreq_type = _PIO if access.kind == "pio" else _COPY
            return "none", None, ioreq_type, addr, 0, 0
        if access.kind == "pio":
            ioreq_type = _PIO
            cf8 = self.pci_cf8
            if (addr & ~3) == CFC_PORT and cf8 & 0x80000000:
                # Config-space decode; sbdf << 32 | register, segment 0.
                bdf = (cf8 & 0x00FFFF00) >> 8  # CF8_BDF: bus[15:8] dev[7:3] fn[2:0]
                reg = (cf8 & 0xFC) | (addr & 3)  # CF8_ADDR_LO | port offset
                ext = (cf8 & 0x0F000000) >> 16  # CF8_ADDR_HI: bits 27:24 -> 11:8
                if ext and self.amd_ext:
                    reg |= ext
                rtype, lookup_s, lookup_e = _PCI, bdf, bdf
                rewritten = (bdf << 32) | reg
            else:
                rtype, lookup_s, lookup_e, rewritten = (
                    _PORT,
                    addr,
                    addr + access.size - 1,
                    addr,
                )
        else:
            ioreq_type = _COPY
            rtype, rewritten = _MEMORY, addr
            if access.df and self.profile.mmio_window_df_aware:
                # hvm_mmio_first_byte/last_byte (60a56dc006, RELEASE-4.12.0).
                lookup_s = addr - (access.count - 1) * access.size
                lookup_e = addr + access.size - 1
            else:
                # 4.6 and 4.9 ignore df: [addr, addr + size*count - 1].
                lookup_s = addr
                lookup_e = addr + access.size * access.count - 1
            if self.design is _WP_SPLIT:
                # f5a32c5b8e: get_page_from_gfn(PFN_DOWN(addr)); a p2m_mmio_write_dm page
                # is looked up as a gfn singleton in WP_MEM instead of MEMORY.
                p2m = 1
                if addr >> PAGE_SHIFT in self.p2m:
                    rtype = _WP_MEM
                    lookup_s = lookup_e = addr >> PAGE_SHIFT
            if lookup_s < 0 or lookup_e > U64_MAX:
                raise ValueError(f"access window [{lookup_s:#x}, {lookup_e:#x}] leaves 0..2^64-1")
        total = 0
        for server in self._search_order:
            if not server.enabled:
                continue
            hit, visits = server.rangesets[rtype].query_range(lookup_s, lookup_e)
            if tried is not None:
                tried.append((server.name, visits))
            total += visits
            if hit:
                if rtype is _PCI:
                    # The request is rewritten in place into a config-space access.
                    return server.name, server, _PCI_CONFIG, rewritten, total, p2m
                return server.name, server, ioreq_type, addr, total, p2m
        # The default server (until 4.11) gets the request unrewritten, else the null handler.
        default = self.default_server
        if default is None:
            return "none", None, ioreq_type, addr, total, p2m
        return default.name, default, ioreq_type, addr, total, p2m
