"""Request splitting before selection (:mod:`sim.xen.emulate`), per release.

Sources: ``xen/arch/x86/hvm/emulate.c`` @RELEASE-4.6.0 lines 282-305 (RAM-side clip),
424 and 515-517 (4096 reps), 576-578 and 618-619 (power-of-two chunks), 678 and 703
(page split); 7626edeaca (RELEASE-4.12.0, lines 190-205: rep MMIO cut at the page).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.xen.abi import PAGE_SIZE
from sim.xen.emulate import (
    MAX_REQUESTS,
    Request,
    TooManyRequestsError,
    ram_side_reps,
    split_access,
)
from sim.xen.profiles import PROFILES, VERSIONS

P46, P49, P412, PMASTER = (PROFILES[v] for v in VERSIONS)


def shapes(requests: list[Request]) -> list[tuple[int, int, int]]:
    return [(r.addr, r.size, r.count) for r in requests]


# -- single accesses -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "chunks"),
    [
        (1, [1]),
        (2, [2]),
        (3, [2, 1]),
        (6, [4, 2]),
        (7, [4, 2, 1]),
        (8, [8]),
        (12, [8, 4]),
        (16, [8, 8]),
        (31, [8, 8, 8, 4, 2, 1]),
        (64, [8] * 8),
    ],
)
def test_single_access_becomes_power_of_two_chunks(size: int, chunks: list[int]) -> None:
    """hvmemul_phys_mmio_access: the largest power of two <= min(size, 8), then halve
    while the chunk exceeds what is left (emulate.c @4.6 lines 576-578, 618-619)."""
    requests = split_access(P46, "mmio", 0x1000, size)
    assert [r.size for r in requests] == chunks
    assert all(r.count == 1 for r in requests)


def test_single_access_is_cut_at_the_page_then_chunked() -> None:
    """Line 678: the first piece ends at the page; each piece is chunked on its own."""
    assert shapes(split_access(P46, "mmio", 0x1FFD, 7)) == [
        (0x1FFD, 2, 1),
        (0x1FFF, 1, 1),
        (0x2000, 4, 1),
    ]
    assert shapes(split_access(PMASTER, "mmio", 0x1FFC, 8)) == [(0x1FFC, 4, 1), (0x2000, 4, 1)]


def test_port_io_is_never_split() -> None:
    for prof in PROFILES.values():
        assert shapes(split_access(prof, "pio", 0xCFC, 4)) == [(0xCFC, 4, 1)]


# -- reps --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prof", [P46, P412], ids=["4.6", "4.12"])
def test_reps_run_in_rounds_of_4096(prof: object) -> None:
    requests = split_access(prof, "pio", 0x3F8, 1, 10_000)  # type: ignore[arg-type]
    assert [r.count for r in requests] == [4096, 4096, 1808]
    assert {r.addr for r in requests} == {0x3F8}  # a port does not move


def test_rep_mmio_keeps_its_count_before_4_12_and_is_cut_after() -> None:
    for prof in (P46, P49):
        assert shapes(split_access(prof, "mmio", 0xF7BFFFC0, 4, 17)) == [(0xF7BFFFC0, 4, 17)]
    for prof in (P412, PMASTER):
        assert shapes(split_access(prof, "mmio", 0xF7BFFFC0, 4, 17)) == [
            (0xF7BFFFC0, 4, 16),
            (0xF7C00000, 4, 1),
        ]


def test_backwards_rep_is_cut_at_its_page_start() -> None:
    """7626edeaca with df: (off + size) / size reps fit below addr in its page."""
    assert shapes(split_access(P412, "mmio", 0xF7800000, 4, 4, df=True)) == [
        (0xF7800000, 4, 1),
        (0xF77FFFFC, 4, 3),
    ]
    assert shapes(split_access(P46, "mmio", 0xF7800000, 4, 4, df=True)) == [(0xF7800000, 4, 4)]


def test_a_rep_element_straddling_the_page_goes_alone() -> None:
    """Line 200: tail < size -> count 1 (the request still straddles)."""
    assert shapes(split_access(P412, "mmio", 0x1FFC, 8, 3)) == [
        (0x1FFC, 8, 1),
        (0x2004, 8, 2),
    ]


def test_ram_side_clip_follows_xens_formula() -> None:
    """hvmemul_do_io_addr (emulate.c @4.6 lines 283-305): forward, the reps left in the
    buffer's page; backwards, ((off + size - 1) & 0xfff) / size, which is one short when
    the buffer ends on the page's last byte; 0 means a straddling element: 1 rep."""
    assert ram_side_reps(0x10000FC0, 4, 100, df=False) == 16
    assert ram_side_reps(0x10000FFE, 4, 100, df=False) == 1  # 0 fit: one straddling rep
    assert ram_side_reps(0x10000FFC, 4, 5000, df=True) == 1023  # 1024 would fit
    assert ram_side_reps(0x10000000, 4, 100, df=True) == 1  # 3 // 4 = 0 -> 1
    requests = split_access(P46, "mmio", 0xF7800000, 4, 64, ram_addr=0x10000FC0)
    assert [(r.count, r.ram_addr) for r in requests] == [(16, 0x10000FC0), (48, 0x10001000)]


def test_too_many_requests_is_refused() -> None:
    with pytest.raises(TooManyRequestsError, match=str(MAX_REQUESTS)):
        split_access(P412, "mmio", 0x1000, 8, 0xFFFFFFFF)


# -- properties ----------------------------------------------------------------------------
@given(addr=st.integers(0, 1 << 40), size=st.integers(1, 64))
def test_single_split_covers_every_byte_once_in_chunks_xen_accepts(addr: int, size: int) -> None:
    requests = split_access(PMASTER, "mmio", addr, size)
    covered = [b for r in requests for b in range(r.addr, r.addr + r.size)]
    assert covered == list(range(addr, addr + size))  # in order, each byte once
    for r in requests:
        assert r.size in (1, 2, 4, 8)  # hvmemul_do_io refuses the rest (line 120)
        assert r.addr // PAGE_SIZE == (r.addr + r.size - 1) // PAGE_SIZE


@pytest.mark.parametrize("version", VERSIONS)
@given(
    addr=st.integers(1 << 20, 1 << 40),
    size=st.sampled_from([1, 2, 4, 8]),
    count=st.integers(2, 9000),
    df=st.booleans(),
    ram=st.none() | st.integers(0, 1 << 32),
)
def test_rep_split_performs_every_rep_once_in_order(
    version: str, addr: int, size: int, count: int, df: bool, ram: int | None
) -> None:
    prof = PROFILES[version]  # type: ignore[index]
    requests = split_access(prof, "mmio", addr, size, count, df, ram)
    assert sum(r.count for r in requests) == count
    step = -size if df else size
    rep_addrs = [r.addr + i * step for r in requests for i in range(r.count)]
    assert rep_addrs == [addr + i * step for i in range(count)]  # each element once, in order
    if ram is not None:
        ram_addrs = [r.ram_addr + i * step for r in requests for i in range(r.count)]  # type: ignore[operator]
        assert ram_addrs == [ram + i * step for i in range(count)]
    for r in requests:
        assert 1 <= r.count <= prof.max_reps
        if prof.rep_mmio_page_cut and r.count > 1:
            first = r.addr - (r.count - 1) * size if df else r.addr
            last = r.addr + size - 1 if df else r.addr + r.count * size - 1
            assert first // PAGE_SIZE == last // PAGE_SIZE  # 7626edeaca: one page
