"""Writing results: atomic files and directories, JSON, and the provenance of a result.

A run directory appears whole or not at all: files are written into a temporary
directory next to the destination, which is renamed into place only on success. Every
manifest (a run's, a sweep's) starts with :func:`provenance`: tool and package versions,
``git describe``, argv, start time and wall time (desmod's rule: a result always records
how it was made).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, ordinary_mode(directory=True))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces it only if the block succeeds,
    so readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, ordinary_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
