"""Page types and write protection: ``set_mem_type``, the ``p2m_ioreq_server`` claim.

:class:`MemTypes` is the part of :class:`sim.xen.ioreq.IoreqDomain` that changes p2m
types. Type 15 is ``p2m_mmio_write_dm`` in 4.6 and ``p2m_ioreq_server`` from 4.8
(cb34624af5); ``domain.p2m`` maps each gfn of that type to it (absent: ``p2m_ram_rw``).

Xen 4.6 (``HVMOP_set_mem_type``, xen/arch/x86/hvm/hvm.c @RELEASE-4.6.0 lines 6567-6640)
    A page may go from RAM to ``mmio_write_dm`` and from ``mmio_write_dm`` back to RAM;
    anything else is refused (lines 6621-6627), after the pages before it were changed. The
    refusal returns -EINVAL only if it is the first page of the call: later, ``rc`` still
    holds the previous page's 0 (:attr:`~sim.xen.profiles.VersionProfile.set_mem_type_stale_rc`).
Xen 4.9 and later (``XEN_DMOP_set_mem_type``, xen/arch/x86/hvm/dm.c @RELEASE-4.9.0 lines
254-345; ``XEN_DMOP_map_mem_type_to_ioreq_server``, ca2b511d3f)
    ``ioreq_server`` needs a claimer, else -EINVAL for the whole call (lines 290-300).
    Per page only RAM -> ``ioreq_server`` and back are allowed (``allow_p2m_type_change``,
    lines 254-264): protecting a page twice is -EINVAL. A claim (``flags`` =
    ``XEN_DMOP_IOREQ_MEM_ACCESS_WRITE``) fails -EBUSY while any server holds it, even the
    same one, and while any page still has the type (``p2m_set_ioreq_server``,
    xen/arch/x86/mm/p2m.c @RELEASE-4.9.0 lines 314-328). Releasing it (``flags`` = 0) is
    -EINVAL for anyone but the claimer (lines 305-313) and turns every claimed page back to
    RAM before the call returns (xen/arch/x86/hvm/ioreq.c @RELEASE-4.9.0 lines 959-965,
    dm.c lines 481-507). Destroying the claimer only clears the claim (ioreq.c line 757):
    its pages keep the type, writes to them get ``X86EMUL_RETRY`` and a new claim is -EBUSY
    until they are set back to RAM one by one.

``write_protect_rc`` / ``unprotect_rc`` are the device model's way of doing it, per design:
XenGT on 4.6 maps the page into the server's MEMORY rangeset and then sets
``mmio_write_dm``; wp-split maps it into WP_MEM; GVT-g on 4.9+ claims the type once
(``hvm_claim_ioreq_server_type``) and then sets ``ioreq_server`` per page.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from sim.xen.abi import PAGE_SHIFT, P2mType, RangeType
from sim.xen.profiles import Design

if TYPE_CHECKING:
    from sim.xen.ioreq import IoreqDomain, IoreqServer
    from sim.xen.rangeset import Rangeset


class MemType(StrEnum):
    """``HVMMEM_*`` values a device model sets (xen/include/public/hvm/hvm_op.h)."""

    RAM_RW = "ram_rw"
    MMIO_WRITE_DM = "mmio_write_dm"  # 4.6 only: HVMMEM_unused from 4.7 (c858e932c1)
    IOREQ_SERVER = "ioreq_server"  # 4.8+ (cb34624af5)


class HypercallError(Exception):
    """A hypercall that Xen would refuse, with its errno name."""

    def __init__(self, errno_name: str, message: str, visits: int = 0) -> None:
        super().__init__(f"-{errno_name}: {message}")
        self.errno_name = errno_name
        self.visits = visits


# Enum members the PPGTT maps and unmaps use on every hypercall, bound once (a member
# looked up on its enum class costs ~70 ns in CPython 3.11, a module constant a dict get).
_RAM_RW, _MMIO_WRITE_DM = MemType.RAM_RW, MemType.MMIO_WRITE_DM
_XEN_46, _WP_SPLIT, _P2M = Design.XEN_46, Design.WP_SPLIT, Design.P2M_IOREQ_SERVER
_MEMORY, _WP_MEM = RangeType.MEMORY, RangeType.WP_MEM
_WRITE_DM = P2mType.WRITE_DM
_TYPES_46 = (_RAM_RW, _MMIO_WRITE_DM)
_TYPES_49 = (_RAM_RW, MemType.IOREQ_SERVER)
#: The highest frame whose byte range [gfn << 12, (gfn + 1) << 12) fits in 64 bits.
_MAX_GFN = (1 << (64 - PAGE_SHIFT)) - 1


def mem_types_of(version_has_claim: bool) -> tuple[MemType, MemType]:
    """The two types a release's interface has: RAM and its write-protected type."""
    return _TYPES_49 if version_has_claim else _TYPES_46


class MemTypes:
    """``set_mem_type``, the claim, and the designs' write protection (mixed into IoreqDomain)."""

    def set_mem_type_rc(
        self: IoreqDomain, first_gfn: int, last_gfn: int, mem_type: MemType
    ) -> tuple[str | None, int]:
        """``set_mem_type`` on ``first_gfn..last_gfn``: ``(errno name or None, pages changed)``.

        ValueError for a type the release's interface does not have.
        """
        if type(mem_type) is not MemType:
            mem_type = MemType(mem_type)
        if mem_type not in mem_types_of(self.profile.p2m_ioreq_server):
            raise ValueError(f"HVMMEM_{mem_type} is not in Xen {self.profile.name}'s interface")
        if first_gfn > last_gfn:
            return "EINVAL", 0
        protect = mem_type is not _RAM_RW
        if protect and self.profile.p2m_ioreq_server and self.p2m_claimer is None:
            return "EINVAL", 0  # dm.c @RELEASE-4.9.0 lines 297-299: no server claims the type
        p2m = self.p2m
        changed = 0
        for gfn in range(first_gfn, last_gfn + 1):
            if gfn in p2m and protect:
                # Type 15 -> type 15: neither RAM nor the allowed way back.
                stale = self.profile.set_mem_type_stale_rc and changed
                return (None if stale else "EINVAL"), changed
            if protect:
                p2m[gfn] = _WRITE_DM
            else:
                p2m.pop(gfn, None)
            changed += 1
        return None, changed

    def claim_rc(self: IoreqDomain, server: IoreqServer | int) -> str | None:
        """``map_mem_type_to_ioreq_server(HVMMEM_ioreq_server, WRITE)`` (4.9+)."""
        self._require_claims()
        target = self.secondary(server)
        if target is None:
            return "ENOENT"
        if self.p2m_claimer is not None or self.p2m:
            return "EBUSY"
        self.p2m_claimer = target
        return None

    def release_claim_rc(self: IoreqDomain, server: IoreqServer | int) -> str | None:
        """``map_mem_type_to_ioreq_server(HVMMEM_ioreq_server, 0)``: every page back to RAM."""
        self._require_claims()
        target = self.secondary(server)
        if target is None:
            return "ENOENT"
        if self.p2m_claimer is not target:
            return "EINVAL"
        self.p2m_claimer = None
        self.p2m.clear()
        return None

    def _require_claims(self: IoreqDomain) -> None:
        if not self.profile.p2m_ioreq_server:
            raise ValueError(
                f"Xen {self.profile.name} has no XEN_DMOP_map_mem_type_to_ioreq_server "
                "(ca2b511d3f, Xen 4.9)"
            )

    # -- the designs' write protection -------------------------------------------------
    def write_protect_rc(
        self: IoreqDomain, server: IoreqServer | int, first_gfn: int, last_gfn: int
    ) -> tuple[str | None, int]:
        """Write-protect guest pages ``first_gfn..last_gfn`` for ``server``, per design.

        Returns ``(errno name or None, rangeset visits)``. When the first hypercall fails
        the pages keep their RAM type, so guest writes to them are not trapped.
        """
        if first_gfn > last_gfn:
            return "EINVAL", 0
        design = self.design
        if design is _P2M:
            target = self.secondary(server)
            if target is None:
                return "ENOENT", 0
            if self.p2m_claimer is not target:
                # GVT-g claims the type once for its server; another claimer means the
                # claim it would make fails (p2m_set_ioreq_server: -EBUSY).
                rc = self.claim_rc(target) if self.p2m_claimer is None else "EBUSY"
                if rc is not None:
                    return rc, 0
            return self.set_mem_type_rc(first_gfn, last_gfn, MemType.IOREQ_SERVER)[0], 0
        if design is _XEN_46:
            rc, visits = self.map_io_range_rc(
                server,
                _MEMORY,
                first_gfn << PAGE_SHIFT,
                ((last_gfn + 1) << PAGE_SHIFT) - 1,
            )
        else:
            rc, visits = self.map_io_range_rc(server, _WP_MEM, first_gfn, last_gfn)
        if rc is None:
            self.set_mem_type_rc(first_gfn, last_gfn, _MMIO_WRITE_DM)
        return rc, visits

    def unprotect_rc(
        self: IoreqDomain, server: IoreqServer | int, first_gfn: int, last_gfn: int
    ) -> tuple[str | None, int]:
        """Give pages back to RAM and drop them from the design's tracking.

        The type is reset first, so even when the unmap fails (``ENOMEM`` on a split at the
        limit) the page is writable again; the stale range stays in the set.
        """
        self.set_mem_type_rc(first_gfn, last_gfn, _RAM_RW)
        if self.design is _XEN_46:
            return self.unmap_io_range_rc(
                server,
                _MEMORY,
                first_gfn << PAGE_SHIFT,
                ((last_gfn + 1) << PAGE_SHIFT) - 1,
            )
        if self.design is _WP_SPLIT:
            return self.unmap_io_range_rc(server, _WP_MEM, first_gfn, last_gfn)
        return None, 0

    def page_protector(self: IoreqDomain, server: IoreqServer | int) -> PageProtector:
        """:class:`PageProtector`: single-page write protection for ``server``, flattened."""
        return PageProtector(self, server)

    def write_protect(
        self: IoreqDomain, server: IoreqServer | int, first_gfn: int, last_gfn: int
    ) -> int:
        """:meth:`write_protect_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.write_protect_rc(server, first_gfn, last_gfn)
        if rc is not None:
            raise HypercallError(
                rc, f"write-protect gfns {first_gfn:#x}..{last_gfn:#x} for {server!r}", visits
            )
        return visits

    def unprotect(
        self: IoreqDomain, server: IoreqServer | int, first_gfn: int, last_gfn: int
    ) -> int:
        """:meth:`unprotect_rc`, raising :class:`HypercallError`; returns the visits."""
        rc, visits = self.unprotect_rc(server, first_gfn, last_gfn)
        if rc is not None:
            raise HypercallError(
                rc, f"unprotect gfns {first_gfn:#x}..{last_gfn:#x} of {server!r}", visits
            )
        return visits

    def is_write_protected(self: IoreqDomain, gfn: int) -> bool:
        return gfn in self.p2m


class PageProtector:
    """``write_protect_rc`` / ``unprotect_rc`` of one page for one server, in one call.

    A PPGTT burst is hundreds of single-page hypercalls for the same server (the model
    runs one per map or unmap, :mod:`sim.model.ppgtt`), so the by-id server lookup, the
    dispatch per design and the bounds checks that every page frame passes are done once,
    here; each page then costs one call into its rangeset (:meth:`Rangeset.map_rc`). Each
    method returns ``(errno name or None, visits, nodes before, nodes after)``, the node
    counts being those of the design's page rangeset (0 under p2m-ioreq-server, which has
    none). What this cannot settle at once (a server destroyed since, a type claim still to
    be made, a frame beyond 64 bits) goes the general way. ``tests/test_memtypes.py``
    holds both methods to the general path under every design.
    """

    __slots__ = ("_domain", "_p2m", "_rangeset", "_server", "_shift")

    def __init__(self, domain: IoreqDomain, server: IoreqServer | int) -> None:
        target = domain.secondary(server)
        if target is None:
            raise ValueError(f"no live ioreq server {server!r} to protect pages for")
        self._domain = domain
        self._server = target
        self._p2m = domain.p2m
        design = domain.design
        # XenGT on 4.6 maps byte addresses into MEMORY; wp-split maps frames into WP_MEM.
        self._rangeset: Rangeset | None = (
            None if design is _P2M else target.rangesets[_MEMORY if design is _XEN_46 else _WP_MEM]
        )
        self._shift = PAGE_SHIFT if design is _XEN_46 else 0

    def _nodes(self) -> int:
        return 0 if self._rangeset is None else len(self._rangeset)

    def protect(self, gfn: int) -> tuple[str | None, int, int, int]:
        """``write_protect_rc(server, gfn, gfn)``, with the page rangeset's node counts."""
        r = self._rangeset
        server = self._server
        if r is not None and server.live and 0 <= gfn <= _MAX_GFN:
            shift = self._shift
            start = gfn << shift
            result = r.map_rc(start, start + (1 << shift) - 1)
            if result[0] is None:
                # set_mem_type(mmio_write_dm) on one page: a page already of that type
                # is refused with no change, so either way the page has it afterwards.
                self._p2m[gfn] = _WRITE_DM
            return result
        if r is None and self._domain.p2m_claimer is server and gfn >= 0:
            # set_mem_type(ioreq_server) on one page, its server holding the claim:
            # RAM -> ioreq_server only (allow_p2m_type_change, dm.c @RELEASE-4.9.0
            # lines 254-264), so a page that has the type already is -EINVAL.
            p2m = self._p2m
            if gfn in p2m:
                return "EINVAL", 0, 0, 0
            p2m[gfn] = _WRITE_DM
            return None, 0, 0, 0
        before = self._nodes()
        rc, visits = self._domain.write_protect_rc(server, gfn, gfn)
        return rc, visits, before, self._nodes()

    def unprotect(self, gfn: int) -> tuple[str | None, int, int, int]:
        """``unprotect_rc(server, gfn, gfn)``, with the page rangeset's node counts."""
        r = self._rangeset
        if r is not None and self._server.live and 0 <= gfn <= _MAX_GFN:
            self._p2m.pop(gfn, None)  # set_mem_type(ram_rw) first, as unprotect_rc does
            shift = self._shift
            start = gfn << shift
            return r.unmap_rc(start, start + (1 << shift) - 1)
        if r is None and gfn >= 0:
            self._p2m.pop(gfn, None)  # p2m-ioreq-server: the type change is all there is
            return None, 0, 0, 0
        before = self._nodes()
        rc, visits = self._domain.unprotect_rc(self._server, gfn, gfn)
        return rc, visits, before, self._nodes()
