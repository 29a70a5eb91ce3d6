"""A rangeset's read-write lock, as a timeline: who holds it when, without SimPy events.

Xen 4.6's rangeset takes its ``rwlock_t`` for reading in every query
(``rangeset_contains_range``, ``rangeset_overlaps_range``: ``read_lock``, rangeset.c
@RELEASE-4.6.0, lines 259 and 275) and for writing in ``rangeset_add_range`` and
``rangeset_remove_range`` (``write_lock``, lines 123 and 191), around their two
``find_range`` walks. So a trap's ioreq-server lookup and the device model's map or
unmap hypercall on the same rangeset exclude each other, while lookups share.

Xen 4.6's rwlock (``xen/common/spinlock.c`` @RELEASE-4.6.0, lines 290-395) **prefers
writers**: ``_write_lock`` first sets ``RW_WRITE_FLAG`` as soon as no other writer has
it, then spins until the readers inside drain; ``_read_lock`` spins while the flag is
set. A writer therefore waits only for the readers already in, and readers arriving
after it wait until it is done. Both sides spin: the waiting CPU stays busy. Among
waiters racing for the flag, the cmpxchg winner is arbitrary; the model serves them in
arrival order.

The timeline is kept in arrival order, which is simulated-time order except for one
approximation: a lookup takes its place in the order at its VM exit, not ~1-3 us later
when it reaches ``find_range`` (the exit's decode and handler scan are not separate
events). A hypercall takes its place when it is issued, likewise.
"""

from __future__ import annotations


class RwLockTimeline:
    """One rangeset's lock: ``read`` and ``write`` return when each may start."""

    __slots__ = (
        "reader_wait_ns",
        "readers_done",
        "readers_waited",
        "writer_wait_ns",
        "writers_done",
    )

    def __init__(self) -> None:
        self.writers_done = 0.0  # when the last writer to arrive releases the lock
        self.readers_done = 0.0  # when the last reader inside leaves
        self.readers_waited = 0
        self.reader_wait_ns = 0.0
        self.writer_wait_ns = 0.0

    def read(self, t: float, hold_ns: float) -> float:
        """A reader arriving at ``t`` and holding ``hold_ns``: when it gets the lock."""
        start = t if t >= self.writers_done else self.writers_done
        end = start + hold_ns
        if end > self.readers_done:
            self.readers_done = end
        if start > t:
            self.readers_waited += 1
            self.reader_wait_ns += start - t
        return start

    def write(self, t: float, hold_ns: float) -> float:
        """A writer arriving at ``t`` and holding ``hold_ns``: when it gets the lock.

        It claims the write flag after earlier writers are done, then waits for the
        readers already inside; readers that come later wait for it (``read``).
        """
        claim = t if t >= self.writers_done else self.writers_done
        start = claim if claim >= self.readers_done else self.readers_done
        self.writers_done = start + hold_ns
        self.writer_wait_ns += start - t
        return start
