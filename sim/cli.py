"""The ``vgpu-sim`` command line.

Every subcommand returns an exit status: 0 for success, 1 for a failed expectation or a
failed run, 2 for bad input (a message naming the file, key path and problem; no
traceback), and for an output location that cannot be used. Progress and warnings go to
stderr, tables and results paths to stdout.

It behaves like a Unix tool (:mod:`sim.console`): SIGTERM is handled like Ctrl-C
(nothing half-written is left; exit 143, 130 for Ctrl-C); output piped into ``head`` ends
quietly with status 141, as if SIGPIPE had killed it; and a stdout that cannot encode "±"
or "µ" (an ASCII locale) gets ASCII stand-ins instead of a UnicodeEncodeError.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sim.console import (
    Terminated,
    quiet_broken_pipe,
    tty_bytes_progress,
    tty_progress,
    unix_behaviour,
)
from sim.inputs import InputError
from sim.preflight import (
    MAX_JOBS,
    check_output_location,
    describe_file,
    int_in,
    max_events_option,
)
from sim.version import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes` in `yes | head`


def _error(message: object) -> None:
    print(f"vgpu-sim: error: {message}", file=sys.stderr)


def _cmd_select(args: argparse.Namespace) -> int:
    from sim.xen.casereport import run_case_file

    # Check every file even when one is broken; the worst outcome sets the exit status.
    status = EXIT_OK
    for path in args.cases:
        try:
            status = max(status, run_case_file(Path(path), sys.stdout, verbose=not args.quiet))
        except InputError as exc:
            _error(exc)
            status = EXIT_BAD_INPUT
    return status


def _run_outputs(args: argparse.Namespace, scenario: object) -> list:
    if not args.xentrace:
        return []
    from sim.trace.writer import xentrace_output

    return [xentrace_output(scenario)]  # type: ignore[arg-type]


def _replay_opener(scenario: Any) -> Any:
    """The capture reader for guests that replay a capture (sim.model.replay), if any do;
    it says on stderr what each capture holds."""
    if not any(g.replay is not None for g in scenario.guests):
        return None
    from sim.trace.replay import open_capture

    def opener(path: Path, domain: int, tsc_hz: float) -> Any:
        replay = open_capture(path, domain, tsc_hz)
        per_vcpu = ", ".join(f"vCPU {v}: {n:,}" for v, n in replay.accesses.items())
        left_out = (
            f"; {replay.skipped:,} port reads without their port left out" if replay.skipped else ""
        )
        print(f"replaying domain {domain} of {path}: {per_vcpu}{left_out}", file=sys.stderr)
        return replay

    return opener


def _cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            print(describe_file(path, args.max_events))
        except InputError as exc:
            _error(exc)
            status = EXIT_BAD_INPUT
    return status


def _cmd_run(args: argparse.Namespace) -> int:
    from sim.inputs import parse_override, validate_value
    from sim.model.bounds import Seed
    from sim.model.budget import RunBudgetError, estimate_run
    from sim.model.runner import default_run_dir, no_trap_message, run_to_directory
    from sim.model.scenario import load_scenario
    from sim.model.summary import correctness_warning, format_table

    overrides = [parse_override(text) for text in args.set or []]
    scenario = load_scenario(args.scenario, overrides)
    seed = scenario.seed
    if args.seed is not None:
        seed = validate_value(Seed, args.seed, "--seed", str(args.seed))
    base_dir = Path(args.scenario).parent
    estimate = estimate_run(scenario, base_dir)
    if estimate.work > args.max_events:
        raise InputError(
            args.scenario,
            "--max-events",
            f"the run needs {estimate.describe()}, above --max-events {args.max_events:,}: "
            "shorten duration_ms, set max_accesses or raise --max-events",
        )
    out_dir = Path(args.out) if args.out is not None else None
    if out_dir is None:
        out_dir = default_run_dir(Path(args.results), scenario, seed)
    check_output_location(out_dir)
    try:
        with tty_progress(scenario.name, enabled=not args.no_progress) as progress:
            rows, totals = run_to_directory(
                scenario,
                seed,
                out_dir,
                base_dir=base_dir,
                scenario_file=str(args.scenario),
                trace=args.trace,
                progress=progress,
                argv=["vgpu-sim", *sys.argv[1:]],
                outputs=_run_outputs(args, scenario),
                replay_opener=_replay_opener(scenario),
                max_events=args.max_events,
                on_start=lambda: print(
                    f"{scenario.name}: {estimate.describe()} expected", file=sys.stderr
                ),
            )
    except RunBudgetError as exc:
        _error(f"{args.scenario}: {exc}; nothing was written")
        return EXIT_FAILED
    x = scenario.xen
    print(
        f"{scenario.name}: Xen {x.version}, design {x.design}, rangeset {x.rangeset}, "
        f"max_nr_io_ranges {x.max_nr_io_ranges}, seed {seed}"
    )
    print(format_table(rows, totals))
    warning = correctness_warning(totals)
    if warning:
        print(warning)
    print(f"results: {out_dir}")
    if not totals["accesses"]:
        print(f"vgpu-sim: warning: {args.scenario}: {no_trap_message(scenario)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_trace_summarize(args: argparse.Namespace) -> int:
    from sim.trace import report
    from sim.trace.reader import summarize_capture

    path = Path(args.capture)
    big = path.is_file() and path.stat().st_size >= 64 << 20
    with tty_bytes_progress(path.name, enabled=big and not args.no_progress) as progress:
        summary = summarize_capture(path, args.cpu_hz, args.domain, progress)
    for warning in summary.warnings:
        print(f"vgpu-sim: warning: {path}: {warning}", file=sys.stderr)
    if args.format == "json":
        sys.stdout.write(report.to_json(summary))
    elif args.format == "csv":
        rows = report.table(summary, args.table)
        columns = report.EXIT_COLUMNS if args.table == "exits" else None
        sys.stdout.write(report.to_csv(rows, columns))
    else:
        sys.stdout.write(report.to_text(summary))
    return EXIT_OK


def _cmd_trace_fit(args: argparse.Namespace) -> int:
    from sim.trace.fitcli import run_fit

    path = Path(args.capture)
    big = path.is_file() and path.stat().st_size >= 64 << 20
    with tty_bytes_progress(path.name, enabled=big and not args.no_progress) as progress:
        return run_fit(args, progress)


def _cpu_hz(text: str) -> float:
    """A TSC rate: ``2.8e9``, ``2800000000`` or, as xenalyze takes it, ``2.8G``."""
    scale = {"G": 1e9, "M": 1e6, "K": 1e3}.get(text[-1:].upper(), 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a frequency: {text!r}") from None
    from sim.model.bounds import MAX_TSC_HZ, MIN_TSC_HZ  # host.tsc_hz's: a fit writes it

    if not (MIN_TSC_HZ <= value <= MAX_TSC_HZ):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a rate between 100M and 100G Hz")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    from sim.bench import format_report, main_json, run_bench

    print("measuring (a few minutes; --quick for a rough pass) ...", file=sys.stderr)
    figures = run_bench(
        quick=args.quick,
        rss=not args.no_rss,
        sweep=not args.no_sweep,
        callgrind=not args.no_callgrind,
    )
    print(main_json(figures) if args.json else format_report(figures))
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from sim.study.sweep import run_sweep
    from sim.study.sweepfile import default_out_dir, load_sweep
    from sim.study.tables import format_aggregate, load_results

    sweep = load_sweep(args.sweep)
    for point in sweep.points:
        if point.work > args.max_events:
            raise InputError(
                args.sweep,
                "point {" + point.describe() + "}",
                f"a run needs ~{point.work:,.0f} events, above --max-events "
                f"{args.max_events:,}: shorten duration_ms or raise --max-events",
            )
    backend = args.backend or ("dask" if args.scheduler else "process")
    out_dir = Path(args.out) if args.out else default_out_dir(args.sweep)
    outcome = run_sweep(
        sweep,
        out_dir,
        jobs=args.jobs,
        backend=backend,
        scheduler=args.scheduler,
        progress="none" if args.no_progress else None,
        plot=not args.no_plot,
        argv=["vgpu-sim", *sys.argv[1:]],
        max_events=args.max_events,
    )
    where = f"dask scheduler {args.scheduler}" if args.scheduler else f"{backend}, jobs {args.jobs}"
    print(
        f"{sweep.name}: {len(sweep.points)} points x {sweep.spec.replications} replications: "
        f"{outcome.ran} run, {outcome.reused} reused, {outcome.failed} failed "
        f"({outcome.wall_s:.1f} s, {where})"
    )
    print(format_aggregate(load_results(out_dir)))
    if outcome.failed:
        print(
            f"{outcome.failed} runs failed; their errors are in {out_dir / 'points'} and "
            "points.csv. Run the same command again to retry them.",
            file=sys.stderr,
        )
    print(f"results: {out_dir}")
    return EXIT_FAILED if outcome.failed else EXIT_OK


def _cmd_plot(args: argparse.Namespace) -> int:
    from sim.study.plot import write_figures

    files = write_figures(args.results_dir)
    if not files:
        print(f"{args.results_dir}: no successful runs to plot", file=sys.stderr)
        return EXIT_FAILED
    for path in files:
        print(path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgpu-sim",
        description=(
            "Simulate how Xen routes trapped guest GPU accesses (PIO, MMIO, writes to "
            "write-protected PPGTT pages) to ioreq servers, and what rangeset size does "
            "to trap latency and correctness."
        ),
        epilog="Exit status: 0 ok, 1 a check or run failed, 2 bad input or an unusable "
        "output location; 130 Ctrl-C, 143 SIGTERM, 141 a closed output pipe.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "select",
        help="route the accesses of case files as Xen would, and check expectations",
        description=(
            "Build the ioreq servers of each case file, map their ranges through Xen's "
            "hypercall semantics, route every access as the file's Xen release does "
            "(Xen's own emulators first, then the emulator's splits, then the ioreq "
            "servers' rangesets), and print the chosen handler, rewritten request and "
            "nodes visited. Exit 1 if any expectation (expect, expect_visits, "
            "expect_ioreq, expect_emulators_checked, expect_rc) fails."
        ),
    )
    p.add_argument("cases", nargs="+", metavar="CASES.yaml", help="case file(s)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only mismatches")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser(
        "validate",
        help="check scenario, sweep and case files without running them",
        description="Load and fully validate scenario files (schema, presets, CSVs, the "
        "expected size of a run), sweep files (every point) and case files, recognising "
        "each by its keys. Every file is checked; exit 2 if any is bad.",
    )
    p.add_argument("files", nargs="+", metavar="FILE.yaml")
    max_events_option(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "run",
        help="run one scenario and write its results",
        description=(
            "Run one scenario through the SimPy model and write manifest.json and "
            "summary.csv (and trace.csv with --trace) to results/<scenario>/<run-id>/, "
            "or to --out DIR. The directory appears only when the run succeeds. Exit 1 "
            "if the run measured no trap."
        ),
    )
    p.add_argument("scenario", metavar="SCENARIO.yaml")
    p.add_argument("--seed", type=int, help="override the scenario's seed (0 .. 2^64-1)")
    p.add_argument("--out", metavar="DIR", help="write the run to DIR (must not exist)")
    p.add_argument(
        "--results", default="results", metavar="ROOT", help="results root (default: results)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="override a scenario value, e.g. --set xen.rangeset=rbtree "
        "--set guests[0].vgpu.ppgtt.live_pages=4096 (repeatable)",
    )
    p.add_argument("--trace", action="store_true", help="also write trace.csv, one row per access")
    p.add_argument(
        "--xentrace",
        action="store_true",
        help="also write xentrace.bin: the run as Xen's tracer would have recorded it "
        "(guests are domains 1, 2, ...; TSC at host.tsc_hz), readable by 'vgpu-sim trace "
        "summarize' and by xenalyze",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a TTY")
    max_events_option(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "trace",
        help="read xentrace captures (trace summarize, trace fit)",
        description="Work with binary xentrace captures of a Xen host or of a run.",
    )
    trace_sub = p.add_subparsers(dest="trace_command", metavar="TRACE_COMMAND", required=True)
    t = trace_sub.add_parser(
        "summarize",
        help="per-vCPU exit reasons, addresses, p2m types and ioreq round trips",
        description=(
            "Decode a xentrace capture (per-pCPU windows merged by TSC as xenalyze merges "
            "them), attribute records to vCPUs from the scheduler records, and summarise "
            "the exit arcs (exit to next entry, or to the wake-up of a vCPU that blocked) "
            "per domain, vCPU and VMX exit reason; count and mean_cycles equal "
            "'xenalyze --summary'. Also: a table per port and MMIO address, EPT violations "
            "per p2m type, lost records, and the ioreq round trip split into exit -> dom0 "
            "running -> device model done -> guest running where scheduler records allow."
        ),
        epilog="Exit status: 0 ok (a capture cut short is summarised up to the cut, with a "
        "warning), 2 not a capture.",
    )
    t.add_argument("capture", metavar="CAPTURE")
    t.add_argument(
        "--cpu-hz",
        type=_cpu_hz,
        metavar="HZ",
        help="the host's TSC rate (2.8e9 or 2.8G): adds mean_us and seconds",
    )
    t.add_argument("--domain", type=int, metavar="D", help="only domain D")
    t.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="default: table"
    )
    t.add_argument(
        "--table",
        choices=("exits", "addresses", "npf", "stages"),
        default="exits",
        help="which table --format csv prints (default: exits, one row per domain, vCPU and "
        "exit reason)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar even on a TTY")
    t.set_defaults(func=_cmd_trace_summarize)

    from sim.trace.fitcli import add_fit_parser

    t = add_fit_parser(trace_sub, cpu_hz=_cpu_hz, positive_int=int_in(1, 100_000_000))
    t.set_defaults(func=_cmd_trace_fit)

    p = sub.add_parser(
        "bench",
        help="measure host-speed figures as ratios within one run",
        description=(
            "Measure the model's host time per access against a minimal SimPy round "
            "trip, the 8192-vs-64-range ratios for both rangesets, the peak RSS of a "
            "1,000,000-access run, a sweep's speed-up with 2 jobs over 1, and, where "
            "valgrind is on PATH, instructions per trap counted with callgrind. Ratios "
            "and counts, because absolute times are noisy here."
        ),
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller RSS run")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child run")
    p.add_argument("--no-sweep", action="store_true", help="skip the sweep speed-up runs")
    p.add_argument("--no-callgrind", action="store_true", help="skip callgrind's counts")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "sweep",
        help="run a sweep file's points in parallel and draw its figures",
        description=(
            "Expand a sweep file (base scenario x axes x replications), report its size, "
            "run every point on a local process pool or on dask.distributed, and write "
            "points/, points.csv, aggregate.csv (mean and 95% CI) and the figures to "
            "results/sweeps/<sweep>/ or --out DIR. Finished runs are kept: running the "
            "same sweep again skips them and retries failed ones. Exit 1 if any run failed."
        ),
    )
    p.add_argument("sweep", metavar="SWEEP.yaml")
    p.add_argument(
        "--jobs",
        type=int_in(1, MAX_JOBS),
        default=min(os.cpu_count() or 1, MAX_JOBS),
        metavar="N",
        help="parallel workers (default: the number of CPUs); 1 runs in this process",
    )
    p.add_argument(
        "--backend",
        choices=("process", "dask"),
        help="process (default): a local process pool; dask: dask.distributed, a "
        "LocalCluster unless --scheduler is given (pip install 'vgpu-sim[dask]')",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing dask scheduler, e.g. tcp://host:8786 (implies dask; connected "
        "to before anything is written); its workers need vgpu-sim installed and any "
        "empirical CSVs at the same paths",
    )
    p.add_argument(
        "--out", metavar="DIR", help="results directory (default: results/sweeps/<sweep>)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    p.add_argument("--no-plot", action="store_true", help="write the CSVs but no figures")
    max_events_option(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "plot",
        help="redraw a sweep's figures from its CSVs",
        description=(
            "Read points.csv and aggregate.csv of a sweep results directory and write "
            "latency_vs_ranges and visits_vs_ranges as PNG and SVG next to them."
        ),
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.set_defaults(func=_cmd_plot)
    return parser


@functools.cache
def _parser() -> argparse.ArgumentParser:
    # Building it costs milliseconds (argparse looks up translations for every help
    # string): once per process is enough, also when main() is called in-process.
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    with unix_behaviour():
        try:
            return func(args)
        except BrokenPipeError:
            quiet_broken_pipe()
            return EXIT_BROKEN_PIPE
        except InputError as exc:
            _error(exc)
            return EXIT_BAD_INPUT
        except Terminated:
            print("vgpu-sim: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print("vgpu-sim: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
