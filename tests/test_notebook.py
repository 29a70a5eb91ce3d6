"""notebooks/latency_vs_ranges.ipynb runs headless on a tiny sweep's results."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sim.study.sweep import run_sweep
from sim.study.sweepfile import load_sweep

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "latency_vs_ranges.ipynb"

# 2 variants x 2 page counts x 1 replication, a few simulated ms each; the limited
# variant fails maps at 64 pages, so the notebook's failure cell has something to list.
TINY_SWEEP = {
    "schema_version": 1,
    "description": "notebook test",
    "base": {
        "schema_version": 1,
        "platform": "hsw",
        "duration_ms": 8,
        "warmup_ms": 1,
        "guests": [{"name": "vm1", "vgpu": {"ppgtt": {"pages_per_ppgtt": 16}}}],
    },
    "axes": {
        "variant": [
            {"label": "list", "xen.rangeset": "list", "xen.max_nr_io_ranges": 32},
            {"label": "rbtree", "xen.rangeset": "rbtree", "xen.max_nr_io_ranges": None},
        ],
        "guests[0].vgpu.ppgtt.live_pages": [16, 64],
    },
    "replications": 1,
    "seed": 1,
}


@pytest.mark.slow
def test_notebook_executes_on_a_tiny_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False), encoding="utf-8")
    out = tmp_path / "results"
    run_sweep(load_sweep(sweep_file), out, jobs=1, progress="none", plot=False)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "commit the notebook with its outputs stripped"
    )
    # The kernel inherits this environment: results to read, and no display.
    monkeypatch.setenv("VGPU_SIM_RESULTS", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure

    printed = "".join(
        o.get("text", "")
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") == "stream"
    )
    assert "notebook test" in printed  # it read the tiny sweep, not the committed one
    assert "failed maps" in printed
