"""ioreq servers and how Xen routes a trapped request to one of them, release by release.

One request goes through three stages (``hvmemul_do_io()``, xen/arch/x86/hvm/emulate.c
@RELEASE-4.6.0 from line 96; @master from line 211):

1. Xen's own emulators (:mod:`sim.xen.intercept`): LAPIC, IO-APIC, HPET, PIT, RTC, ...
   A request one of them accepts never reaches a server (handler ``"xen"``).
2. From 4.9, an MMIO request to a ``p2m_ioreq_server`` page goes to the server that claims
   the type with no rangeset lookup, is emulated from RAM if it is a read (handler
   ``"ram"``), or is retried if nobody claims the type (``"retry"``): emulate.c
   @RELEASE-4.9.0 lines 238-265, @RELEASE-4.12.0 lines 260-290.
3. ``hvm_select_ioreq_server()`` (xen/arch/x86/hvm/hvm.c @RELEASE-4.6.0 lines 2519-2615;
   ioreq.c from 4.7; ``ioreq_server_select``, xen/common/ioreq.c @master line 1100):
   servers are asked in the release's order, disabled ones skipped, first match wins; then
   the default server (until 4.11), else the null handler (reads all-ones, writes dropped).

What differs between releases is a :class:`~sim.xen.profiles.VersionProfile`; the
designs for write-protected pages and their hypercalls are in :mod:`sim.xen.memtypes`:

``xen-4.6``
    2015 XenGT on Xen 4.6 (``intel/XenGT-Preview-kernel`` ``xengt.c``,
    ``hvm_wp_page_to_ioreq_server``): each page's byte range goes into the server's
    MEMORY rangeset, shared with the BARs, and the page becomes ``p2m_mmio_write_dm``
    (b4986813c5), so a guest write exits as MMIO and is routed by the MEMORY lookup.
``wp-split``
    f5a32c5b8e (reverted by 19e5e78324, never released): a separate gfn-keyed WP_MEM
    rangeset; the selector looks up the p2m type of ``addr >> 12`` for every MMIO request.
``p2m-ioreq-server``
    Xen 4.9+ (ca2b511d3f): membership is the p2m type; one server claims it (stage 2).
"""

from __future__ import annotations

from typing import Literal

from sim.xen.abi import MAX_NR_IO_RANGES, RangeType
from sim.xen.intercept import InternalHandlers
from sim.xen.memtypes import HypercallError, MemTypes
from sim.xen.profiles import Design, VersionProfile, resolve
from sim.xen.rangeset import U64_MAX, Rangeset, RangesetImpl
from sim.xen.routing import NOT_SERVERS, Access, Route, Routing

__all__ = [
    "NOT_SERVERS",
    "Access",
    "Design",
    "HypercallError",
    "IoreqDomain",
    "IoreqServer",
    "Route",
]


class IoreqServer:
    """One ioreq server: its Xen id, an enabled flag and one rangeset per range type."""

    __slots__ = ("bufioreq", "enabled", "id", "is_default", "live", "name", "rangesets")

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
        bufioreq: bool = False,
    ) -> None:
        self.name = name
        self.id = server_id
        self.is_default = is_default
        self.enabled = enabled
        self.bufioreq = bufioreq or is_default  # the default server must have a ring
        self.live = True
        # hvm_ioreq_server_alloc_rangesets() (hvm.c @4.6, line 926 onward) names them
        # "ioreq_server <id> port|memory|pci"; the default server has none.
        types = [] if is_default else [RangeType.PORT, RangeType.MEMORY, RangeType.PCI]
        if wp_mem and not is_default:
            types.append(RangeType.WP_MEM)
        self.rangesets: dict[RangeType, Rangeset] = {
            t: Rangeset(impl, limit, name=f"ioreq_server {server_id} {t.name.lower()}")
            for t in types
        }

    def __repr__(self) -> str:
        return f"IoreqServer({self.name!r}, id={self.id})"


class IoreqDomain(Routing, MemTypes):
    """The ioreq state of one guest domain under one Xen release.

    ``version`` picks the :class:`~sim.xen.profiles.VersionProfile`; ``design`` defaults to
    that release's own. ``vendor="amd"`` is an AMD host of family ``amd_family`` whose
    ``MSR_AMD64_NB_CFG`` has bit 46 set (2d67a7a4d3). ``acpi`` and ``stdvga_cache`` are the
    domain options :mod:`sim.xen.intercept` describes.
    """

    def __init__(
        self,
        design: Design | str | None = None,
        impl: RangesetImpl = "list",
        max_nr_io_ranges: int | None = MAX_NR_IO_RANGES,
        vendor: Literal["intel", "amd"] = "intel",
        version: str | None = None,
        *,
        amd_family: int = 0x15,
        acpi: bool = True,
        stdvga_cache: bool = False,
    ) -> None:
        self.profile: VersionProfile
        self.profile, self.design = resolve(version, None if design is None else str(design))
        self.impl: RangesetImpl = impl
        self.max_nr_io_ranges = max_nr_io_ranges
        self.vendor = vendor
        low, high = self.profile.amd_ext_families
        self.amd_ext = vendor == "amd" and low <= amd_family <= high
        self.stdvga_cache = stdvga_cache
        self.internal = InternalHandlers(self.profile, acpi)
        self.servers: list[IoreqServer] = []  # live servers, in creation order
        self.default_server: IoreqServer | None = None
        self.p2m: dict[int, int] = {}  # gfn -> P2mType.WRITE_DM; p2m_ram_rw when absent
        self.p2m_claimer: IoreqServer | None = None
        self.pci_cf8 = 0
        self._search_order: list[IoreqServer] = []
        self._next_id = 0  # next_ioservid()'s counter (4.6, 4.9)
        self._free_pages = self.profile.server_limit  # ioreq pages from libxc (4.6, 4.9)

    # -- server life cycle ---------------------------------------------------------------
    def create_server_rc(
        self, name: str, *, default: bool = False, bufioreq: bool = False
    ) -> tuple[str | None, IoreqServer | None]:
        """``create_ioreq_server``: ``(errno name or None, the server)``, created disabled.

        4.6/4.9: ids from ``next_ioservid()``, an ioreq page each (two with a buffered
        ring) out of 8, else -ENOMEM (the id is used up all the same); a second default
        server is -EEXIST. 4.12+: the lowest free of 8 slots, else -ENOSPC. Only the
        default server is enabled at once.
        """
        prof = self.profile
        if any(s.name == name for s in self.servers):
            raise ValueError(f"duplicate ioreq server name {name!r}")
        if default and not prof.default_server:
            raise ValueError(f"Xen {prof.name} has no default ioreq server (2c257bd69a)")
        if default and self.default_server is not None:
            return "EEXIST", None
        if prof.server_ids == "slot":
            used = {s.id for s in self.servers}
            free = [i for i in range(prof.server_limit) if i not in used]
            if not free:
                return prof.server_limit_errno, None
            server_id = free[0]
        else:
            # next_ioservid() is an argument of hvm_ioreq_server_init(), so a create that
            # then runs out of ioreq pages has used up its id (hvm.c @4.6 lines 1127-1130).
            server_id = self._next_ioservid()
            pages = 0 if default else 1 + (bufioreq and prof.bufioreq_takes_page)
            if pages > self._free_pages:
                return prof.server_limit_errno, None
            self._free_pages -= pages
        server = IoreqServer(
            name,
            server_id,
            self.impl,
            self.max_nr_io_ranges,
            is_default=default,
            enabled=default,
            wp_mem=self.design is Design.WP_SPLIT,
            bufioreq=bufioreq,
        )
        self.servers.append(server)
        if default:
            self.default_server = server
        self._reorder()
        return None, server

    def create_server(
        self, name: str, *, default: bool = False, enabled: bool = True, bufioreq: bool = False
    ) -> IoreqServer:
        """Create (raising :class:`HypercallError`) and, unless ``enabled=False``, enable.

        Xen creates a secondary server disabled (``created_disabled``); this convenience
        enables it as a device model does next. The default server cannot be disabled.
        """
        if default and not enabled:
            raise ValueError("the default ioreq server cannot be disabled")
        rc, server = self.create_server_rc(name, default=default, bufioreq=bufioreq)
        if rc is not None or server is None:
            raise HypercallError(rc or "EINVAL", f"create ioreq server {name!r}")
        server.enabled = True if default else enabled
        return server

    def _next_ioservid(self) -> int:
        """``next_ioservid()``: the previous id + 1 (u16), skipping ids in use."""
        used = {s.id for s in self.servers}
        server_id = self._next_id
        while True:
            server_id = (server_id + 1) & 0xFFFF
            if server_id not in used:
                self._next_id = server_id
                return server_id

    def _reorder(self) -> None:
        secondary = [s for s in self.servers if not s.is_default]
        if self.profile.server_order == "slots from the top":
            self._search_order = sorted(secondary, key=lambda s: s.id, reverse=True)
        else:  # list_add() at the head: newest first
            self._search_order = secondary[::-1]

    def search_order(self) -> list[IoreqServer]:
        """The secondary servers in the order the selector asks them."""
        return list(self._search_order)

    def secondary(self, server: IoreqServer | int) -> IoreqServer | None:
        """The live non-default server with that id, as the hypercalls look it up.

        Xen finds servers by id: a destroyed server's id names whoever holds it now (from
        4.12 a new server takes the lowest free slot). The default server is never found
        (4.6/4.9 skip it in every by-id walk, e.g. hvm.c @RELEASE-4.6.0 lines 1249-1250).
        """
        server_id = server if isinstance(server, int) else server.id
        for s in self.servers:
            if s.id == server_id and not s.is_default:
                return s
        return None

    def destroy_server_rc(self, server: IoreqServer | int) -> str | None:
        """``destroy_ioreq_server``: -ENOENT unless a live secondary server has that id.

        From 4.9 a claimer's claim is dropped (``p2m_set_ioreq_server(d, 0, s)``, ioreq.c
        @RELEASE-4.9.0 line 757): its pages keep their type. 4.6/4.9 give its ioreq pages
        back to the pool.
        """
        target = self.secondary(server)
        if target is None:
            return "ENOENT"
        if self.p2m_claimer is target:
            self.p2m_claimer = None
        target.enabled = False
        target.live = False
        self.servers.remove(target)
        if self.profile.server_ids == "counter":
            self._free_pages += 1 + (target.bufioreq and self.profile.bufioreq_takes_page)
        self._reorder()
        return None

    def set_server_state_rc(self, server: IoreqServer | int, enabled: bool) -> str | None:
        """``set_ioreq_server_state``: -ENOENT for the default server or an unknown id."""
        target = self.secondary(server)
        if target is None:
            return "ENOENT"
        target.enabled = enabled
        return None

    # -- range hypercalls -----------------------------------------------------------------
    def map_io_range_rc(
        self, server: IoreqServer | int, rtype: RangeType, s: int, e: int
    ) -> tuple[str | None, int]:
        """``map_io_range_to_ioreq_server``: ``(errno name or None, nodes visited)``.

        ``EEXIST`` when ``[s, e]`` overlaps a range already in that set, else the result
        of ``rangeset_add_range()`` (``ENOMEM`` at the limit). Visits: one ``find_range``
        for the overlap check and two for the add (xen-semantics.md §6).
        """
        r, rc = self._rangeset_rc(server, rtype, s, e)
        if r is None:
            return rc, 0
        rc, visits, _, _ = r.map_rc(s, e)
        return rc, visits

    def unmap_io_range_rc(
        self, server: IoreqServer | int, rtype: RangeType, s: int, e: int
    ) -> tuple[str | None, int]:
        """``unmap_io_range_from_ioreq_server``: ``ENOENT`` unless ``[s, e]`` lies inside
        one range; a split can still fail with ``ENOMEM``. Visits: ``find_range(s)`` for
        the check, two for the remove."""
        r, rc = self._rangeset_rc(server, rtype, s, e)
        if r is None:
            return rc, 0
        rc, visits, _, _ = r.unmap_rc(s, e)
        return rc, visits

    def map_io_range(self, server: IoreqServer | int, rtype: RangeType, s: int, e: int) -> int:
        """:meth:`map_io_range_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.map_io_range_rc(server, rtype, s, e)
        if rc is not None:
            raise HypercallError(rc, f"map [{s:#x}, {e:#x}] {rtype.name} of {server!r}", visits)
        return visits

    def unmap_io_range(self, server: IoreqServer | int, rtype: RangeType, s: int, e: int) -> int:
        """:meth:`unmap_io_range_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.unmap_io_range_rc(server, rtype, s, e)
        if rc is not None:
            raise HypercallError(rc, f"unmap [{s:#x}, {e:#x}] {rtype.name} of {server!r}", visits)
        return visits

    def _rangeset_rc(
        self, server: IoreqServer | int, rtype: RangeType, s: int, e: int
    ) -> tuple[Rangeset | None, str | None]:
        if s > e:
            if not self.profile.map_start_above_end_einval:
                # Xen 4.6/4.9 only ASSERT(s <= e): a release build corrupts the rangeset.
                raise ValueError(
                    f"start {s:#x} above end {e:#x} is undefined in Xen {self.profile.name} "
                    "(ASSERT only, XSA-238; -EINVAL from d59e55b018 in 4.10)"
                )
            return None, "EINVAL"
        if s < 0 or e > U64_MAX:
            return None, "EINVAL"
        target = self.secondary(server)
        if target is None:
            return None, "ENOENT"
        r = target.rangesets.get(rtype)
        if r is None:
            return None, "EINVAL"  # a range type this design does not have
        return r, None

    def range_count(self, server: IoreqServer) -> int:
        """Nodes across all of a server's rangesets."""
        return sum(map(len, server.rangesets.values()))
