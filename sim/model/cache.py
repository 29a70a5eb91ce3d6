"""What one rangeset node visit costs: a cache model per data structure.

A lookup's node count comes from :mod:`sim.xen` (``min(k + 1, N)`` for Xen's list, a
search-path length for the never-landed tree); this module prices those visits.

**Node layout.** Xen allocates every ``struct range`` (a ``list_head`` and ``s, e``: 32 B,
``xen/common/rangeset.c`` @RELEASE-4.6.0, lines 16-19) with ``xmalloc``; the TLSF pool
adds a 16-byte block header (``BHDR_OVERHEAD``, ``xen/common/xmalloc_tlsf.c`` @4.6, lines
35-47 and 77-91), so a node is a 48-byte block. Nodes are allocated one by one as pages
are mapped, among every other ``xmalloc`` of the hypervisor, so the model takes them as
scattered: each node's hot fields (its next pointer and start, 24 B) sit in a 64-byte
cache line of their own. The 2015 tree's node layout was never published; the model
assumes ``rb_node`` (24 B) plus ``s, e`` (16 B), a 64-byte block, also one line.

**Where a node is.** The working set of ``n`` nodes is ``n * 64`` bytes. Against each
cache level of capacity ``C`` (the level's size times ``cache_share``, since the guest
runs in between), a node is found at or above that level with probability
``min(1, C / working set)``: the share of the working set that fits. A visit costs the
expected load-to-use latency over L1, L2, L3 and DRAM. This smooths the step between
levels; it is not an LRU simulation.

**List.** ``find_range()`` walks from the head (rangeset.c @4.6, ``find_range``): each
visit is a dependent load (``y = y->next``) into the scattered nodes, and every lookup
walks from the front, so all N nodes are hot. A visit costs the latency at the working
set of the whole list plus one cycle for the (well-predicted) compare.

**Tree.** A descent visits one node per level. The top levels are shared by every lookup
and stay cached; level ``d`` (the root is 1) has ``2**d - 1`` nodes at or above it, its
working set. A visit costs the latency at that working set, a compare, and half a branch
misprediction: the descent goes left or right at random.

``costs.visit_ns`` set to a number replaces all this with a flat cost per visit for
every structure (the model before issue #12; tests and sensitivity sweeps).
"""

from __future__ import annotations

from collections.abc import Callable

from sim.model.host import CpuCaches

LINE_BYTES = 64
KB = 1024
#: Cycles of the compare a visit does besides its load.
COMPARE_CYCLES = 1.0
#: Tree levels priced in advance; an rbtree of N nodes is at most 2*log2(N+1) deep.
MAX_DEPTH = 64


class VisitCost:
    """Prices node visits of one rangeset implementation on one platform (ns)."""

    __slots__ = ("_flat", "_levels", "_list", "_tree", "_tree_extra_ns", "cpu", "impl", "walk_ns")

    def __init__(self, cpu: CpuCaches, impl: str, flat_ns: float | None = None) -> None:
        self.cpu = cpu
        self.impl = impl
        self._flat = flat_ns
        ghz = cpu.clock_ghz
        share = cpu.cache_share
        # (capacity in bytes, latency in ns), nearest level first.
        self._levels = [
            (cpu.l1d_kb * KB * share, cpu.l1d_cycles / ghz),
            (cpu.l2_kb * KB * share, cpu.l2_cycles / ghz),
            (cpu.l3_kb * KB * share, cpu.l3_cycles / ghz),
        ]
        self._tree_extra_ns = (COMPARE_CYCLES + cpu.mispredict_cycles / 2) / ghz
        self._list: dict[int, float] = {}  # nodes -> ns per visit
        self._tree: dict[int, list[float]] = {}  # nodes -> cost of a path of v visits
        #: ``walk_ns(visits, nodes)``: one lookup that visits ``visits`` nodes of a set of
        #: ``nodes`` nodes. Every trap prices its walk, so the structure's own pricing is
        #: bound here once rather than chosen on each call.
        self.walk_ns = (
            self._flat_walk_ns
            if flat_ns is not None
            else self._list_walk_ns
            if impl == "list"
            else self._tree_walk_ns
        )

    def load_ns(self, nodes: float) -> float:
        """Expected latency of a dependent load into a working set of ``nodes`` lines."""
        size = max(nodes, 1.0) * LINE_BYTES
        cost = 0.0
        found = 0.0  # probability the line is at or above the current level
        for capacity, latency in self._levels:
            here = min(1.0, capacity / size)
            cost += (here - found) * latency
            found = max(found, here)
        return cost + (1.0 - found) * self.cpu.dram_ns

    def list_visit_ns(self, nodes: int) -> float:
        """One list visit in a list of ``nodes`` nodes."""
        cost = self._list.get(nodes)
        if cost is None:
            cost = self.load_ns(nodes) + COMPARE_CYCLES / self.cpu.clock_ghz
            self._list[nodes] = cost
        return cost

    def tree_path(self, nodes: int) -> list[float]:
        """``path[v]``: the cost of a descent that visits ``v`` levels of ``nodes`` nodes."""
        path = self._tree.get(nodes)
        if path is None:
            path = [0.0]
            for depth in range(1, MAX_DEPTH + 1):
                above = min((1 << depth) - 1, max(nodes, 1))
                path.append(path[-1] + self.load_ns(above) + self._tree_extra_ns)
            self._tree[nodes] = path
        return path

    def _flat_walk_ns(self, visits: int, nodes: int) -> float:
        return visits * self._flat  # type: ignore[operator]

    def _list_walk_ns(self, visits: int, nodes: int) -> float:
        cost = self._list.get(nodes)
        if cost is None:
            cost = self.list_visit_ns(nodes)
        return visits * cost

    def _tree_walk_ns(self, visits: int, nodes: int) -> float:
        path = self.tree_path(nodes)
        return path[visits] if visits <= MAX_DEPTH else path[-1] * visits / MAX_DEPTH

    def walks_pricer(self, walks: int) -> Callable[[int, int], float]:
        """``price(visits, nodes)`` of ``walks`` lookups that visit ``visits`` nodes
        between them (a hypercall's ``find_range`` calls, which look up the same page and
        so walk alike). A list's visits, or flat-priced ones, cost the same wherever they
        fall, so the pricing is :attr:`walk_ns` itself, bound once for every hypercall."""
        walk_ns = self.walk_ns
        if walks <= 1 or self._flat is not None or self.impl == "list":
            return walk_ns
        return lambda visits, nodes: walks * walk_ns(round(visits / walks), nodes)
