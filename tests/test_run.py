"""``vgpu-sim run`` and ``validate``: outputs, determinism, golden file, bad input, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sim.model.simulation as model
from sim.cli import main
from sim.model.summary import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "scenarios" / "small"
GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny-summary.csv"


def run(tmp_path: Path, name: str, *extra: str, scenario: Path = SMALL / "tiny.yaml") -> Path:
    out = tmp_path / name
    assert main(["run", str(scenario), "--out", str(out), "--no-progress", *extra]) == 0
    return out


def test_run_writes_manifest_and_summary(tmp_path: Path) -> None:
    out = run(tmp_path, "a")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "summary.csv"]
    man = json.loads((out / "manifest.json").read_text())
    for key in ("config", "scenario_sha256", "seed", "versions", "argv", "wall_s", "totals"):
        assert key in man
    assert man["config"]["xen"]["max_nr_io_ranges"] == 64
    assert man["config"]["costs"]["vmexit_ns"] == 447  # a default, recorded explicitly
    assert man["config"]["costs"]["visit_ns"] is None  # the cache model prices visits
    assert man["config"]["host"]["cpu"]["l1d_kb"] == 32  # from the platform preset
    assert man["totals"]["cpu_use"]["threads"]["vm1/xengt/0"] > 0
    for key in ("accesses", "simulated_ns", "throughput_per_s", "failed_maps"):
        assert key in man["totals"]
    assert man["totals"]["untracked_ppgtt_writes"] > 0  # 150 pages, 64-node limit
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert header == ",".join(SUMMARY_COLUMNS)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = run(tmp_path, "a")
    b = run(tmp_path, "b")
    c = run(tmp_path, "c", "--seed", "99")
    assert (a / "summary.csv").read_bytes() == (b / "summary.csv").read_bytes()
    assert (a / "summary.csv").read_bytes() != (c / "summary.csv").read_bytes()
    assert json.loads((c / "manifest.json").read_text())["seed"] == 99


def test_golden_summary(tmp_path: Path) -> None:
    """A small seeded run must reproduce tests/golden/tiny-summary.csv byte for byte.

    After a deliberate model change, regenerate with ``make golden`` (which sets
    VGPU_SIM_UPDATE_GOLDEN=1) and review the diff before committing it.
    """
    out = run(tmp_path, "g")
    produced = (out / "summary.csv").read_bytes()
    if os.environ.get("VGPU_SIM_UPDATE_GOLDEN") == "1":
        GOLDEN.write_bytes(produced)
    assert produced == GOLDEN.read_bytes(), "model output changed; see `make golden`"


def test_set_overrides_reach_the_model(tmp_path: Path) -> None:
    out = run(tmp_path, "s", "--set", "xen.rangeset=rbtree", "--set", "guests[1].vcpus=3")
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["xen"]["rangeset"] == "rbtree"
    assert config["guests"][1]["vcpus"] == 3


def test_trace_has_one_row_per_trap(tmp_path: Path) -> None:
    out = run(tmp_path, "t", "--trace")
    lines = (out / "trace.csv").read_text().splitlines()
    man = json.loads((out / "manifest.json").read_text())
    assert len(lines) - 1 == man["totals"]["traps_including_warmup"]
    assert lines[0].startswith("vcpu,kind,access,dir,address,size,server,visits,t_trap_ns")


def test_untracked_writes_are_shown_prominently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(tmp_path, "w")
    out = capsys.readouterr().out
    assert "WARNING:" in out
    assert "NOT trapped" in out


HEAD = "schema_version: 1\nplatform: hsw\nduration_ms: 1\n"
GUEST = "guests: [{name: a, vgpu: {}}]\n"


def guest(extra: str = "", vgpu: str = "") -> str:
    return f"guests: [{{name: a, vgpu: {{{vgpu}}}{extra}}}]\n"


# case -> (file text, key path expected in the message, problem expected in it)
BAD = {
    "unknown-key": (HEAD + GUEST + "bogus: 1\n", "bogus", "unknown key"),
    "wrong-type": (HEAD.replace("1\n", "1e3\n") + GUEST, "duration_ms", "valid number"),
    "negative-duration": (HEAD.replace(": 1\n", ": -5\n") + GUEST, "duration_ms", "greater than 0"),
    "zero-mean": (
        HEAD + guest(", think: {dist: exponential, mean_ns: 0}"),
        "guests[0].think.exponential.mean_ns",
        "greater than or equal to 0.001",
    ),
    "inverted-range": (
        HEAD + guest(vgpu="bar0_mmio: [0x2000, 0x1000]"),
        "guests[0].vgpu.bar0_mmio",
        "above end",
    ),
    "bad-pci": (HEAD + guest(vgpu='pci: "00:22.0"'), "guests[0].vgpu.pci", "above 0x1f"),
    "unknown-design": (HEAD + "xen: {design: xen-9}\n" + GUEST, "xen.design", "xen-4.6"),
    "mix-sum": (HEAD + guest(", mix: {mmio: 0.5}"), "guests[0].mix", "sum to 1"),
    "bad-yaml": ("schema_version: 1\nguests: [\n", "line", "invalid YAML"),
    "unknown-dist": (
        HEAD + guest(", think: {dist: pareto, mean_ns: 3}"),
        "guests[0].think",
        "dist",
    ),
    "missing-csv": (
        HEAD + guest(", think: {dist: empirical, file: nope.csv}"),
        "guests[0].think.file",
        "cannot read",
    ),
    "bad-platform": (
        HEAD.replace("hsw", "skylake")
        + guest(vgpu="ppgtt: {live_pages: 1, pages_per_ppgtt: 1, max_pages_per_ppgtt: 1}"),
        "platform",
        "hsw",
    ),
    "too-many-pages": (
        HEAD + guest(vgpu="ppgtt: {pages_per_ppgtt: 9999}"),
        "guests[0].vgpu.ppgtt",
        "exceeds",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenarios_exit_2_naming_file_key_and_problem(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, keypath, problem = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert keypath in err
    assert problem in err
    assert "Traceback" not in err
    assert not out.exists()
    assert main(["validate", str(path)]) == 2


def test_missing_file_and_bad_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert (
        main(
            ["run", str(SMALL / "tiny.yaml"), "--set", "xen.bogus=1", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "xen.bogus" in err
    assert "unknown key" in err
    assert (
        main(
            [
                "run",
                str(SMALL / "tiny.yaml"),
                "--set",
                "guests[5].vcpus=1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no such list item" in capsys.readouterr().err


def test_existing_out_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    assert main(["run", str(SMALL / "tiny.yaml"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_or_interrupted_run_leaves_nothing(
    exc: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results appear atomically or not at all: no run directory, no temporary left."""

    def explode(self: model.Simulation, progress: object = None, max_events: int = 0) -> None:
        raise exc

    monkeypatch.setattr(model.Simulation, "run", explode)
    out = tmp_path / "results" / "run"
    if isinstance(exc, KeyboardInterrupt):
        assert main(["run", str(SMALL / "tiny.yaml"), "--out", str(out)]) == 130
    else:
        with pytest.raises(RuntimeError):
            main(["run", str(SMALL / "tiny.yaml"), "--out", str(out)])
    assert not out.exists()
    # Issue #9 item 25: nor the parent directory the run created for it.
    assert not out.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_default_results_location(tmp_path: Path) -> None:
    assert main(["run", str(SMALL / "tiny.yaml"), "--results", str(tmp_path), "--no-progress"]) == 0
    runs = list((tmp_path / "tiny").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "summary.csv").exists()


def test_console_script_bad_input_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, not just main(): exit 2 and a one-line message."""
    exe = shutil.which("vgpu-sim", path=str(Path(sys.executable).parent))
    assert exe is not None
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 2\n")
    proc = subprocess.run([exe, "validate", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr


def test_duplicate_yaml_keys_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PyYAML would silently keep the second value; a strict format must not."""
    path = tmp_path / "dup.yaml"
    path.write_text(HEAD + "duration_ms: 2\n" + GUEST)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'duration_ms'" in err
    assert "line 4" in err


def test_results_get_ordinary_permissions(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp/mkdtemp (owner-only); results must not stay so."""
    mask = os.umask(0o022)
    try:
        out = run(tmp_path, "perm")
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "summary.csv").stat().st_mode & 0o777 == 0o644
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o644


SHIPPED_SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted(SMALL.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenarios_validate_and_cite_sources(path: Path) -> None:
    """Every shipped scenario validates, and says where its set-up comes from."""
    assert main(["validate", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("#"), "a shipped scenario opens with a comment on what it models"
    assert "description:" in text
