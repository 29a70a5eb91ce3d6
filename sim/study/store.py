"""The result store of a sweep: its directory, ``sweep.json`` and one file per finished run.

Every finished (point, replication) is written at once, atomically, to
``points/<id>-r<replication>.json``; a re-run into the same directory reuses those that
succeeded (same seed, same scenario hash) and retries the rest. A directory that holds
anything but this very sweep is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sim.inputs import InputError
from sim.results import provenance
from sim.study.sweepfile import Sweep, Task


def sweep_manifest(
    sweep: Sweep, status: str, argv: list[str] | None, started: str, wall_s: float | None
) -> dict[str, Any]:
    return {
        **provenance(argv, started, wall_s),
        "status": status,
        "sweep_file": str(sweep.file),
        "sweep_sha256": sweep.sha256,
        "sweep": sweep.spec.model_dump(mode="json", by_alias=True),
        "master_seed": sweep.spec.seed,
        "replications": sweep.spec.replications,
        "axes": [a.name for a in sweep.axes],
        "base_config": sweep.base_config,
        "points": [
            {"point_id": p.point_id, "axes": p.labels, "scenario_sha256": p.scenario_sha256}
            for p in sweep.points
        ],
    }


def claim_directory(out_dir: Path, sweep: Sweep) -> None:
    """Refuse a directory that holds anything but results of this very sweep."""
    manifest = out_dir / "sweep.json"
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
            previous_sha = previous.get("sweep_sha256")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(manifest, "", f"cannot be read: {exc}") from None
        if previous_sha != sweep.sha256:
            raise InputError(
                manifest,
                "sweep_sha256",
                f"holds results of a different sweep ({str(previous_sha)[:12]}, this one is "
                f"{sweep.sha256[:12]}); use --out for a new directory or remove it",
            )
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(out_dir, "--out", "exists and is not a sweep results directory")


def finished_outcome(path: Path, task: Task) -> dict[str, Any] | None:
    """A previously written outcome of ``task`` that succeeded, or None to run it."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(saved, dict)
        or saved.get("error")
        or not isinstance(saved.get("record"), dict)
        or saved.get("seed") != task.seed
        or saved.get("scenario_sha256") != task.point.scenario_sha256
    ):
        return None
    return saved
