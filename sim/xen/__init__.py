"""The Xen core: rangesets, ioreq servers and their selection, and ``select`` case files.

Faithful to Xen's source (each rule cites its file, line and tag or commit) and free of
SimPy: :mod:`sim.xen.rangeset` (``xen/common/rangeset.c``), :mod:`sim.xen.ioreq` (servers,
hypercalls, ``hvm_select_ioreq_server``), :mod:`sim.xen.casefile` (the regression files of
``vgpu-sim select``). Imports nothing of ``sim`` but :mod:`sim.inputs`.
"""
