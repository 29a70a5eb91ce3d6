"""The ``vgpu-sim trace fit`` command: its options, and what it prints.

Kept out of ``sim/cli.py`` so that the CLI module stays small; it imports nothing heavy
until the command runs (``vgpu-sim --help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED = 0, 1


def add_fit_parser(
    subparsers: Any,
    cpu_hz: Callable[[str], float],
    positive_int: Callable[[str], int],
) -> argparse.ArgumentParser:
    """Add ``fit`` to the ``trace`` subcommands; the caller sets its ``func``."""
    t = subparsers.add_parser(
        "fit",
        help="fit a scenario to one domain of a capture, run it, and compare",
        description=(
            "Fit a scenario to domain D of a capture: its vCPUs, the devices it trapped on "
            "(ports, MMIO ranges, page tables, grouped and given a server), the think time "
            "between a VM entry and the next I/O exit per vCPU, exit/entry costs and "
            "device-model service, each as a parametric distribution (exponential, "
            "lognormal, gamma by maximum likelihood) or the measured values, by the "
            "criterion fit.md states. Then run the fitted scenario and compare trap rates, "
            "trap-latency quantiles and the KS statistic with the capture. Writes "
            "DIR/scenario.yaml (with its CSVs), DIR/fit.md and DIR/latency_cdf.png/.svg; the "
            "directory appears only when everything succeeded."
        ),
        epilog="Exit status: 0 the fitted scenario reproduces the capture (trap rate within "
        "20 %, mean trap latency within 10 %), 1 it does not (the results are written), "
        "2 bad input (not a capture, no such domain, no I/O exits, DIR exists).",
    )
    t.add_argument("capture", metavar="CAPTURE")
    t.add_argument("--domain", type=int, required=True, metavar="D", help="the domain to fit")
    t.add_argument(
        "--cpu-hz",
        type=cpu_hz,
        metavar="HZ",
        help="the host's TSC rate (2.8e9 or 2.8G); default: host.tsc_hz's default, 2.8 GHz",
    )
    t.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist)")
    t.add_argument(
        "--platform",
        choices=("hsw", "bdw"),
        default="bdw",
        help="the scenario's platform preset (page-table geometry; default: bdw)",
    )
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="override a value of the fitted scenario before it is calibrated and run, e.g. "
        "--set xen.design=p2m-ioreq-server (repeatable)",
    )
    t.add_argument(
        "--max-sim-traps",
        type=positive_int,
        default=200_000,
        metavar="N",
        help="stop the validation run after N traps (default 200000)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar even on a TTY")
    return t


def run_fit(args: argparse.Namespace, progress: Callable[[int, int], None] | None) -> int:
    """Fit, validate, write; print the verdict. Exit 1 when the fitted scenario does not
    reproduce the capture (its results are written all the same)."""
    from sim.inputs import parse_override
    from sim.trace.fit import fit_capture
    from sim.trace.fitreport import write_report

    path, out = Path(args.capture), Path(args.out)
    fit = fit_capture(
        path,
        args.domain,
        out,
        cpu_hz=args.cpu_hz,
        platform=args.platform,
        overrides=[parse_override(text) for text in args.set or []],
        max_sim_traps=args.max_sim_traps,
        progress=progress,
        report=write_report,
    )
    for warning in fit.measured.capture.warnings:
        print(f"vgpu-sim: warning: {path}: {warning}", file=sys.stderr)
    v = fit.validation
    assert v is not None
    for c in v.criteria:
        unit = "/s" if "rate" in c.name else " ns"
        print(
            f"{c.name:<24} measured {c.measured:>12,.1f}{unit:<3} simulated "
            f"{c.simulated:>12,.1f}{unit:<3} error {100 * c.error:+6.1f} % "
            f"(limit {100 * c.tolerance:.0f} %)  {'pass' if c.passed else 'FAIL'}"
        )
    print(f"two-sample KS D = {v.ks_d:.4f} (p = {v.ks_p:.3g}); service from the {fit.path_used}")
    print(f"results: {out} (scenario.yaml, fit.md, latency_cdf.png/.svg)")
    if not v.passed:
        print(
            "vgpu-sim: the fitted scenario does not reproduce the capture; fit.md says where",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
