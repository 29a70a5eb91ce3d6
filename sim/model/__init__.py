"""The SimPy model built on the Xen core: scenario -> workload -> processes -> records.

:mod:`~sim.model.scenario` (with :mod:`~sim.model.dists` and the platform presets) is the
inert description; :mod:`~sim.model.simulation` wires :mod:`~sim.model.processes` for one
scenario and seed; :mod:`~sim.model.recorder` holds what a run records and
:mod:`~sim.model.summary` tabulates it; :mod:`~sim.model.runner` runs a scenario into a
results directory or a sweep point's record. Imports :mod:`sim.xen`, inputs and results.
"""
