"""vgpu-sim: a discrete-event model of Xen ioreq-server selection for mediated GPU pass-through.

The package shows its flow in four parts, each importing only the parts below it:

* :mod:`sim.xen`: the Xen core (rangesets, ioreq servers and selection, case files);
* :mod:`sim.model`: the SimPy model on that core (scenario, workload, processes, runs);
* :mod:`sim.study`: studies on the model (sweeps, executors, statistics, figures);
* :mod:`sim.trace`: xentrace captures, beside the scenario.

The public API is importable from here (``from sim import Rangeset, load_scenario, ...``).
Names are resolved lazily, so ``import sim`` stays cheap and pulls in neither SimPy nor
matplotlib until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sim.version import __version__

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # base
    "InputError": "sim.inputs",
    # the Xen core
    "Rangeset": "sim.xen.rangeset",
    "RangesetFull": "sim.xen.rangeset",
    "Access": "sim.xen.ioreq",
    "Design": "sim.xen.ioreq",
    "HypercallError": "sim.xen.ioreq",
    "IoreqDomain": "sim.xen.ioreq",
    "IoreqServer": "sim.xen.ioreq",
    "IoreqType": "sim.xen.abi",
    "MAX_NR_IO_RANGES": "sim.xen.abi",
    "PciSlot": "sim.xen.abi",
    "RangeType": "sim.xen.abi",
    "Route": "sim.xen.ioreq",
    "PROFILES": "sim.xen.profiles",
    "VersionProfile": "sim.xen.profiles",
    "split_access": "sim.xen.emulate",
    "parse_pci_slot": "sim.xen.abi",
    "CaseFile": "sim.xen.casefile",
    "load_case_file": "sim.xen.casefile",
    "run_case": "sim.xen.caserun",
    # the model
    "Scenario": "sim.model.scenario",
    "load_scenario": "sim.model.scenario",
    "scenario_from_data": "sim.model.scenario",
    "Simulation": "sim.model.simulation",
    "RunResult": "sim.model.recorder",
    "summarize": "sim.model.summary",
    "totals": "sim.model.summary",
    "run_to_directory": "sim.model.runner",
    "run_point": "sim.model.runner",
    # studies
    "Sweep": "sim.study.sweepfile",
    "load_sweep": "sim.study.sweepfile",
    "run_sweep": "sim.study.sweep",
    "SweepResults": "sim.study.tables",
    "load_results": "sim.study.tables",
    "format_aggregate": "sim.study.tables",
    "format_number": "sim.study.tables",
    "mean_ci95": "sim.study.stats",
    "latency_figure": "sim.study.plot",
    "platform_pages": "sim.study.plot",
    "visits_figure": "sim.study.plot",
    "series_table": "sim.study.plot",
    "write_figures": "sim.study.plot",
    "Capture": "sim.trace.reader",
    "CaptureSummary": "sim.trace.reader",
    "summarize_capture": "sim.trace.reader",
    "ArcBatch": "sim.trace.arcs",
    "RoundTrips": "sim.trace.roundtrip",
    "CaptureWriter": "sim.trace.writer",
    "fit_capture": "sim.trace.fit",
    "open_capture": "sim.trace.replay",
}

__all__ = [
    "MAX_NR_IO_RANGES",
    "PROFILES",
    "Access",
    "ArcBatch",
    "Capture",
    "CaptureSummary",
    "CaptureWriter",
    "CaseFile",
    "Design",
    "HypercallError",
    "InputError",
    "IoreqDomain",
    "IoreqServer",
    "IoreqType",
    "PciSlot",
    "RangeType",
    "Rangeset",
    "RangesetFull",
    "RoundTrips",
    "Route",
    "RunResult",
    "Scenario",
    "Simulation",
    "Sweep",
    "SweepResults",
    "VersionProfile",
    "__version__",
    "fit_capture",
    "format_aggregate",
    "format_number",
    "latency_figure",
    "load_case_file",
    "load_results",
    "load_scenario",
    "load_sweep",
    "mean_ci95",
    "open_capture",
    "parse_pci_slot",
    "platform_pages",
    "run_case",
    "run_point",
    "run_sweep",
    "run_to_directory",
    "scenario_from_data",
    "series_table",
    "split_access",
    "summarize",
    "summarize_capture",
    "totals",
    "visits_figure",
    "write_figures",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors; at run time names resolve lazily
    from sim.inputs import InputError
    from sim.model.recorder import RunResult
    from sim.model.runner import run_point, run_to_directory
    from sim.model.scenario import Scenario, load_scenario, scenario_from_data
    from sim.model.simulation import Simulation
    from sim.model.summary import summarize, totals
    from sim.study.plot import (
        latency_figure,
        platform_pages,
        series_table,
        visits_figure,
        write_figures,
    )
    from sim.study.stats import mean_ci95
    from sim.study.sweep import run_sweep
    from sim.study.sweepfile import Sweep, load_sweep
    from sim.study.tables import SweepResults, format_aggregate, format_number, load_results
    from sim.trace.arcs import ArcBatch
    from sim.trace.fit import fit_capture
    from sim.trace.reader import Capture, CaptureSummary, summarize_capture
    from sim.trace.replay import open_capture
    from sim.trace.roundtrip import RoundTrips
    from sim.trace.writer import CaptureWriter
    from sim.xen.abi import MAX_NR_IO_RANGES, IoreqType, PciSlot, RangeType, parse_pci_slot
    from sim.xen.casefile import CaseFile, load_case_file
    from sim.xen.caserun import run_case
    from sim.xen.emulate import split_access
    from sim.xen.ioreq import Access, Design, HypercallError, IoreqDomain, IoreqServer, Route
    from sim.xen.profiles import PROFILES, VersionProfile
    from sim.xen.rangeset import Rangeset, RangesetFull
