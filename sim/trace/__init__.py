"""xentrace captures beside the scenario: read, summarise, write, fit and replay.

Empty for now; it may import :mod:`sim.model` and :mod:`sim.xen`.
"""
