"""What the command line checks before anything runs.

* :func:`describe_file`: which kind a file is (a scenario, a sweep or a case file, told
  apart by their keys), validated in full, and its size: a scenario's expected events, a
  sweep's points, runs and events (``vgpu-sim validate``).
* :func:`check_output_location`: an output directory a run could not create is refused
  before the run, not after it.
* :func:`int_in` and :func:`max_events_option`: bounded numbers on the command line, like
  every number in a file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from sim.inputs import OutputError, echo


def describe_file(path: str, max_events: int) -> str:
    """Validate a scenario, sweep or case file, whichever it is; one line about it."""
    from sim.inputs import load_yaml

    data = load_yaml(path)
    keys = set(data) if isinstance(data, dict) else set()
    if keys & {"axes", "base", "replications"}:
        from sim.study.sweepfile import load_sweep

        sweep = load_sweep(path)
        return f"{path}: ok (sweep {sweep.name}, {sweep.size(max_events)})"
    if keys & {"accesses", "servers"}:
        from sim.xen.casefile import load_case_file

        case = load_case_file(path)
        n, m = len(case.servers), len(case.accesses)
        return f"{path}: ok (case file, {n} server{'s' * (n != 1)}, {m} access{'es' * (m != 1)})"
    from sim.model.budget import estimate_run
    from sim.model.scenario import scenario_from_data

    scenario = scenario_from_data(data, path)
    estimate = estimate_run(scenario, Path(path).parent)
    over = f", above --max-events {max_events:,}" if estimate.work > max_events else ""
    return (
        f"{path}: ok (scenario {scenario.name}, sha256 {scenario.sha256()[:12]}, "
        f"{estimate.describe()}{over})"
    )


def check_output_location(out_dir: Path) -> None:
    """Refuse, before a run starts, an output the run could not write: one that exists,
    or one under a file or a directory we may not write to."""
    try:
        if out_dir.exists() or out_dir.is_symlink():
            raise OutputError(out_dir, "--out", "already exists; results are never overwritten")
        here = out_dir.parent
        while not here.exists():
            here = here.parent
        if not here.is_dir():
            raise OutputError(out_dir, "", f"cannot be created: {here} is not a directory")
    except OSError as exc:  # a parent we may not even look into
        raise OutputError(out_dir, "", f"cannot be created: {exc.strerror or exc}") from None
    if not os.access(here, os.W_OK | os.X_OK):
        raise OutputError(out_dir, "", f"cannot be created: {here} is not writable")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {echo(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:,}, {high:,}], got {value:,}")
        return value

    parse.__name__ = "integer"
    return parse


MAX_JOBS = 256  # a process per job: more than a machine's CPUs only adds memory


def max_events_option(p: argparse.ArgumentParser) -> None:
    from sim.model.budget import DEFAULT_MAX_EVENTS, MAX_EVENTS_LIMIT

    p.add_argument(
        "--max-events",
        type=int_in(1, MAX_EVENTS_LIMIT),
        default=DEFAULT_MAX_EVENTS,
        metavar="N",
        help="most work one run may do, in SimPy events plus map/unmap hypercalls "
        f"(default {DEFAULT_MAX_EVENTS:,}, minutes of work): a run expected to need more is "
        "refused before it starts (exit 2), one that needs more than expected stops (exit 1)",
    )
