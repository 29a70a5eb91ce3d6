"""The ``vgpu-sim`` command line.

Every subcommand returns an exit status: 0 for success, 1 for a failed expectation or a
failed run, 2 for bad input (a message naming the file, key path and problem; no
traceback). Progress and warnings go to stderr, tables and results paths to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sim import __version__
from sim.inputs import InputError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _cmd_select(args: argparse.Namespace) -> int:
    from sim.cases import run_case_file

    status = EXIT_OK
    for path in args.cases:
        status = max(status, run_case_file(Path(path), sys.stdout, verbose=not args.quiet))
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgpu-sim",
        description=(
            "Simulate how Xen routes trapped guest GPU accesses (PIO, MMIO, writes to "
            "write-protected PPGTT pages) to ioreq servers, and what rangeset size does "
            "to trap latency and correctness."
        ),
        epilog="Exit status: 0 ok, 1 a check or run failed, 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "select",
        help="route the accesses of case files as Xen would, and check expectations",
        description=(
            "Build the ioreq servers of each case file, map their ranges through Xen's "
            "hypercall semantics, route every access as hvm_select_ioreq_server() does, "
            "and print the chosen server, rewritten request and nodes visited. Exit 1 "
            "if any 'expect' or 'expect_visits' fails."
        ),
    )
    p.add_argument("cases", nargs="+", metavar="CASES.yaml", help="case file(s)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only mismatches")
    p.set_defaults(func=_cmd_select)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as exc:
        print(f"vgpu-sim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("vgpu-sim: interrupted", file=sys.stderr)
        return 130
