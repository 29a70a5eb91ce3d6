"""vgpu-sim: a discrete-event model of Xen ioreq-server selection for mediated GPU pass-through.

Flow: a scenario (``sim.scenario``) describes guests, device models and costs; the SimPy
model (``sim.model``) runs it; results (``sim.results``) are written atomically and
plotted (``sim.plot``). ``sim.rangeset`` and ``sim.ioreq`` hold the Xen semantics.
"""

__version__ = "0.1.0"
