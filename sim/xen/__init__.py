"""The Xen core: rangesets, ioreq servers, routing release by release, and ``select`` case files.

Faithful to Xen's source (each rule cites its file, line and tag or commit) and free of
SimPy: :mod:`sim.xen.rangeset` (``xen/common/rangeset.c``), :mod:`sim.xen.profiles` (what
each release does: 4.6, 4.9, 4.12, master), :mod:`sim.xen.intercept` (Xen's own
emulators), :mod:`sim.xen.emulate` (how one access becomes requests), :mod:`sim.xen.ioreq`
with :mod:`sim.xen.routing` and :mod:`sim.xen.memtypes` (servers, hypercalls, selection,
page types), :mod:`sim.xen.casefile` (the regression files of ``vgpu-sim select``).
Imports nothing of ``sim`` but :mod:`sim.inputs`.
"""
