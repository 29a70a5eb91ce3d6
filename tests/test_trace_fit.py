"""`vgpu-sim trace fit`: fitted scenarios that run and reproduce their capture, what is
reported besides, the completion record of a blocked read, and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from fit_fixtures import R, io_capture, model_capture, windows
from trace_fixtures import Knobs, host_capture

from sim.cli import main
from sim.trace import format as fmt
from sim.trace.fit import fit_capture
from sim.trace.fitreport import write_report
from sim.trace.iostream import GAP_FIRST, GAP_MEASURED, SPACE_PORT, DomainStats, io_traps
from sim.trace.reader import Capture, summarize_capture

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "small" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_capture(TINY, tmp_path_factory.mktemp("cap") / "run")


@pytest.fixture(scope="module")
def tiny_fit(tiny_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "dom1"
    args = ["trace", "fit", str(tiny_capture), "--domain", "1", "--out", str(out)]
    assert main([*args, "--platform", "hsw", "--cpu-hz", "2.8G"]) == 0
    return out


def test_fit_of_a_model_capture_reproduces_it(tiny_fit: Path) -> None:
    for name in ("scenario.yaml", "fit.md", "latency_cdf.png", "latency_cdf.svg"):
        assert (tiny_fit / name).stat().st_size > 0, name
    assert main(["validate", str(tiny_fit / "scenario.yaml")]) == 0
    report = (tiny_fit / "fit.md").read_text()
    assert "## Verdict: PASS" in report
    # one row per criterion, each judged: both vCPUs and the domain's rate, the mean latency
    verdicts = [
        line
        for line in report.splitlines()
        if line.startswith("| trap rate") or line.startswith("| mean trap latency")
    ]
    assert len(verdicts) == 4
    assert all(line.endswith("| pass |") for line in verdicts)
    for q in ("p10 µs", "p50 µs", "p90 µs", "p99 µs"):
        assert q in report
    assert "Two-sample Kolmogorov-Smirnov: D = " in report


def test_fitted_scenario_names_the_devices_it_saw(tiny_fit: Path) -> None:
    data = yaml.safe_load((tiny_fit / "scenario.yaml").read_text())
    (guest,) = data["guests"]
    assert guest["vcpus"] == 2
    assert len(guest["vcpu_think"]) == 2
    by_name = {d["name"]: d for d in guest["devices"]}
    # tiny.yaml's vm1: VGA ports and BAR0 (XenGT), QEMU's NIC ports and MMIO, page tables.
    assert by_name["vga"]["server"] == "xengt"
    assert {d["server"] for d in guest["devices"] if d["space"] == "mmio"} == {"xengt", "qemu"}
    assert by_name["page-tables"]["server"] == "xengt"
    assert abs(sum(d["share"] for d in guest["devices"]) - 1) < 1e-6
    bar0 = next(d for d in guest["devices"] if d["space"] == "mmio" and d["server"] == "xengt")
    lo, hi = bar0["ranges"][0]
    assert 0xF7800000 <= lo <= hi <= 0xF7BFFFFF
    # every page written during the capture becomes a live page
    assert guest["vgpu"]["ppgtt"]["live_pages"] > 0


def test_fit_is_deterministic(tiny_capture: Path, tiny_fit: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    args = ["trace", "fit", str(tiny_capture), "--domain", "1", "--out", str(again)]
    assert main([*args, "--platform", "hsw", "--cpu-hz", "2.8G"]) == 0
    names = sorted(p.name for p in tiny_fit.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        if name.endswith((".yaml", ".csv", ".md", ".svg")):
            assert (tiny_fit / name).read_bytes() == (again / name).read_bytes(), name


def test_fitted_scenario_runs_as_a_scenario(tiny_fit: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(tiny_fit / "scenario.yaml"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "summary.csv").read_text().count("\n") >= 4


def test_round_trip_stages_give_wakeup_service_and_resume(tmp_path: Path) -> None:
    """A Xen-like capture with blocking and dom0 records: the service comes from the
    stages, the dom0 wake-up and vcpu_wake_ns are fitted, and the fit, run with the
    model's default costs, still reproduces the capture; the exits it does not model are
    listed with their counts."""
    # Stages as long as a real host's (cost-anchors §6, at 2.8 GHz: exit -> dom0 running
    # 6.7 us median, guest woken -> running 3.8 us): longer than Xen's own work on each
    # side of the device model in the model (~1.3 us before it for a port exit, ~4.9 us
    # for an EPT violation; 0.75-1.55 us of completion and entry after the wake-up).
    knobs = Knobs(
        pcpus=4,
        guests=1,
        vcpus=2,
        exits=2500,
        dom0_wake=(15_000, 32_000),
        guest_wake=(8_000, 13_000),
        resume=(2_000, 5_000),
    )
    cap = tmp_path / "host.bin"
    cap.write_bytes(host_capture(7, knobs))
    fit = fit_capture(cap, 1, tmp_path / "fit", report=write_report)
    assert fit.path_used == "round-trip stages"
    assert fit.validation is not None
    assert fit.validation.passed
    data = yaml.safe_load((tmp_path / "fit" / "scenario.yaml").read_text())
    guest = data["guests"][0]
    assert "vcpu_wake_ns" in data["costs"]
    assert guest["qemu"]["wakeup"]["dist"] != "constant"
    report = (tmp_path / "fit" / "fit.md").read_text()
    not_modelled = fit.measured.stats.not_modelled()
    for code in (12, 10, 1, 18):  # HLT, CPUID, EXTERNAL_INTERRUPT, VMCALL
        assert f"| {fmt.exit_reason_name(code)} | {not_modelled[code][0]:,} |" in report


def test_silent_vcpus_and_unmodelled_exits_are_reported(tmp_path: Path) -> None:
    cap = tmp_path / "io.bin"
    cap.write_bytes(io_capture())
    fit = fit_capture(cap, 1, tmp_path / "fit", report=write_report)
    report = (tmp_path / "fit" / "fit.md").read_text()
    assert "with I/O traps: [0]" in report
    assert "never trapping, not in the model: [1]" in report
    cpuid = fit.measured.stats.not_modelled()[10][0]
    assert cpuid > 30
    assert f"| CPUID | {cpuid:,} |" in report
    data = yaml.safe_load((tmp_path / "fit" / "scenario.yaml").read_text())
    assert data["guests"][0]["vcpus"] == 1
    # enough CPUID exits: the exit and entry costs come from them, half each
    assert data["costs"]["vmexit_ns"] == data["costs"]["vmentry_ns"] > 0
    names = {d["name"] for d in data["guests"][0]["devices"]}
    assert names == {"vga", "keyboard"}


def test_a_read_completed_after_the_wake_up_keeps_its_port(tmp_path: Path) -> None:
    """Xen traces a read when it completes (emulate.c @4.6, finish_access): after the
    wake-up that closes the arc, before the VM entry. The trap keeps that record's port
    and data, and its latency runs to the entry."""
    run = fmt.runstate_event
    guest = [
        R(run(fmt.RUNNABLE, fmt.RUNNING), (fmt.vcpu_word(1, 0),), 1000),
        R(fmt.TRC_HVM_VMX_EXIT, (30, 0x1000), 2000),
        R(run(fmt.RUNNING, fmt.BLOCKED), (fmt.vcpu_word(1, 0),), 2100),
        R(run(fmt.RUNNABLE, fmt.RUNNING), (fmt.vcpu_word(1, 0),), 6000),
        R(fmt.TRC_HVM_IOPORT_READ, (0x60, 0x1C)),
        R(fmt.TRC_HVM_VMENTRY, (), 6500),
    ]
    dom0 = [
        R(run(fmt.RUNNABLE, fmt.RUNNING), (fmt.vcpu_word(0, 0),), 3000),
        R(run(fmt.BLOCKED, fmt.RUNNABLE), (fmt.vcpu_word(1, 0),), 5000),
    ]
    cap = tmp_path / "read.bin"
    cap.write_bytes(windows({0: guest, 1: dom0}))
    stats = DomainStats(1)
    (rows,) = list(io_traps(Capture(cap), 1, stats))
    (trap,) = rows
    assert trap["space"] == SPACE_PORT
    assert trap["addr"] == 0x60
    assert trap["write"] == 0
    assert trap["addr_known"] == 1
    assert trap["data_valid"] == 1
    assert trap["data"] == 0x1C
    assert (trap["exit_tsc"], trap["end_tsc"], trap["resume_tsc"]) == (2000, 5000, 6500)
    assert (trap["dom0_tsc"], trap["wake_tsc"]) == (3000, 5000)
    assert stats.completed_after_wake == 1
    # and `trace summarize` counts its round trip among the I/O exits' stages
    stages = summarize_capture(cap).stages[1]
    assert stages["exit_to_resume"].count == 1
    assert stages["exit_to_dom0"].mean_cycles == 1000


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("vgpu-sim: error: ")
    return err


@pytest.mark.parametrize(
    ("domain", "problem"),
    [("2", "domain 2 has no I/O exits"), ("9", "no exit of domain 9 in the capture")],
)
def test_bad_domain_is_exit_2(
    domain: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = tmp_path / "io.bin"
    cap.write_bytes(io_capture(traps=50))
    out = tmp_path / "fit"
    assert main(["trace", "fit", str(cap), "--domain", domain, "--out", str(out)]) == 2
    assert problem in _one_line_error(capsys)
    assert not out.exists()
    assert not list(tmp_path.glob(".fit*"))


def test_a_tsc_rate_no_host_has_is_refused_at_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cpu-hz has host.tsc_hz's range: a fit writes it there, and failed late before,
    naming the scenario.yaml the user never wrote."""
    cap = tmp_path / "io.bin"
    cap.write_bytes(io_capture(traps=50))
    out = tmp_path / "fit"
    with pytest.raises(SystemExit) as exc:
        main(["trace", "fit", str(cap), "--domain", "1", "--cpu-hz", "5M", "--out", str(out)])
    assert exc.value.code == 2
    assert "--cpu-hz" in capsys.readouterr().err
    assert not out.exists()


def test_existing_out_dir_and_not_a_capture_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = tmp_path / "io.bin"
    cap.write_bytes(io_capture(traps=50))
    out = tmp_path / "fit"
    out.mkdir()
    assert main(["trace", "fit", str(cap), "--domain", "1", "--out", str(out)]) == 2
    assert "already exists" in _one_line_error(capsys)
    assert list(out.iterdir()) == []
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    out2 = tmp_path / "fit2"
    assert main(["trace", "fit", str(text), "--domain", "1", "--out", str(out2)]) == 2
    assert "not a xentrace capture" in _one_line_error(capsys)
    assert not out2.exists()


def test_think_gaps_are_the_models_think_times(tiny_capture: Path) -> None:
    """Read back from a model capture, a vCPU's gap is the time it thought: from the
    resume that ended one trap to its next trap, as trace.csv has them (the capture
    rounds each time to a whole TSC cycle at 2.8 GHz)."""
    run = tiny_capture.parent
    assert main(["run", str(TINY), "--out", str(run / "again"), "--trace", "--no-progress"]) == 0
    with (run / "again" / "trace.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["vcpu"] == "vm1/vcpu0"]
    t_trap = np.array([float(r["t_trap_ns"]) for r in rows])
    t_resumed = np.array([float(r["t_resumed_ns"]) for r in rows])
    expected = (t_trap[1:] - t_resumed[:-1]) * 2.8
    traps = np.concatenate(list(io_traps(Capture(tiny_capture), 1, DomainStats(1))))
    v0 = traps[traps["vcpu"] == 0]
    assert len(v0) == len(rows)
    assert v0["gap_kind"][0] == GAP_FIRST
    assert (v0["gap_kind"][1:] == GAP_MEASURED).all()
    # two TSCs rounded to a cycle, two trace.csv times to 0.1 ns (0.28 cycles)
    assert np.abs(v0["gap_tsc"][1:].astype(np.float64) - expected).max() <= 1.6


def test_shipped_example_fit_is_current(tmp_path: Path) -> None:
    """The example capture is what the current model writes from its scenario, and its
    shipped fit is what `trace fit` writes for it (both from `make trace-example`: run it
    after a deliberate change to the model's timing, and review the diff)."""
    shipped = ROOT / "results" / "trace" / "hsw-guest"
    capture = ROOT / "scenarios" / "captures" / "hsw-guest.bin"
    fresh = model_capture(capture.with_suffix(".yaml"), tmp_path / "run")
    assert fresh.read_bytes() == capture.read_bytes(), "stale example: make trace-example"
    assert main(["validate", str(shipped / "scenario.yaml")]) == 0
    assert "## Verdict: PASS" in (shipped / "fit.md").read_text()
    args = ["trace", "fit", str(capture), "--domain", "1", "--cpu-hz", "2.8G"]
    assert main([*args, "--platform", "hsw", "--out", str(tmp_path / "fit")]) == 0

    def written(directory: Path) -> list[str]:
        return sorted(p.name for p in directory.iterdir() if p.suffix in (".yaml", ".csv"))

    names = written(shipped)
    assert names == written(tmp_path / "fit")
    for name in names:
        again = (tmp_path / "fit" / name).read_bytes()
        assert again == (shipped / name).read_bytes(), f"stale {name}: make trace-example"


def test_devices_xen_emulates_get_no_service_and_a_bad_fit_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The RTC's ports are Xen's own emulator (sim/xen/intercept.py): in the model no
    device model serves them. The capture says they took as long as QEMU's accesses, which
    the model cannot reproduce: the fit says so, and exits 1 with its results written."""
    cap = tmp_path / "rtc.bin"
    cap.write_bytes(io_capture(rtc=True))
    out = tmp_path / "fit"
    assert main(["trace", "fit", str(cap), "--domain", "1", "--out", str(out)]) == 1
    assert "does not reproduce the capture" in capsys.readouterr().err
    report = (out / "fit.md").read_text()
    assert "## Verdict: FAIL" in report
    assert "| mean trap latency |" in report
    assert "**FAIL**" in report
    rtc = next(line for line in report.splitlines() if line.startswith("| rtc |"))
    assert rtc.endswith("| Xen's emulator |")
    assert "Xen's own emulators answer rtc" in report
    # QEMU's service is fitted on the keyboard's traps alone
    keyboard = next(line for line in report.splitlines() if line.startswith("| keyboard |"))
    service = next(line for line in report.splitlines() if line.startswith("| service, qemu |"))
    assert keyboard.split("|")[5].strip() == service.split("|")[2].strip()


def test_bad_override_is_exit_2_naming_the_scenario_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = tmp_path / "io.bin"
    cap.write_bytes(io_capture(traps=50))
    out = tmp_path / "fit"
    args = ["trace", "fit", str(cap), "--domain", "1", "--out", str(out)]
    assert main([*args, "--set", "xen.design=ring"]) == 2
    err = _one_line_error(capsys)
    assert f"{out / 'scenario.yaml'}: xen.design" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".fit*"))
