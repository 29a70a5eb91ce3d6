"""Page types, the p2m_ioreq_server claim and the designs' write protection, per release.

Sources: ``HVMOP_set_mem_type`` (xen/arch/x86/hvm/hvm.c @RELEASE-4.6.0 lines 6567-6640);
``set_mem_type`` / ``allow_p2m_type_change`` (xen/arch/x86/hvm/dm.c @RELEASE-4.9.0 lines
254-345), ``p2m_set_ioreq_server`` (xen/arch/x86/mm/p2m.c @RELEASE-4.9.0 lines 291-339),
``hvm_map_mem_type_to_ioreq_server`` and destroy (xen/arch/x86/hvm/ioreq.c @RELEASE-4.9.0
lines 757, 928-968), ``hvmemul_do_io`` (emulate.c @RELEASE-4.9.0 lines 236-266).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.xen.abi import PAGE_SHIFT, RangeType
from sim.xen.ioreq import Access, Design, IoreqDomain, IoreqServer
from sim.xen.memtypes import MemType
from sim.xen.rangeset import RangesetImpl

CLAIMING = ["4.9", "4.12", "master"]


def write(gfn: int) -> Access:
    return Access("mmio", (gfn << PAGE_SHIFT) | 8, 8, True)


def read(gfn: int) -> Access:
    return Access("mmio", (gfn << PAGE_SHIFT) | 8, 8, False)


def two_servers(version: str) -> tuple[IoreqDomain, IoreqServer, IoreqServer]:
    dom = IoreqDomain(version=version)
    if dom.profile.default_server:
        dom.create_server("qemu", default=True)
    gvt = dom.create_server("gvt")
    demu = dom.create_server("demu")
    return dom, gvt, demu


@pytest.mark.parametrize("version", CLAIMING)
def test_set_mem_type_needs_a_claimer(version: str) -> None:
    """dm.c @4.9 lines 297-299: -EINVAL and nothing changed without a claimer."""
    dom, gvt, _ = two_servers(version)
    assert dom.set_mem_type_rc(0x100, 0x101, MemType.IOREQ_SERVER) == ("EINVAL", 0)
    assert not dom.p2m
    assert dom.claim_rc(gvt) is None
    assert dom.set_mem_type_rc(0x100, 0x101, MemType.IOREQ_SERVER) == (None, 2)


@pytest.mark.parametrize("version", CLAIMING)
def test_one_claimer_and_not_twice(version: str) -> None:
    """p2m.c @4.9 lines 316-318: -EBUSY while any server holds the claim, itself too."""
    dom, gvt, demu = two_servers(version)
    assert dom.claim_rc(gvt) is None
    assert dom.claim_rc(gvt) == "EBUSY"
    assert dom.claim_rc(demu) == "EBUSY"
    assert dom.claim_rc(99) == "ENOENT"
    if dom.default_server is not None:
        assert dom.claim_rc(dom.default_server) == "ENOENT"  # skipped in the by-id walk


@pytest.mark.parametrize("version", CLAIMING)
def test_any_device_model_marks_pages_for_the_one_claimer(version: str) -> None:
    """set_mem_type names no server; writes go to the claimer, reads are emulated from
    RAM (emulate.c @4.9 lines 242-264), with no rangeset lookup."""
    dom, gvt, demu = two_servers(version)
    dom.map_io_range(demu, RangeType.MEMORY, 0, (1 << 32) - 1)  # demu maps everything
    dom.claim_rc(gvt)
    assert dom.set_mem_type_rc(0x200, 0x200, MemType.IOREQ_SERVER) == (None, 1)
    route = dom.route(write(0x200))
    assert (route.handler, route.visits, route.p2m_lookups) == ("gvt", 0, 1)
    assert dom.route(read(0x200)).handler == "ram"
    assert dom.route(write(0x201)).handler == "demu"  # an ordinary page is selected


@pytest.mark.parametrize("version", CLAIMING)
def test_marking_a_page_twice_is_einval_after_the_pages_before_it(version: str) -> None:
    """allow_p2m_type_change (dm.c @4.9 lines 254-257); the loop stops at the refused
    page with rc -EINVAL (line 318), pages before it changed."""
    dom, gvt, _ = two_servers(version)
    dom.claim_rc(gvt)
    dom.set_mem_type_rc(0x102, 0x102, MemType.IOREQ_SERVER)
    assert dom.set_mem_type_rc(0x100, 0x103, MemType.IOREQ_SERVER) == ("EINVAL", 2)
    assert sorted(dom.p2m) == [0x100, 0x101, 0x102]


@pytest.mark.parametrize("version", CLAIMING)
def test_release_resets_every_page_and_only_the_claimer_may(version: str) -> None:
    """p2m.c @4.9 lines 305-313; ioreq.c @4.9 lines 959-965 and dm.c lines 481-507."""
    dom, gvt, demu = two_servers(version)
    dom.claim_rc(gvt)
    dom.set_mem_type_rc(0x100, 0x1FF, MemType.IOREQ_SERVER)
    assert dom.release_claim_rc(demu) == "EINVAL"
    assert dom.release_claim_rc(gvt) is None
    assert not dom.p2m
    assert dom.p2m_claimer is None
    assert dom.claim_rc(demu) is None  # nothing left with the type


@pytest.mark.parametrize("version", CLAIMING)
def test_destroying_the_claimer_leaves_its_pages_typed(version: str) -> None:
    """ioreq.c @4.9 line 757 only clears the claim: writes get X86EMUL_RETRY (emulate.c
    lines 248-253) and a new claim is -EBUSY while a page has the type (p2m.c 326-327)."""
    dom, gvt, demu = two_servers(version)
    dom.claim_rc(gvt)
    dom.set_mem_type_rc(0x100, 0x101, MemType.IOREQ_SERVER)
    assert dom.destroy_server_rc(gvt) is None
    assert dom.route(write(0x100)).handler == "retry"
    assert dom.route(read(0x100)).handler == "retry"
    assert dom.claim_rc(demu) == "EBUSY"
    assert dom.set_mem_type_rc(0x100, 0x100, MemType.RAM_RW) == (None, 1)
    assert dom.claim_rc(demu) == "EBUSY"
    assert dom.set_mem_type_rc(0x101, 0x101, MemType.RAM_RW) == (None, 1)
    assert dom.claim_rc(demu) is None


def test_4_6_set_mem_type_keeps_the_previous_pages_rc() -> None:
    """hvm.c @RELEASE-4.6.0 lines 6621-6627: the refused page leaves rc as it was: -EINVAL
    from line 6593 for the first page of the call, else 0 from the page before."""
    dom = IoreqDomain(version="4.6")
    assert dom.set_mem_type_rc(0x100, 0x100, MemType.MMIO_WRITE_DM) == (None, 1)
    assert dom.set_mem_type_rc(0x100, 0x100, MemType.MMIO_WRITE_DM) == ("EINVAL", 0)
    assert dom.set_mem_type_rc(0xFE, 0x101, MemType.MMIO_WRITE_DM) == (None, 2)
    assert sorted(dom.p2m) == [0xFE, 0xFF, 0x100]
    assert dom.set_mem_type_rc(0xFE, 0x101, MemType.RAM_RW) == (None, 4)


def test_types_outside_a_releases_interface_are_refused() -> None:
    """HVMMEM_ioreq_server is 4.8+ (cb34624af5); HVMMEM_mmio_write_dm left in 4.7
    (c858e932c1); the claim DMOP is 4.9 (ca2b511d3f)."""
    with pytest.raises(ValueError, match="interface"):
        IoreqDomain(version="4.6").set_mem_type_rc(1, 1, MemType.IOREQ_SERVER)
    with pytest.raises(ValueError, match="interface"):
        IoreqDomain(version="4.9").set_mem_type_rc(1, 1, MemType.MMIO_WRITE_DM)
    dom = IoreqDomain(version="4.6")
    srv = dom.create_server("srv")
    with pytest.raises(ValueError, match="ca2b511d3f"):
        dom.claim_rc(srv)


@pytest.mark.parametrize(
    ("version", "design"),
    [
        ("4.6", Design.XEN_46),
        ("4.6", Design.WP_SPLIT),
        ("4.9", Design.P2M_IOREQ_SERVER),
        ("master", Design.P2M_IOREQ_SERVER),
    ],
)
def test_write_protect_convenience_per_design(version: str, design: Design) -> None:
    """XenGT's map + mmio_write_dm on 4.6; GVT-g's claim-once + set_mem_type on 4.9+:
    a second server's protection fails at its claim (-EBUSY), a page twice is refused."""
    dom = IoreqDomain(design, version=version)
    gvt = dom.create_server("gvt")
    other = dom.create_server("other")
    assert dom.write_protect_rc(gvt, 0x100, 0x100)[0] is None
    assert dom.route(write(0x100)).handler == "gvt"
    twice = "EINVAL" if design is Design.P2M_IOREQ_SERVER else "EEXIST"
    assert dom.write_protect_rc(gvt, 0x100, 0x100)[0] == twice
    if design is Design.P2M_IOREQ_SERVER:
        assert dom.write_protect_rc(other, 0x200, 0x200)[0] == "EBUSY"
        assert not dom.is_write_protected(0x200)
    assert dom.unprotect_rc(gvt, 0x100, 0x100)[0] is None
    assert not dom.is_write_protected(0x100)


# -- the flattened single-page path against the general one ------------------------------
PROTECTOR_CASES = [
    ("4.6", Design.XEN_46),
    ("4.6", Design.WP_SPLIT),
    ("4.9", Design.P2M_IOREQ_SERVER),
    ("master", Design.P2M_IOREQ_SERVER),
]

protector_ops = st.lists(
    st.tuples(
        st.sampled_from(["protect", "protect", "unprotect", "unprotect", "destroy", "claim"]),
        st.integers(0, 9),  # few frames: pages meet again, and neighbours merge
    ),
    max_size=60,
)


@pytest.mark.parametrize(("version", "design"), PROTECTOR_CASES)
@given(ops=protector_ops, limit=st.integers(1, 6), impl=st.sampled_from(["list", "rbtree"]))
@settings(max_examples=100, deadline=None)
def test_page_protector_is_the_general_path(
    version: str, design: Design, ops: list[tuple[str, int]], limit: int, impl: RangesetImpl
) -> None:
    """PageProtector.protect/unprotect give what write_protect_rc/unprotect_rc give on a
    twin domain: the same errno, visits, p2m and ranges, under every design, at a small
    node limit (ENOMEM), with pages protected twice (EEXIST/EINVAL), unprotected while not
    protected (ENOENT), claims taken by another server (EBUSY) and the server destroyed
    (ENOENT, the general way); the node counts are the page rangeset's before and after."""
    fast_dom = IoreqDomain(design, impl, limit, version=version)
    twin = IoreqDomain(design, impl, limit, version=version)
    servers = []
    for dom in (fast_dom, twin):
        gvt = dom.create_server("gvt")
        servers.append((gvt, dom.create_server("other")))
    (gvt, other), (twin_gvt, twin_other) = servers
    protector = fast_dom.page_protector(gvt)
    rtype = RangeType.MEMORY if design is Design.XEN_46 else RangeType.WP_MEM

    def nodes() -> int:
        r = twin_gvt.rangesets.get(rtype) if design is not Design.P2M_IOREQ_SERVER else None
        return 0 if r is None else len(r)

    for op, gfn in ops:
        if op == "destroy":
            assert fast_dom.destroy_server_rc(gvt) == twin.destroy_server_rc(twin_gvt)
            continue
        if op == "claim":
            if design is Design.P2M_IOREQ_SERVER:
                assert fast_dom.claim_rc(other) == twin.claim_rc(twin_other)
            continue
        before = nodes()
        if op == "protect":
            got = protector.protect(gfn)
            rc, visits = twin.write_protect_rc(twin_gvt, gfn, gfn)
        else:
            got = protector.unprotect(gfn)
            rc, visits = twin.unprotect_rc(twin_gvt, gfn, gfn)
        assert got == (rc, visits, before, nodes())
        assert fast_dom.p2m == twin.p2m
        for rt, r in gvt.rangesets.items():
            assert r.ranges() == twin_gvt.rangesets[rt].ranges()
