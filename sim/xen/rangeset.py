"""Xen's rangeset: a set of inclusive ``[s, e]`` ranges of unsigned 64-bit integers.

Semantics follow ``xen/common/rangeset.c`` (xen-project/xen, RELEASE-4.5.0 / RELEASE-4.6.0;
the algorithms are unchanged at master c447b7308b except for the remove fix noted below):

* ranges are kept sorted, never overlap and are never adjacent: ``add_range`` merges
  overlapping **and** adjacent ranges, so every range is maximal;
* ``remove_range`` trims, deletes, or splits a range in two when the removed span lies
  strictly inside it;
* an optional node budget (``rangeset_limit``) counts nodes *after* merging. An operation
  that has to allocate a node when the budget is spent fails with Xen's ``-ENOMEM``
  (:class:`RangesetFull` here) and leaves the set unchanged.

Two implementations sit behind one interface and give identical answers; they differ
only in the cost they report (:meth:`Rangeset.lookup_visits`):

* ``impl="list"``: Xen's sorted linked list (4.5 to today). ``find_range()`` walks from
  the head and stops at the first node that starts above the address, so a lookup
  visits ``min(k + 1, N)`` nodes, where ``k`` ranges start at or below the address.
* ``impl="rbtree"``: the red-black-tree rangeset proposed in the 2015 series "Refactor
  ioreq server for better performance". **It never landed upstream** (no rbtree
  rangeset exists on any xen.git ref; see xen-semantics.md §1 "Master"). Its member
  names and exact lookup were never published in git, so the lookup modelled here is
  an assumption: a binary-search descent that stops at the node containing the address
  and otherwise runs to a leaf.

Host cost: the functional answer always comes from ``bisect`` on two parallel sorted
arrays (O(log N) host time). The list's visit count is computed, never walked. The tree
is a real red-black tree kept node-for-node by the same add/remove steps Xen's list
performs; its search-path length is read off node depths (O(log N)).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Literal, Protocol

from sim.xen.rbtree import RedBlackTree

U64_MAX = (1 << 64) - 1

RangesetImpl = Literal["list", "rbtree"]


class RangesetFull(Exception):  # noqa: N818 -- the public API name is fixed by issue #3
    """The node budget is spent: Xen's ``alloc_range()`` returned NULL (``-ENOMEM``)."""

    errno_name = "ENOMEM"


def _check_bounds(s: int, e: int) -> None:
    # Xen only ASSERTs s <= e (XSA-238); we refuse it outright, as the 4.10+ ioreq path does.
    if (
        not (isinstance(s, int) and isinstance(e, int))
        or isinstance(s, bool)
        or isinstance(e, bool)
    ):
        raise TypeError(f"range bounds must be integers, got {s!r}, {e!r}")
    if s < 0 or e > U64_MAX:
        raise ValueError(f"range [{s:#x}, {e:#x}] is outside 0..2^64-1")
    if s > e:
        raise ValueError(f"range start {s:#x} is above its end {e:#x}")


class _CostModel(Protocol):
    """What a modelled data structure must do to report lookup costs."""

    def visits(self, starts: list[int], ends: list[int], addr: int, k: int) -> int: ...
    def inserted(self, index: int) -> None: ...
    def deleted(self, index: int) -> None: ...
    def reset(self) -> None: ...


class _ListCost:
    """Cost of Xen's ``find_range()`` linear walk (rangeset.c @4.5, lines 44-58)."""

    __slots__ = ()

    def visits(self, starts: list[int], ends: list[int], addr: int, k: int) -> int:
        # The walk visits the k ranges starting at or below addr, plus the first one
        # above it, if any: min(k + 1, N); 0 for an empty set.
        n = len(starts)
        return k + 1 if k < n else n

    def inserted(self, index: int) -> None:
        pass

    def deleted(self, index: int) -> None:
        pass

    def reset(self) -> None:
        pass


class _TreeCost:
    """Cost of a lookup in the (never-upstreamed) red-black-tree rangeset.

    The search compares the address with each node's range: it stops at the node that
    contains it, else goes left or right. For a hit in range i the path ends at node i;
    for a miss it ends at the sentinel leaf between the in-order neighbours of the gap,
    which hangs off the deeper of the two. So visits are node depths, O(log N) to read.
    """

    __slots__ = ("tree",)

    def __init__(self) -> None:
        self.tree = RedBlackTree()

    def visits(self, starts: list[int], ends: list[int], addr: int, k: int) -> int:
        n = len(starts)
        if n == 0:
            return 0
        depth = self.tree.depth
        if k > 0 and addr <= ends[k - 1]:
            return depth(k - 1)
        if k == 0:
            return depth(0)
        if k == n:
            return depth(n - 1)
        return max(depth(k - 1), depth(k))

    def inserted(self, index: int) -> None:
        self.tree.insert_at(index)

    def deleted(self, index: int) -> None:
        self.tree.delete_at(index)

    def reset(self) -> None:
        self.tree = RedBlackTree()


class Rangeset:
    """A Xen rangeset. ``impl`` picks the modelled structure; ``limit`` the node budget.

    ``limit=None`` is unlimited: Xen's ``nr_ranges = -1`` from ``rangeset_new()``, and
    Intel's ``RANGESETF_unlimited`` (intel/Igvtg-xen 62c6a69f4b).
    """

    __slots__ = ("_cost", "_ends", "_free", "_is_list", "_starts", "impl", "limit", "name")

    def __init__(
        self, impl: RangesetImpl = "list", limit: int | None = None, name: str = "(no name)"
    ) -> None:
        if impl == "list":
            self._cost: _CostModel = _ListCost()
        elif impl == "rbtree":
            self._cost = _TreeCost()
        else:
            raise ValueError(f"unknown rangeset implementation {impl!r}: use 'list' or 'rbtree'")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f"limit must be an int or None, got {limit!r}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.impl: RangesetImpl = impl
        self._is_list = impl == "list"
        self.limit = limit
        self.name = name
        self._starts: list[int] = []
        self._ends: list[int] = []
        # Xen's nr_ranges: how many more nodes may be allocated; None when unlimited.
        self._free: int | None = limit

    # -- node bookkeeping, mirrored into the cost model --------------------------------
    def _alloc(self) -> bool:
        # alloc_range(): refuses when nr_ranges == 0, before anything is changed.
        if self._free == 0:
            return False
        if self._free is not None:
            self._free -= 1
        return True

    def _insert(self, index: int, s: int, e: int) -> None:
        self._starts.insert(index, s)
        self._ends.insert(index, e)
        self._cost.inserted(index)

    def _destroy(self, index: int) -> None:
        # destroy_range(): gives the node back to the budget.
        del self._starts[index]
        del self._ends[index]
        self._cost.deleted(index)
        if self._free is not None:
            self._free += 1

    # -- public API -------------------------------------------------------------------
    def add_range(self, s: int, e: int) -> None:
        """``rangeset_add_range()``, step for step; raises RangesetFull on ``-ENOMEM``."""
        _check_bounds(s, e)
        if not self.try_add_range(s, e):
            raise RangesetFull(f"rangeset {self.name!r}: node budget of {self.limit} spent")

    def try_add_range(self, s: int, e: int) -> bool:
        """:meth:`add_range` without the checks and the exception: False on ``-ENOMEM``.

        The caller guarantees ``0 <= s <= e <= 2^64-1``.
        """
        starts, ends = self._starts, self._ends
        xi = bisect_right(starts, s) - 1  # find_range(r, s); -1 is NULL
        yi = bisect_right(starts, e) - 1  # find_range(r, e)
        if xi == yi:
            if xi < 0 or (ends[xi] < s and ends[xi] + 1 != s):
                # Allocate first, merge with a right neighbour afterwards: at budget 0
                # this fails even when the final node count would not grow.
                if not self._alloc():
                    return False
                xi = yi + 1
                self._insert(xi, s, e)
            elif ends[xi] < e:
                ends[xi] = e
        else:
            if xi < 0:
                xi = 0
                starts[0] = s
            elif ends[xi] < s and ends[xi] + 1 != s:
                xi += 1
                starts[xi] = s
            ends[xi] = max(ends[yi], e)
            # Destroy every following node now fully covered (exactly xi+1 .. yi).
            while xi + 1 < len(starts) and ends[xi + 1] <= ends[xi]:
                self._destroy(xi + 1)
        # Right-adjacent merge.
        if xi + 1 < len(starts) and ends[xi] + 1 == starts[xi + 1]:
            ends[xi] = ends[xi + 1]
            self._destroy(xi + 1)
        return True

    def remove_range(self, s: int, e: int) -> None:
        """``rangeset_remove_range()`` with master's semantics; RangesetFull on a split.

        Xen 4.5/4.6 had a bug in the multi-range path: the predecessor was truncated to
        ``s - 1`` even when it ended before ``s``, which *grew* it. It was fixed only by
        e118fc98e7 (RELEASE-4.21.0). The ioreq unmap path cannot reach it, because unmap
        first requires ``rangeset_contains_range(s, e)``, so here we use the fixed code.
        (The same path also computes ``e + 1`` in ``unsigned long``; Python ints do not
        wrap, so removing up to 2^64-1 behaves as the set difference it means.)
        """
        _check_bounds(s, e)
        if not self.try_remove_range(s, e):
            raise RangesetFull(f"rangeset {self.name!r}: no node left to split a range")

    def try_remove_range(self, s: int, e: int) -> bool:
        """:meth:`remove_range` without the checks and the exception: False on ``-ENOMEM``."""
        starts, ends = self._starts, self._ends
        xi = bisect_right(starts, s) - 1
        yi = bisect_right(starts, e) - 1
        if xi == yi:
            if xi < 0 or ends[xi] < s:
                return True
            xs, xe = starts[xi], ends[xi]
            if xs < s and xe > e:
                if not self._alloc():  # the split needs a second node
                    return False
                ends[xi] = s - 1
                self._insert(xi + 1, e + 1, xe)
            elif xs == s and xe <= e:
                self._destroy(xi)
            elif xs == s:
                starts[xi] = e + 1
            elif xe <= e:
                ends[xi] = s - 1
            return True
        if xi < 0:
            xi = 0
        elif starts[xi] < s:
            if ends[xi] >= s:
                ends[xi] = s - 1
            xi += 1
        # Destroy the nodes strictly between; they lie wholly inside [s, e].
        for _ in range(yi - xi):
            self._destroy(xi)
        if ends[xi] <= e:
            self._destroy(xi)
        else:
            starts[xi] = e + 1
        return True

    def add_singleton(self, x: int) -> None:
        self.add_range(x, x)

    def remove_singleton(self, x: int) -> None:
        self.remove_range(x, x)

    def contains_range(self, s: int, e: int) -> bool:
        """``rangeset_contains_range()``: is ``[s, e]`` inside one range?"""
        _check_bounds(s, e)
        k = bisect_right(self._starts, s)
        return k > 0 and self._ends[k - 1] >= e

    def overlaps_range(self, s: int, e: int) -> bool:
        """``rangeset_overlaps_range()``: does any range meet ``[s, e]``?"""
        _check_bounds(s, e)
        k = bisect_right(self._starts, e)
        return k > 0 and s <= self._ends[k - 1]

    def contains_singleton(self, x: int) -> bool:
        return self.contains_range(x, x)

    def lookup_visits(self, addr: int) -> int:
        """Nodes the modelled structure visits to look ``addr`` up (``find_range``)."""
        if not 0 <= addr <= U64_MAX:
            raise ValueError(f"address {addr:#x} is outside 0..2^64-1")
        k = bisect_right(self._starts, addr)
        return self._cost.visits(self._starts, self._ends, addr, k)

    def query_range(self, s: int, e: int) -> tuple[bool, int]:
        """``contains_range(s, e)`` and the visits of its ``find_range(s)``, in one search.

        The selector's hot path; the caller guarantees ``0 <= s <= e <= 2^64-1``.
        """
        starts, ends = self._starts, self._ends
        k = bisect_right(starts, s)
        if self._is_list:
            # _ListCost.visits, inlined: this runs on every trap.
            n = len(starts)
            return (k > 0 and ends[k - 1] >= e), (k + 1 if k < n else n)
        return (k > 0 and ends[k - 1] >= e), self._cost.visits(starts, ends, s, k)

    def map_rc(self, s: int, e: int) -> tuple[str | None, int, int, int]:
        """What ``map_io_range_to_ioreq_server`` does to this set, in one search.

        Returns ``(errno name or None, visits, nodes before, nodes after)``. Under the
        read lock the overlap check (``rangeset_overlaps_range``, one ``find_range(e)``)
        refuses with ``EEXIST``; then ``rangeset_add_range`` walks twice
        (``find_range(s)``, ``find_range(e)``) and may fail with ``ENOMEM`` (hvm.c
        @RELEASE-4.6.0 lines 1273-1277; xen-semantics.md §6). The caller guarantees
        ``0 <= s <= e <= 2^64-1``. The node counts let a caller price the walks by the
        set's size and follow its growth without asking again.
        """
        starts, ends = self._starts, self._ends
        n = len(starts)
        k = bisect_right(starts, e)
        # A list's visits (_ListCost.visits) inlined: this runs once per map hypercall.
        visits = (k + 1 if k < n else n) if self._is_list else self._cost.visits(starts, ends, e, k)
        if k > 0 and s <= ends[k - 1]:
            return "EEXIST", visits, n, n
        # No range meets [s, e], so none starts inside it: find_range(s) stops where
        # find_range(e) does, after as many visits (under either structure).
        if self._free == 0 and (k == 0 or ends[k - 1] + 1 != s):
            # add_range() allocates before it merges right (try_add_range): a spent
            # budget refuses a range with no left neighbour to merge into.
            return "ENOMEM", 3 * visits, n, n
        self.try_add_range(s, e)
        return None, 3 * visits, n, len(starts)

    def unmap_rc(self, s: int, e: int) -> tuple[str | None, int, int, int]:
        """What ``unmap_io_range_from_ioreq_server`` does to this set, in one search.

        Returns ``(errno name or None, visits, nodes before, nodes after)``: ``ENOENT``
        unless ``[s, e]`` lies inside one range (``rangeset_contains_range``, one
        ``find_range(s)``); then ``rangeset_remove_range`` walks twice and a split can
        fail with ``ENOMEM`` (hvm.c @RELEASE-4.6.0 lines 1325-1328). The caller
        guarantees ``0 <= s <= e <= 2^64-1``.
        """
        starts, ends = self._starts, self._ends
        n = len(starts)
        k = bisect_right(starts, s)
        # A list's visits (_ListCost.visits) inlined: this runs once per unmap hypercall.
        visits = (k + 1 if k < n else n) if self._is_list else self._cost.visits(starts, ends, s, k)
        if not (k > 0 and ends[k - 1] >= e):
            return "ENOENT", visits, n, n
        # [s, e] lies inside range k-1, so find_range(e) stops where find_range(s) does.
        if not self.try_remove_range(s, e):
            return "ENOMEM", 3 * visits, n, n
        return None, 3 * visits, n, len(starts)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def free(self) -> int | None:
        """Nodes that may still be allocated (Xen's ``nr_ranges``); None if unlimited."""
        return self._free

    @property
    def tree(self) -> RedBlackTree | None:
        """The modelled red-black tree (``impl="rbtree"`` only), for inspection."""
        return self._cost.tree if isinstance(self._cost, _TreeCost) else None

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self._cost.reset()
        self._free = self.limit

    def format(self) -> str:
        """Render like Xen's ``rangeset_printk()`` with ``RANGESETF_prettyprint_hex``."""
        body = ",".join(
            f" {s:x}" if s == e else f" {s:x}-{e:x}"
            for s, e in zip(self._starts, self._ends, strict=True)
        )
        return f"{self.name:<10} {{{body} }}"

    def __repr__(self) -> str:
        return (
            f"Rangeset(impl={self.impl!r}, limit={self.limit!r}, name={self.name!r}, "
            f"ranges={len(self)})"
        )
