"""How the command line behaves as a Unix process: signals, pipes and encodings.

* SIGTERM raises :class:`Terminated`, a KeyboardInterrupt, wherever the program is, so
  that it unwinds as from Ctrl-C: temporaries are removed, a sweep records "interrupted".
* A reader that goes away (``vgpu-sim select ... | head``) ends the command quietly:
  :func:`quiet_broken_pipe` sends the rest of the output nowhere.
* A stdout or stderr that cannot encode the few non-ASCII characters of the tables
  ("±", "µ", ...) writes ASCII stand-ins instead (``PYTHONIOENCODING=ascii``, a C locale).
* Progress bars show on a terminal only (:func:`tty_progress`, :func:`tty_bytes_progress`).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as from Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


#: ASCII stand-ins for the few non-ASCII characters the tables and messages use.
ASCII_STAND_INS = {"±": "+/-", "µ": "u", "·": "-", "—": "--", "…": "...", "≈": "~", "×": "x"}


def _ascii_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    text = "".join(ASCII_STAND_INS.get(ch, f"\\u{ord(ch):04x}") for ch in bad)
    return text, exc.end


codecs.register_error("vgpu-sim-ascii", _ascii_fallback)


@contextlib.contextmanager
def unix_behaviour() -> Iterator[None]:
    """SIGTERM as an interrupt, and stand-ins for what stdout or stderr cannot encode;
    both put back afterwards (main() may be called in-process)."""
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    restore: list[tuple[Any, str | None]] = []
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            "±µ·—".encode(encoding)
        except (UnicodeEncodeError, LookupError):
            with contextlib.suppress(AttributeError, ValueError):
                restore.append((stream, stream.errors))
                stream.reconfigure(errors="vgpu-sim-ascii")
    try:
        yield
    finally:
        for stream, errors in restore:
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(errors=errors)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def quiet_broken_pipe() -> None:
    """The reader of our output went away: send what is left of it nowhere, so that the
    interpreter's final flush does not complain either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def tty_progress(label: str, enabled: bool) -> Iterator[Callable[[float, float], None] | None]:
    """A simulated-time progress bar on a terminal, cleared afterwards; else nothing."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=100, desc=label, unit="%", leave=False, file=sys.stderr) as bar:

        def report(now: float, end: float) -> None:
            bar.n = min(100, int(100 * now / end)) if end else 100
            bar.refresh()

        yield report


@contextlib.contextmanager
def tty_bytes_progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A bar over the bytes of a file being read, on a terminal only."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=label, unit="B", unit_scale=True, leave=False, file=sys.stderr) as bar:

        def report(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        yield report
