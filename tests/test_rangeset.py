"""Tests for :mod:`sim.xen.rangeset`, Xen's rangeset and its modelled lookup costs.

Rules come from ``xen/common/rangeset.c`` at RELEASE-4.6.0 (the algorithms are the same
at RELEASE-4.5.0), as summarised in ``shared/reference/xen-semantics.md`` §1 and §6.

``impl="rbtree"`` models the red-black-tree rangeset proposed in the 2015 series
"Refactor ioreq server for better performance". That tree **never landed upstream**: no
xen.git ref has an rbtree rangeset (xen-semantics.md §1 "Master"), so its tests check the
simulator's own assumption (a valid red-black tree and a root-to-leaf descent), not Xen.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sim.xen.rangeset import U64_MAX, Rangeset, RangesetFull, RangesetImpl

Span = tuple[int, int]


# -- helpers ------------------------------------------------------------------------------
def make(ranges: list[Span], impl: RangesetImpl = "list", limit: int | None = None) -> Rangeset:
    rs = Rangeset(impl, limit)
    for s, e in ranges:
        rs.add_range(s, e)
    return rs


def runs_of(points: set[int]) -> list[Span]:
    """Maximal runs of consecutive integers: what a merged rangeset must hold."""
    runs: list[Span] = []
    for p in sorted(points):
        if runs and runs[-1][1] + 1 == p:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


def walk_visits(ranges: list[Span], addr: int) -> int:
    """Brute-force ``find_range()`` walk: count nodes until one starts above ``addr``."""
    visits = 0
    for s, _e in ranges:
        visits += 1
        if s > addr:
            break
    return visits


def last_start_at_or_below(runs: list[Span], x: int) -> int | None:
    found: int | None = None
    for i, (s, _e) in enumerate(runs):
        if s <= x:
            found = i
    return found


def add_needs_node(runs: list[Span], s: int, e: int) -> bool:
    """Does ``rangeset_add_range(s, e)`` call ``alloc_range()``? (rangeset.c @4.6)"""
    x = last_start_at_or_below(runs, s)
    y = last_start_at_or_below(runs, e)
    return x == y and (x is None or runs[x][1] < s - 1)


def remove_needs_node(runs: list[Span], s: int, e: int) -> bool:
    """Does ``rangeset_remove_range(s, e)`` split a range (and so allocate)?"""
    return any(rs < s and re > e for rs, re in runs)


def descent_visits(rs: Rangeset, addr: int) -> int:
    """Real nodes on the root-to-leaf search path for ``addr`` in the modelled rbtree."""
    tree = rs.tree
    assert tree is not None
    index_of = {id(node): i for i, node in enumerate(tree.nodes)}
    ranges = rs.ranges()
    node = tree.root
    visits = 0
    while node is not tree.nil:
        visits += 1
        s, e = ranges[index_of[id(node)]]
        if s <= addr <= e:
            break
        node = node.left if addr < s else node.right
    return visits


def probes_for(ranges: list[Span], extra: list[int]) -> set[int]:
    """Every range edge, its outside neighbours, and some extra addresses."""
    probes = set(extra)
    for s, e in ranges:
        probes.update({s, e, (s + e) // 2})
        if s > 0:
            probes.add(s - 1)
        if e < U64_MAX:
            probes.add(e + 1)
    return probes


spans_small = st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: (min(t), max(t)))


# -- one test per Xen rule ------------------------------------------------------------------
def test_ranges_are_sorted_and_inclusive() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, insert_range()/find_range(): the list is kept
    sorted by start, and ``[s, e]`` includes both bounds."""
    rs = make([(50, 59), (10, 19), (30, 39), (70, 70)])
    assert rs.ranges() == [(10, 19), (30, 39), (50, 59), (70, 70)]
    assert rs.contains_singleton(10)
    assert rs.contains_singleton(19)
    assert not rs.contains_singleton(20)
    assert not rs.contains_singleton(9)
    assert rs.contains_singleton(70)
    assert not rs.contains_singleton(71)


def test_add_merges_overlapping_ranges() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_add_range(): a range overlapping
    existing ones absorbs them into one node (the x != y path destroys covered nodes)."""
    rs = make([(10, 19), (30, 39), (50, 59)])
    rs.add_range(15, 52)
    assert rs.ranges() == [(10, 59)]
    rs.add_range(12, 14)  # wholly inside: nothing changes
    assert rs.ranges() == [(10, 59)]
    rs.add_range(5, 11)  # overlaps the front
    assert rs.ranges() == [(5, 59)]


def test_add_merges_adjacent_ranges() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_add_range(): adjacent ranges merge
    (``x->e + 1 == s`` extends x; the final step absorbs a successor starting at e + 1)."""
    rs = make([(0x1000, 0x1FFF)])
    rs.add_range(0x2000, 0x2FFF)
    assert rs.ranges() == [(0x1000, 0x2FFF)]
    rs.add_range(0x0, 0x0FFF)  # left-adjacent, in front of the head
    assert rs.ranges() == [(0x0, 0x2FFF)]
    rs = make([(0, 4), (10, 14)])
    rs.add_range(5, 9)  # bridges two ranges by adjacency on both sides
    assert rs.ranges() == [(0, 14)]
    assert len(rs) == 1


def test_remove_trims_and_deletes() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_remove_range(): a removed span that
    covers an end trims it; ranges wholly covered are destroyed; no overlap is a no-op."""
    rs = make([(0, 9)])
    rs.remove_range(0, 2)
    assert rs.ranges() == [(3, 9)]
    rs.remove_range(8, 20)
    assert rs.ranges() == [(3, 7)]
    rs.remove_range(100, 200)
    assert rs.ranges() == [(3, 7)]
    rs = make([(0, 9), (20, 29), (40, 49)])
    rs.remove_range(5, 45)  # the x != y path: trim, destroy between, trim
    assert rs.ranges() == [(0, 4), (46, 49)]
    rs.remove_range(0, 49)
    assert rs.ranges() == []
    assert len(rs) == 0


def test_remove_across_ranges_never_grows_the_predecessor() -> None:
    """xen/common/rangeset.c, rangeset_remove_range(), x != y path: 4.5/4.6 truncated the
    predecessor to ``s - 1`` even when it ended before ``s`` (growing it); fixed by
    e118fc98e7 (RELEASE-4.21.0). The model uses the fixed code, i.e. set difference; the
    ioreq unmap path cannot reach the difference (it requires containment first)."""
    rs = make([(0, 3), (20, 29)])
    rs.remove_range(5, 25)
    assert rs.ranges() == [(0, 3), (26, 29)]


def test_remove_splits_when_strictly_inside() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_remove_range(): ``[s, e]`` strictly
    inside x (``x->s < s && x->e > e``) allocates ``[e+1, x->e]`` and trims x to ``s-1``."""
    rs = make([(0, 9)])
    rs.remove_range(3, 4)
    assert rs.ranges() == [(0, 2), (5, 9)]
    rs.remove_singleton(7)
    assert rs.ranges() == [(0, 2), (5, 6), (8, 9)]


def test_budget_counts_nodes_after_merging() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_limit()/alloc_range()/destroy_range():
    the budget is the number of live nodes, so merged ranges cost one unit and a destroyed
    node gives its unit back."""
    rs = Rangeset("list", limit=1)
    rs.add_range(0, 4)
    rs.add_range(5, 9)
    rs.add_range(2, 7)
    rs.add_range(10, 10)
    assert rs.ranges() == [(0, 10)]
    assert rs.free == 0
    rs.remove_range(0, 10)
    assert rs.free == 1
    rs.add_range(100, 200)
    assert rs.ranges() == [(100, 200)]
    rs = make([(0, 0), (2, 2), (4, 4)], limit=3)
    rs.add_range(1, 3)  # three nodes collapse into one and return two units
    assert rs.ranges() == [(0, 4)]
    assert rs.free == 2


def test_budget_failure_raises_and_leaves_set_unchanged() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, alloc_range(): with ``nr_ranges == 0`` it
    returns NULL before anything is changed and rangeset_add_range() returns -ENOMEM."""
    rs = make([(0, 0), (10, 10)], limit=2)
    with pytest.raises(RangesetFull) as info:
        rs.add_range(20, 20)
    assert info.value.errno_name == "ENOMEM"
    assert rs.ranges() == [(0, 0), (10, 10)]
    assert len(rs) == 2
    assert rs.free == 0
    with pytest.raises(RangesetFull):
        rs.add_range(5, 5)  # a new node in a gap
    assert rs.ranges() == [(0, 0), (10, 10)]


def test_add_in_front_of_adjacent_range_fails_at_zero_budget() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_add_range(): the x == y path
    allocates ``[s, e]`` first and merges with the right neighbour afterwards, so adding
    [1,4] in front of [5,9] is -ENOMEM at budget 0 though the final count would stay 1."""
    rs = make([(5, 9)], limit=1)
    with pytest.raises(RangesetFull):
        rs.add_range(1, 4)
    assert rs.ranges() == [(5, 9)]
    roomy = make([(5, 9)], limit=2)
    roomy.add_range(1, 4)
    assert roomy.ranges() == [(1, 9)]
    assert len(roomy) == 1


def test_split_on_remove_consumes_budget() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_remove_range(): the split path calls
    alloc_range(), so it uses one budget unit and fails with -ENOMEM at budget 0."""
    rs = make([(0, 9)], limit=2)
    rs.remove_range(3, 4)
    assert rs.ranges() == [(0, 2), (5, 9)]
    assert rs.free == 0
    with pytest.raises(RangesetFull):
        rs.remove_range(7, 7)
    assert rs.ranges() == [(0, 2), (5, 9)]
    full = make([(0, 9)], limit=1)
    with pytest.raises(RangesetFull):
        full.remove_range(3, 4)
    assert full.ranges() == [(0, 9)]
    full.remove_range(0, 4)  # a trim needs no node
    assert full.ranges() == [(5, 9)]


def test_extending_add_succeeds_at_zero_budget() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_add_range(): when x overlaps or is
    left-adjacent to ``s``, or ``s`` lies before the first range but ``e`` reaches it
    (x != y), an existing node is reused and alloc_range() is never called."""
    rs = make([(5, 9)], limit=1)
    rs.add_range(10, 12)  # right-adjacent extension
    assert rs.ranges() == [(5, 12)]
    rs.add_range(3, 7)  # x is NULL, y is the head: the head's start moves to 3
    assert rs.ranges() == [(3, 12)]
    rs.add_range(8, 20)  # overlapping extension
    assert rs.ranges() == [(3, 20)]
    two = make([(0, 4), (10, 14)], limit=2)
    two.add_range(5, 9)  # fills the gap: extend then right-merge
    assert two.ranges() == [(0, 14)]


OPERATIONS: dict[str, Callable[[Rangeset, int, int], object]] = {
    "add_range": lambda rs, s, e: rs.add_range(s, e),
    "remove_range": lambda rs, s, e: rs.remove_range(s, e),
    "contains_range": lambda rs, s, e: rs.contains_range(s, e),
    "overlaps_range": lambda rs, s, e: rs.overlaps_range(s, e),
}


@pytest.mark.parametrize("op", sorted(OPERATIONS))
@pytest.mark.parametrize(
    "bounds",
    [(5, 4), (-1, 3), (0, U64_MAX + 1), (U64_MAX + 1, U64_MAX + 1), (-3, -2)],
)
def test_invalid_bounds_raise_value_error(op: str, bounds: Span) -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0 only ``ASSERT(s <= e)`` (XSA-238, fixed on the
    ioreq path by d59e55b018, RELEASE-4.10.0); the model refuses ``s > e`` and any bound
    outside the ``unsigned long`` range 0..2^64-1 with ValueError."""
    rs = make([(0, 10)])
    with pytest.raises(ValueError, match=r"above its end|outside 0\.\.2\^64-1"):
        OPERATIONS[op](rs, *bounds)
    assert rs.ranges() == [(0, 10)]


def test_lookup_visits_rejects_out_of_range_address() -> None:
    """find_range() takes an ``unsigned long``: addresses outside 0..2^64-1 are errors."""
    rs = make([(0, 10)])
    with pytest.raises(ValueError, match="outside"):
        rs.lookup_visits(-1)
    with pytest.raises(ValueError, match="outside"):
        rs.lookup_visits(U64_MAX + 1)


def test_contains_range_needs_one_range() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_contains_range(): find_range(s) and
    then ``e <= x->e``; because ranges are maximal this is containment in the set."""
    rs = make([(0, 9), (11, 19)])
    assert rs.contains_range(0, 9)
    assert rs.contains_range(3, 5)
    assert not rs.contains_range(5, 15)  # the hole at 10
    assert not rs.contains_range(10, 10)
    assert not rs.contains_range(18, 25)
    rs.add_singleton(10)
    assert rs.contains_range(0, 19)


def test_overlaps_range_semantics() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_overlaps_range(): find_range(e) and
    then ``s <= x->e``: true iff any point of ``[s, e]`` is in the set."""
    rs = make([(10, 19), (40, 49)])
    assert rs.overlaps_range(0, 10)
    assert rs.overlaps_range(19, 30)
    assert rs.overlaps_range(12, 13)
    assert rs.overlaps_range(0, 100)
    assert rs.overlaps_range(25, 40)
    assert not rs.overlaps_range(0, 9)
    assert not rs.overlaps_range(20, 39)
    assert not rs.overlaps_range(50, 60)
    assert not Rangeset().overlaps_range(0, U64_MAX)


def test_contains_singleton_semantics() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_contains_singleton(): the range query
    with ``s == e``; add/remove_singleton likewise."""
    rs = Rangeset()
    assert not rs.contains_singleton(0)
    rs.add_singleton(7)
    rs.add_singleton(8)
    assert rs.ranges() == [(7, 8)]
    assert rs.contains_singleton(7)
    assert rs.contains_singleton(8)
    assert not rs.contains_singleton(6)
    assert not rs.contains_singleton(9)
    rs.remove_singleton(7)
    assert rs.ranges() == [(8, 8)]


def test_limit_none_is_unlimited() -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_new(): ``nr_ranges = -1`` never hits
    the ``== 0`` test in alloc_range(), so a set without rangeset_limit() is unlimited."""
    rs = Rangeset("list", limit=None)
    for i in range(1000):
        rs.add_singleton(2 * i)
    assert len(rs) == 1000
    assert rs.free is None
    rs.remove_range(0, 0)
    rs.add_range(1000, 1000)  # already there: no change
    rs.add_range(3000, 3010)
    rs.remove_range(3004, 3005)  # a split
    assert len(rs) == 1001
    assert rs.free is None


def test_limit_must_be_a_non_negative_int() -> None:
    """rangeset_limit() takes an unsigned count; a negative or non-int limit is refused."""
    with pytest.raises(ValueError, match=">= 0"):
        Rangeset("list", limit=-1)
    with pytest.raises(TypeError):
        Rangeset("list", limit=True)
    with pytest.raises(ValueError, match="unknown rangeset implementation"):
        Rangeset("skiplist")  # type: ignore[arg-type]


def test_printk_format() -> None:
    """xen/common/rangeset.c @RELEASE-4.5.0 lines 443-469, rangeset_printk() with
    RANGESETF_prettyprint_hex: name in 10 columns, ``{``, ``start[-end]`` in %lx, ``}``."""
    rs = Rangeset(name="ioreq_server 0 port")
    rs.add_range(0xCF8, 0xCFF)
    rs.add_singleton(0x3F8)
    assert rs.format() == "ioreq_server 0 port { 3f8, cf8-cff }"
    assert Rangeset(name="mmio").format() == "mmio       { }"


# -- 64-bit edges --------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["list", "rbtree"])
def test_ranges_touching_zero_and_u64_max(impl: RangesetImpl) -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0 works on ``unsigned long``: the whole 64-bit
    space, 0 and 2^64-1 are valid bounds."""
    rs = make([(0, 0), (U64_MAX, U64_MAX)], impl)
    assert rs.ranges() == [(0, 0), (U64_MAX, U64_MAX)]
    assert rs.contains_singleton(0)
    assert rs.contains_singleton(U64_MAX)
    assert not rs.contains_range(0, U64_MAX)
    assert rs.overlaps_range(0, U64_MAX)
    assert rs.lookup_visits(U64_MAX) >= 1
    rs.add_range(1, U64_MAX - 1)
    assert rs.ranges() == [(0, U64_MAX)]
    assert rs.contains_range(0, U64_MAX)
    rs.remove_range(1, U64_MAX - 1)  # a split at both edges
    assert rs.ranges() == [(0, 0), (U64_MAX, U64_MAX)]
    rs.remove_range(0, U64_MAX)
    assert rs.ranges() == []


@pytest.mark.parametrize("impl", ["list", "rbtree"])
def test_adjacency_merge_at_u64_max(impl: RangesetImpl) -> None:
    """xen/common/rangeset.c @RELEASE-4.6.0, rangeset_add_range(): adjacency at the top of
    the address space merges in both orders, and trimming 2^64-1 works."""
    rs = make([(U64_MAX - 9, U64_MAX - 1)], impl)
    rs.add_singleton(U64_MAX)
    assert rs.ranges() == [(U64_MAX - 9, U64_MAX)]
    rs = make([(U64_MAX, U64_MAX)], impl, limit=2)
    rs.add_range(U64_MAX - 9, U64_MAX - 1)  # new node in front, then right-merge
    assert rs.ranges() == [(U64_MAX - 9, U64_MAX)]
    assert rs.free == 1
    rs.remove_singleton(U64_MAX)
    assert rs.ranges() == [(U64_MAX - 9, U64_MAX - 1)]
    assert not rs.contains_singleton(U64_MAX)


# -- list visit counts -----------------------------------------------------------------
THREE = [(10, 19), (30, 39), (50, 59)]


@pytest.mark.parametrize(
    ("addr", "visits"),
    [
        (0, 1),  # below the first range: one visit
        (9, 1),
        (10, 2),  # inside range 1: i + 1
        (15, 2),
        (25, 2),  # in the gap after range 1: k = 1
        (30, 3),  # inside range 2: i + 1
        (39, 3),
        (45, 3),
        (50, 3),  # inside range 3 == N: N
        (59, 3),
        (1000, 3),  # above every start: N
        (U64_MAX, 3),
    ],
)
def test_list_visits_hand_computed(addr: int, visits: int) -> None:
    """xen/common/rangeset.c @RELEASE-4.5.0 lines 44-58, find_range(): a linear walk from
    the head that stops at the first node starting above the address: min(k + 1, N)."""
    assert make(THREE).lookup_visits(addr) == visits


def test_list_visits_empty_and_single() -> None:
    """find_range() on an empty list visits nothing; with one node it always visits it."""
    assert Rangeset().lookup_visits(0) == 0
    assert Rangeset().lookup_visits(U64_MAX) == 0
    one = make([(100, 199)])
    assert [one.lookup_visits(a) for a in (0, 100, 150, 199, 200)] == [1, 1, 1, 1, 1]


def test_list_visits_per_range_index() -> None:
    """find_range(): an address in the i-th range (1-based) costs i + 1, or N if i == N."""
    n = 12
    rs = make([(100 * i, 100 * i + 9) for i in range(n)])
    for i in range(1, n + 1):
        inside = 100 * (i - 1) + 5
        assert rs.lookup_visits(inside) == (i + 1 if i < n else n)


@given(st.lists(spans_small, max_size=25), st.lists(st.integers(0, 300), max_size=10))
def test_list_visits_match_brute_force_walk(spans: list[Span], extra: list[int]) -> None:
    """find_range() cost equals a literal walk of the list, and min(k + 1, N)."""
    rs = make(spans)
    ranges = rs.ranges()
    n = len(ranges)
    for addr in probes_for(ranges, extra):
        k = sum(1 for s, _e in ranges if s <= addr)
        expected = walk_visits(ranges, addr)
        assert rs.lookup_visits(addr) == expected
        assert expected == min(k + 1, n)
        hit, visits = rs.query_range(addr, addr)
        assert visits == expected
        assert hit == rs.contains_singleton(addr)


# -- rbtree (never upstream; see module docstring) ---------------------------------------
def test_rbtree_three_nodes_hand_computed() -> None:
    """Three ascending inserts rotate into a balanced tree: the middle node is the root.
    (An assumption of the simulator: the 2015 rbtree rangeset never landed in xen.git.)"""
    rs = make(THREE, "rbtree")
    assert rs.tree is not None
    rs.tree.check_invariants()
    assert rs.lookup_visits(35) == 1  # the root
    assert rs.lookup_visits(15) == 2
    assert rs.lookup_visits(55) == 2
    assert rs.lookup_visits(0) == 2  # a miss runs to a leaf
    assert rs.lookup_visits(45) == 2
    assert rs.lookup_visits(1000) == 2
    assert Rangeset("rbtree").lookup_visits(5) == 0
    assert make(THREE, "list").lookup_visits(55) == 3


def test_rbtree_ascending_inserts_stay_logarithmic() -> None:
    """Ascending inserts (a degenerate case for an unbalanced tree) keep every search path
    within the red-black bound 2*log2(N + 1)."""
    n = 512
    rs = make([(2 * i, 2 * i) for i in range(n)], "rbtree")
    tree = rs.tree
    assert tree is not None
    tree.check_invariants()
    bound = 2 * math.log2(n + 1)
    assert tree.height() <= bound
    for addr in range(0, 2 * n + 2, 7):
        assert rs.lookup_visits(addr) == descent_visits(rs, addr)
        assert rs.lookup_visits(addr) <= bound


ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove"]),
        st.integers(0, 2000),
        st.integers(0, 40),
    ),
    max_size=60,
)


@given(ops_strategy, st.lists(st.integers(0, 2100), max_size=10))
def test_rbtree_matches_descent(ops: list[tuple[str, int, int]], extra: list[int]) -> None:
    """After any add/remove sequence the tree is a valid red-black tree in range order, and
    each lookup's visits equal an explicit root-to-leaf descent, <= 2*log2(N + 1)."""
    rs = Rangeset("rbtree")
    ref = Rangeset("list")
    tree = rs.tree
    assert tree is not None
    for op, s, length in ops:
        if op == "add":
            rs.add_range(s, s + length)
            ref.add_range(s, s + length)
        else:
            rs.remove_range(s, s + length)
            ref.remove_range(s, s + length)
        tree = rs.tree
        assert tree is not None
        tree.check_invariants()
        # Interleave lookups with updates so cached depths are exercised between changes.
        for addr in (s, s + length, s + length + 1, *extra[:3]):
            assert rs.lookup_visits(addr) == descent_visits(rs, addr)
    ranges = rs.ranges()
    assert ranges == ref.ranges()
    assert len(tree.nodes) == len(ranges)
    n = len(ranges)
    for addr in probes_for(ranges, extra):
        visits = rs.lookup_visits(addr)
        assert visits == descent_visits(rs, addr)
        assert visits <= 2 * math.log2(n + 1)
        assert rs.query_range(addr, addr)[1] == visits


def test_rbtree_clear_resets_tree() -> None:
    """clear() empties the ranges, the modelled tree and restores the budget."""
    rs = make(THREE, "rbtree", limit=4)
    rs.clear()
    assert rs.ranges() == []
    assert rs.free == 4
    assert rs.tree is not None
    assert rs.tree.nodes == []
    assert rs.lookup_visits(15) == 0
    rs.add_range(1, 2)
    rs.tree.check_invariants()
    assert make(THREE, "list").tree is None


# -- stateful: list vs rbtree vs brute force ---------------------------------------------
UNIVERSE = 64
spans_universe = st.tuples(st.integers(0, UNIVERSE - 1), st.integers(0, UNIVERSE - 1)).map(
    lambda t: (min(t), max(t))
)


class RangesetMachine(RuleBasedStateMachine):
    """Both implementations against a point-set model over 0..63 with a random budget.

    Failure rules follow rangeset.c @RELEASE-4.6.0: add allocates iff find_range(s) and
    find_range(e) agree and that node is absent or ends before ``s - 1``; remove allocates
    iff it splits a range; either fails iff it allocates with the budget spent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.limit: int | None = None
        self.sets: list[Rangeset] = []
        self.points: set[int] = set()

    @initialize(limit=st.none() | st.integers(0, 6))
    def setup(self, limit: int | None) -> None:
        self.limit = limit
        self.sets = [Rangeset("list", limit), Rangeset("rbtree", limit)]
        self.points = set()

    def _expect_failure(self, needs_node: bool) -> bool:
        return needs_node and self.limit is not None and len(runs_of(self.points)) == self.limit

    def _apply(self, op: Callable[[Rangeset], None]) -> list[bool]:
        failed: list[bool] = []
        for rs in self.sets:
            before = rs.ranges()
            try:
                op(rs)
            except RangesetFull:
                failed.append(True)
                assert rs.ranges() == before
            else:
                failed.append(False)
        return failed

    @rule(span=spans_universe)
    def add(self, span: Span) -> None:
        s, e = span
        expected = self._expect_failure(add_needs_node(runs_of(self.points), s, e))
        assert self._apply(lambda rs: rs.add_range(s, e)) == [expected, expected]
        if not expected:
            self.points |= set(range(s, e + 1))

    @rule(span=spans_universe)
    def remove(self, span: Span) -> None:
        s, e = span
        expected = self._expect_failure(remove_needs_node(runs_of(self.points), s, e))
        assert self._apply(lambda rs: rs.remove_range(s, e)) == [expected, expected]
        if not expected:
            self.points -= set(range(s, e + 1))

    @rule(span=spans_universe)
    def map_hypercall(self, span: Span) -> None:
        """map_rc is the overlap check (one find_range(e)) then add_range (find_range(s),
        find_range(e)): hvm.c @RELEASE-4.6.0 lines 1273-1277."""
        s, e = span
        overlaps = bool(set(range(s, e + 1)) & self.points)
        needs_node = add_needs_node(runs_of(self.points), s, e)
        full = not overlaps and self._expect_failure(needs_node)
        expected = "EEXIST" if overlaps else "ENOMEM" if full else None
        n = len(runs_of(self.points))
        for rs in self.sets:
            walks = rs.lookup_visits(e)
            if not overlaps:
                walks += rs.lookup_visits(s) + rs.lookup_visits(e)
            rc, visits, before, after = rs.map_rc(s, e)
            assert (rc, visits, before) == (expected, walks, n)
        if expected is None:
            self.points |= set(range(s, e + 1))
        assert after == len(runs_of(self.points))

    @rule(span=spans_universe)
    def unmap_hypercall(self, span: Span) -> None:
        """unmap_rc is the containment check (one find_range(s)) then remove_range (two
        walks): hvm.c @RELEASE-4.6.0 lines 1325-1328."""
        s, e = span
        inside = any(a <= s and e <= b for a, b in runs_of(self.points))
        full = inside and self._expect_failure(remove_needs_node(runs_of(self.points), s, e))
        expected = "ENOENT" if not inside else "ENOMEM" if full else None
        n = len(runs_of(self.points))
        for rs in self.sets:
            walks = 2 * rs.lookup_visits(s) + rs.lookup_visits(e) if inside else rs.lookup_visits(s)
            rc, visits, before, after = rs.unmap_rc(s, e)
            assert (rc, visits, before) == (expected, walks, n)
        if expected is None:
            self.points -= set(range(s, e + 1))
        assert after == len(runs_of(self.points))

    @rule(span=spans_universe)
    def lookups(self, span: Span) -> None:
        s, e = span
        window = set(range(s, e + 1))
        contains = window <= self.points
        overlaps = bool(window & self.points)
        for rs in self.sets:
            assert rs.contains_range(s, e) == contains
            assert rs.overlaps_range(s, e) == overlaps
            assert rs.contains_singleton(s) == (s in self.points)
        list_rs, tree_rs = self.sets
        for addr in (s, e):
            assert list_rs.lookup_visits(addr) == walk_visits(list_rs.ranges(), addr)
            assert tree_rs.lookup_visits(addr) == descent_visits(tree_rs, addr)

    @invariant()
    def agree(self) -> None:
        list_rs, tree_rs = self.sets
        runs = runs_of(self.points)
        assert list_rs.ranges() == tree_rs.ranges() == runs
        assert len(list_rs) == len(tree_rs) == len(runs)
        if self.limit is not None:
            assert len(list_rs) <= self.limit
            assert list_rs.free == tree_rs.free == self.limit - len(runs)
        tree = tree_rs.tree
        assert tree is not None
        tree.check_invariants()


TestRangesetMachine = RangesetMachine.TestCase
