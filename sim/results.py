"""Writing results: atomic files and directories, JSON, and the provenance of a result.

A run directory appears whole or not at all: files are written into a temporary
directory next to the destination, which is renamed into place only on success; on
failure the temporary goes, and so do the parent directories the run created. A
temporary's name holds its writer's pid and host, ``.<name>.<pid>@<host>.<random>.tmp``:
one that a killed process (SIGKILL) left behind is swept away when the next run starts in
that directory (:func:`sweep_stale_temporaries`), while a live process's is never
touched. An output location that cannot be used (not a directory, read-only, a full
disk) is an :class:`~sim.inputs.OutputError`, exit 2 at the command line. Every
manifest (a run's, a sweep's) starts with :func:`provenance`: tool and package versions,
``git describe``, argv, start time and wall time (desmod's rule: a result always records
how it was made).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from sim.inputs import OutputError
from sim.version import __version__


def git_describe() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("simpy", "numpy", "pydantic", "PyYAML", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def provenance(argv: list[str] | None, started_utc: str, wall_s: float | None) -> dict[str, Any]:
    """What every manifest records about how and where a result was made."""
    return {
        "tool": "vgpu-sim",
        "tool_version": __version__,
        "git_describe": git_describe(),
        "versions": package_versions(),
        "argv": argv if argv is not None else sys.argv,
        "started_utc": started_utc,
        "wall_s": wall_s,
    }


def ordinary_mode(directory: bool = False) -> int:
    """The permissions a plain ``open()``/``mkdir()`` would give under the umask.

    Atomic writes go through ``mkstemp``/``mkdtemp``, which make owner-only files."""
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[a-z0-9_]+\.tmp$")


def _temporary_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}@{_HOST}."


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (anyone's: also one we may not signal). A zombie,
    dead but not yet reaped, is not alive."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    try:  # Linux: the state follows the command name in (parentheses)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def sweep_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporaries in ``directory`` whose writer, a process of this host, is
    dead (killed with SIGKILL, or the machine lost power); never a live writer's."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m is None or m["host"] != _HOST:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or process_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def _problem(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, top first.
    A parent that is a file, a read-only one or a full disk is an OutputError."""
    missing: list[Path] = []
    here = directory
    try:
        while not here.exists():
            if here.is_symlink():  # a dangling link
                raise OutputError(directory, "", f"cannot be created: {here} is a broken link")
            missing.append(here)
            if here.parent == here:
                break
            here = here.parent
        if here.exists() and not here.is_dir():
            raise OutputError(directory, "", f"cannot be created: {here} is not a directory")
    except OSError as exc:  # a parent we may not even look into
        raise OutputError(directory, "", f"cannot be created: {_problem(exc)}") from None
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        except OSError as exc:
            remove_if_empty(created)
            raise OutputError(directory, "", f"cannot create {d}: {_problem(exc)}") from None
        created.append(d)
    return created


def remove_if_empty(created: list[Path]) -> None:
    """Remove directories this process created, deepest first, if they are still empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds.

    On failure nothing is left: not the temporary, not the parents made for it. Stale
    temporaries of dead runs in the same parent are swept away first.
    """
    created = make_parents(final.parent)
    if final.exists():
        remove_if_empty(created)
        raise OutputError(final, "", "already exists; results are never overwritten")
    sweep_stale_temporaries(final.parent)
    try:
        tmp = Path(
            tempfile.mkdtemp(prefix=_temporary_prefix(final.name), suffix=".tmp", dir=final.parent)
        )
    except OSError as exc:
        remove_if_empty(created)
        raise OutputError(final.parent, "", f"cannot write here: {_problem(exc)}") from None
    try:
        yield tmp
        os.chmod(tmp, ordinary_mode(directory=True))
        os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_if_empty(created)
        if isinstance(exc, OSError):
            raise OutputError(final, "", f"cannot write the results: {_problem(exc)}") from None
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces it only if the block succeeds,
    so readers see the old content or the new, never a part."""
    make_parents(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise OutputError(path.parent, "", f"cannot write here: {_problem(exc)}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, ordinary_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(path, "", f"cannot write: {_problem(exc)}") from None
        raise


def save_figure(fig: Any, stem: Path, dpi: int = 130) -> list[Path]:
    """A matplotlib figure as PNG and SVG beside ``stem``, each written atomically; the SVG
    without a date and with fixed ids, so redraws diff cleanly."""
    import matplotlib  # only for callers that draw: importing sim.results stays cheap

    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    with matplotlib.rc_context({"svg.hashsalt": "vgpu-sim"}):
        with atomic_file(png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
        with atomic_file(svg) as tmp:
            fig.savefig(tmp, format="svg", metadata={"Date": None})
    return [png, svg]


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
