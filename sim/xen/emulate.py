"""How the instruction emulator turns one trapped access into the requests Xen selects for.

Selection never sees the guest's instruction, only the ioreqs ``hvmemul_do_io()`` builds,
and one instruction can become several of them, each selected on its own:

Non-rep MMIO (``count == 1``)
    Cut at every page boundary (``hvmemul_linear_mmio_access``, emulate.c
    @RELEASE-4.6.0 line 678 and 703; ``linear_read``/``linear_write`` split at the page,
    @master lines 1269-1281 and 1340-1352), then each piece into power-of-two chunks of at
    most 8 bytes: the largest power of two not above the piece, then the next ones that
    fit (``hvmemul_phys_mmio_access``, emulate.c @RELEASE-4.6.0 lines 576-578 and
    618-619; @master lines 1068-1070, 1110-1111), because ``hvmemul_do_io()`` refuses
    other sizes (line 120). A 6-byte write becomes 4 + 2 bytes; 16 bytes become 8 + 8.
Rep string ops (``count > 1``, MMIO or PIO)
    Done in rounds of at most :attr:`~sim.xen.profiles.VersionProfile.max_reps` (4096)
    reps: the emulator clips the count and the instruction restarts for the rest. When the
    other side is guest RAM (``ram_addr``: a ``rep movs`` or ``ins``/``outs`` buffer), a
    round stops where the RAM buffer leaves its page (``hvmemul_do_io_addr``, emulate.c
    @RELEASE-4.6.0 lines 282-305, one rep if the element itself straddles pages). From
    4.12 a rep MMIO request also stops at the MMIO side's page boundary (7626edeaca,
    emulate.c @RELEASE-4.12.0 lines 190-205). Each round is one request; the next one
    starts where it ended (``mmio_retry``, emulate.c @4.6 line 311).

The accesses are taken as guest-physical with contiguous pages (paging off, or a linear
range mapped contiguously); the page walk that could end a round earlier is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.xen.abi import PAGE_SIZE
from sim.xen.profiles import VersionProfile

#: Largest chunk ``hvmemul_do_io()`` takes: ``sizeof(long)`` on x86-64 (emulate.c @4.6 line 120).
MAX_CHUNK = 8
#: An access that would become more requests than this is refused as input: the table
#: would be unreadable, and a count this large is almost always a typo.
MAX_REQUESTS = 1024


@dataclass(frozen=True, slots=True)
class Request:
    """One ioreq as ``hvmemul_do_io()`` builds it: ``count`` reps of ``size`` bytes."""

    addr: int
    size: int
    count: int
    ram_addr: int | None = None

    def describe(self) -> str:
        return f"{self.addr:#x} {self.size}x{self.count}"


class TooManyRequestsError(ValueError):
    """The access would become more than :data:`MAX_REQUESTS` requests."""


def _chunks(addr: int, size: int) -> list[Request]:
    """``hvmemul_phys_mmio_access``: power-of-two chunks, largest first, at most 8 bytes."""
    out = []
    chunk = min(1 << (size.bit_length() - 1), MAX_CHUNK)
    while size:
        out.append(Request(addr, chunk, 1))
        addr += chunk
        size -= chunk
        while chunk > size > 0:
            chunk >>= 1
    return out


def split_single(addr: int, size: int) -> list[Request]:
    """A non-rep MMIO access: cut at page boundaries, then into power-of-two chunks."""
    out: list[Request] = []
    piece = min(size, PAGE_SIZE - (addr % PAGE_SIZE))
    while size:
        out.extend(_chunks(addr, piece))
        addr += piece
        size -= piece
        piece = min(size, PAGE_SIZE)
    return out


def ram_side_reps(ram_addr: int, size: int, reps: int, df: bool) -> int:
    """``hvmemul_do_io_addr``: the reps whose RAM element stays in the buffer's page.

    The backwards formula is Xen's, ``((page_off + size - 1) & ~PAGE_MASK) / size``: it
    counts one rep fewer than fit when the buffer ends exactly on the page's last byte.
    Zero means the first element straddles two pages: one rep, with both pages held.
    """
    page_off = ram_addr % PAGE_SIZE
    fit = ((page_off + size - 1) % PAGE_SIZE) // size if df else (PAGE_SIZE - page_off) // size
    return min(reps, fit) or 1


def mmio_page_reps(addr: int, size: int, reps: int, df: bool) -> int:
    """7626edeaca: the reps of a rep MMIO request that stay within its first page."""
    off = addr % PAGE_SIZE
    tail = PAGE_SIZE - off
    if tail < size:  # a single rep spans the GFN boundary
        return 1
    return min(reps, (off + size if df else tail) // size)


def split_reps(
    prof: VersionProfile,
    kind: str,
    addr: int,
    size: int,
    count: int,
    df: bool,
    ram_addr: int | None = None,
) -> list[Request]:
    """A rep string op: rounds of at most ``max_reps``, each cut as the release cuts it."""
    out: list[Request] = []
    remaining = count
    while remaining:
        reps = min(remaining, prof.max_reps)
        if ram_addr is not None:
            reps = ram_side_reps(ram_addr, size, reps, df)
        if kind == "mmio" and prof.rep_mmio_page_cut and reps > 1:
            reps = mmio_page_reps(addr, size, reps, df)
        out.append(Request(addr, size, reps, ram_addr))
        if len(out) > MAX_REQUESTS:
            raise TooManyRequestsError(
                f"it becomes more than {MAX_REQUESTS} requests under xen {prof.name}"
            )
        step = -reps * size if df else reps * size
        if kind == "mmio":
            addr += step
        if ram_addr is not None:
            ram_addr += step
        remaining -= reps
    return out


def split_access(
    prof: VersionProfile,
    kind: str,
    addr: int,
    size: int,
    count: int = 1,
    df: bool = False,
    ram_addr: int | None = None,
) -> list[Request]:
    """The requests one trapped access becomes under ``prof``, in the order Xen sends them."""
    if count > 1:
        return split_reps(prof, kind, addr, size, count, df, ram_addr)
    if kind == "mmio":
        return split_single(addr, size)
    return [Request(addr, size, 1, ram_addr)]
