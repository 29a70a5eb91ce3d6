"""A red-black tree kept in step with a rangeset, for the never-landed rbtree rangeset.

The 2015 series "Refactor ioreq server for better performance" proposed replacing the
rangeset's sorted list with a red-black tree. It never landed upstream (no rbtree rangeset
on any xen.git ref), so the tree here is the textbook one (CLRS 3rd ed., ch. 13), used by
:mod:`sim.xen.rangeset` to know how deep each range's node sits: a lookup's cost.
"""

from __future__ import annotations


class _Node:
    __slots__ = ("depth", "left", "parent", "red", "right", "stamp")

    def __init__(self, nil: _Node | None) -> None:
        self.depth = 0
        self.stamp = -1  # the tree epoch at which ``depth`` was last known right
        self.left: _Node = nil if nil is not None else self
        self.right: _Node = nil if nil is not None else self
        self.parent: _Node = nil if nil is not None else self
        self.red = nil is not None


class RedBlackTree:
    """A CLRS red-black tree whose in-order sequence mirrors a rangeset's sorted ranges.

    Nodes carry no keys: the rangeset tells the tree *where* in the in-order sequence a
    node is inserted or deleted, which is exactly where a key-comparing insert would put
    it, because the rangeset's ranges are sorted and disjoint. The tree is then the same
    shape a keyed red-black tree would have after the same sequence of operations.
    """

    __slots__ = ("epoch", "nil", "nodes", "root")

    def __init__(self) -> None:
        # Bumped by every rotation and deletion: the only changes that move existing
        # nodes up or down. Depths cached at the current epoch are still right, so
        # lookups between structural changes cost O(1).
        self.epoch = 0
        self.nil = _Node(None)
        self.nil.red = False
        self.root = self.nil
        self.nodes: list[_Node] = []  # in-order, aligned with the rangeset's arrays

    # -- queries ---------------------------------------------------------------------
    def depth(self, index: int) -> int:
        """Number of nodes on the path from the root down to the index-th node."""
        node = self.nodes[index]
        epoch = self.epoch
        if node.stamp == epoch:
            return node.depth
        nil = self.nil
        path = []
        while node is not nil and node.stamp != epoch:
            path.append(node)
            node = node.parent
        d = 0 if node is nil else node.depth
        for n in reversed(path):
            d += 1
            n.depth = d
            n.stamp = epoch
        return d

    def height(self) -> int:
        def h(node: _Node) -> int:
            return 0 if node is self.nil else 1 + max(h(node.left), h(node.right))

        return h(self.root)

    # -- rotations and fix-ups (CLRS 3rd ed., ch. 13) -----------------------------------
    def _rotate_left(self, x: _Node) -> None:
        self.epoch += 1
        y = x.right
        x.right = y.left
        if y.left is not self.nil:
            y.left.parent = x
        y.parent = x.parent
        if x.parent is self.nil:
            self.root = y
        elif x is x.parent.left:
            x.parent.left = y
        else:
            x.parent.right = y
        y.left = x
        x.parent = y

    def _rotate_right(self, x: _Node) -> None:
        self.epoch += 1
        y = x.left
        x.left = y.right
        if y.right is not self.nil:
            y.right.parent = x
        y.parent = x.parent
        if x.parent is self.nil:
            self.root = y
        elif x is x.parent.right:
            x.parent.right = y
        else:
            x.parent.left = y
        y.right = x
        x.parent = y

    def insert_at(self, index: int) -> None:
        """Insert a node so that it becomes the index-th in in-order sequence."""
        nil = self.nil
        z = _Node(nil)
        nodes = self.nodes
        if not nodes:
            self.root = z
            z.parent = nil
        elif index > 0 and nodes[index - 1].right is nil:
            pred = nodes[index - 1]
            pred.right = z
            z.parent = pred
        else:
            # The in-order successor has no left child whenever the predecessor has a
            # right child (or there is no predecessor): that is the BST insertion point.
            succ = nodes[index]
            succ.left = z
            z.parent = succ
        nodes.insert(index, z)
        self._insert_fixup(z)

    def _insert_fixup(self, z: _Node) -> None:
        while z.parent.red:
            gp = z.parent.parent
            if z.parent is gp.left:
                y = gp.right
                if y.red:
                    z.parent.red = False
                    y.red = False
                    gp.red = True
                    z = gp
                else:
                    if z is z.parent.right:
                        z = z.parent
                        self._rotate_left(z)
                    z.parent.red = False
                    z.parent.parent.red = True
                    self._rotate_right(z.parent.parent)
            else:
                y = gp.left
                if y.red:
                    z.parent.red = False
                    y.red = False
                    gp.red = True
                    z = gp
                else:
                    if z is z.parent.left:
                        z = z.parent
                        self._rotate_right(z)
                    z.parent.red = False
                    z.parent.parent.red = True
                    self._rotate_left(z.parent.parent)
        self.root.red = False

    def _transplant(self, u: _Node, v: _Node) -> None:
        if u.parent is self.nil:
            self.root = v
        elif u is u.parent.left:
            u.parent.left = v
        else:
            u.parent.right = v
        v.parent = u.parent

    def delete_at(self, index: int) -> None:
        """Delete the index-th node (in-order)."""
        nil = self.nil
        self.epoch += 1
        z = self.nodes.pop(index)
        y = z
        y_was_red = y.red
        if z.left is nil:
            x = z.right
            self._transplant(z, z.right)
        elif z.right is nil:
            x = z.left
            self._transplant(z, z.left)
        else:
            y = z.right
            while y.left is not nil:
                y = y.left
            y_was_red = y.red
            x = y.right
            if y.parent is z:
                x.parent = y
            else:
                self._transplant(y, y.right)
                y.right = z.right
                y.right.parent = y
            self._transplant(z, y)
            y.left = z.left
            y.left.parent = y
            y.red = z.red
        if not y_was_red:
            self._delete_fixup(x)
        nil.parent = nil  # the sentinel's parent is scratch space during the fix-up

    def _delete_fixup(self, x: _Node) -> None:
        while x is not self.root and not x.red:
            if x is x.parent.left:
                w = x.parent.right
                if w.red:
                    w.red = False
                    x.parent.red = True
                    self._rotate_left(x.parent)
                    w = x.parent.right
                if not w.left.red and not w.right.red:
                    w.red = True
                    x = x.parent
                else:
                    if not w.right.red:
                        w.left.red = False
                        w.red = True
                        self._rotate_right(w)
                        w = x.parent.right
                    w.red = x.parent.red
                    x.parent.red = False
                    w.right.red = False
                    self._rotate_left(x.parent)
                    x = self.root
            else:
                w = x.parent.left
                if w.red:
                    w.red = False
                    x.parent.red = True
                    self._rotate_right(x.parent)
                    w = x.parent.left
                if not w.right.red and not w.left.red:
                    w.red = True
                    x = x.parent
                else:
                    if not w.left.red:
                        w.right.red = False
                        w.red = True
                        self._rotate_left(w)
                        w = x.parent.left
                    w.red = x.parent.red
                    x.parent.red = False
                    w.left.red = False
                    self._rotate_right(x.parent)
                    x = self.root
        x.red = False

    # -- verification (used by the tests) --------------------------------------------
    def check_invariants(self) -> None:
        """Raise AssertionError unless this is a valid red-black tree over ``nodes``."""
        nil = self.nil
        if nil.red:
            raise AssertionError("sentinel is red")
        if self.root is not nil and (self.root.red or self.root.parent is not nil):
            raise AssertionError("root is red or has a parent")
        inorder: list[_Node] = []

        def walk(node: _Node) -> int:
            if node is nil:
                return 1
            for child in (node.left, node.right):
                if child is not nil and child.parent is not node:
                    raise AssertionError("broken parent link")
                if node.red and child.red:
                    raise AssertionError("red node with a red child")
            left = walk(node.left)
            inorder.append(node)
            right = walk(node.right)
            if left != right:
                raise AssertionError("unequal black heights")
            return left + (0 if node.red else 1)

        walk(self.root)
        if len(inorder) != len(self.nodes) or any(
            a is not b for a, b in zip(inorder, self.nodes, strict=True)
        ):
            raise AssertionError("in-order sequence differs from the rangeset order")
