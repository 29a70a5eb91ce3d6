"""``vgpu-sim trace fit``: a scenario fitted to one captured domain, and its validation.

:func:`fit_capture` reads the domain's I/O traps (:mod:`sim.trace.iostream`), groups
their addresses into devices (:mod:`sim.trace.devicemap`), fits the distributions
(:mod:`sim.trace.fitdist`), writes ``scenario.yaml`` with its CSVs, runs it and compares
(:mod:`sim.trace.validate`), and writes ``fit.md`` with the CDF figure
(:mod:`sim.trace.fitreport`). The directory appears whole or not at all.

**What is fitted from what** (each in ``ns`` at ``--cpu-hz``):

* *vCPUs*: one model vCPU per captured vCPU with at least one I/O trap, in id order;
  vCPUs that never trap are reported. Each gets its own think time.
* *Think time*: a vCPU's time from the VM entry that ended one I/O trap to its next I/O
  exit. Non-I/O exits in between (HLT, interrupts, ...) are part of it: the model does not
  represent them. A vCPU's first gap is cut by the start of the capture and is left out.
* *Trap mix*: the devices and their shares, read fractions and servers.
* *Exit/entry cost*: from CPUID exits (a trivial exit handled inside Xen) when the capture
  has at least :data:`CPUID_MIN` of them; the model charges a constant, half at the exit
  and half at the entry, so the fitted mean goes in.
* *Device-model service*, per server and trap kind, by one of two paths:

  - **round-trip stages**, when at least half of the I/O traps blocked and show every
    stage (scheduler records): service = dom0 running -> guest woken; the dom0 wake-up =
    exit -> dom0 running less the model's exit-side cost; ``vcpu_wake_ns`` = the mean of
    guest woken -> VM entry less the model's own resume-side cost;
  - **latency residual** otherwise: service = trap latency less the model's own cost of
    the trap outside the device model, and no separate wake-up (it cannot be told from the
    service without scheduler records, so the service carries it).

  The model's own costs come from a calibration run of the fitted scenario with every
  service and wake-up at 0 (:data:`CALIBRATION_TRAPS` traps): whatever model is
  installed, its exit, selection, notify and resume costs are subtracted, no more, as
  the mean per captured device and direction (:mod:`sim.trace.overhead`: an MMIO exit
  and a port exit differ by ~4 us in the model, and the address and a register write's
  PPGTT work matter too).
  Device models get one worker per vCPU: queueing the capture saw is already inside the
  fitted service, and must not be added twice.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sim.inputs import InputError
from sim.model.scenario import ACCESS_KINDS, Host, Scenario, load_preset, scenario_from_data
from sim.results import atomic_directory, write_text_atomic
from sim.trace.devicemap import DeviceMap, map_devices
from sim.trace.fitdist import FittedDist, constant, empirical_csv, fit_distribution
from sim.trace.iostream import GAP_MEASURED, TRAP_DTYPE, DomainStats, Spool, io_traps
from sim.trace.overhead import Overheads, calibration_devices, handled_in_xen, overheads
from sim.trace.reader import Capture
from sim.trace.validate import SimTraps, Validation, compare, simulate

MIN_SAMPLES = 30
STAGE_SHARE = 0.5
CALIBRATION_TRAPS = 20_000
CPUID_MIN = 30
XENGT_KINDS = ("mmio", "pio", "ppgtt_write")
DEFAULT_TSC_HZ: float = Host.model_fields["tsc_hz"].default


@dataclass
class Measured:
    """What the capture says about the domain."""

    path: Path
    domain: int
    cpu_hz: float
    capture: Capture
    stats: DomainStats
    traps: np.ndarray  # TRAP_DTYPE rows, each vCPU's in order

    @property
    def span_ns(self) -> float:
        return (self.capture.last_tsc - self.capture.first_tsc) * 1e9 / self.cpu_hz

    @property
    def vcpu_ids(self) -> list[int]:
        return sorted(self.stats.io_exits)

    def ns(self, cycles: np.ndarray) -> np.ndarray:
        return np.asarray(cycles, dtype=np.float64) * (1e9 / self.cpu_hz)

    @property
    def latency_ns(self) -> np.ndarray:
        """Exit -> the VM entry that resumed the vCPU, for traps whose entry is known."""
        t = self.traps
        known = t["resume_tsc"] > 0
        return self.ns(
            t["resume_tsc"][known].astype(np.int64) - t["exit_tsc"][known].astype(np.int64)
        )

    @property
    def arc_ns(self) -> np.ndarray:
        """xenalyze's arc: exit -> entry, or -> the wake-up of a vCPU that blocked."""
        t = self.traps
        return self.ns(t["end_tsc"].astype(np.int64) - t["exit_tsc"].astype(np.int64))


def read_capture(
    path: Path, domain: int, cpu_hz: float, work: Path, progress: Any = None
) -> Measured:
    """One pass over the capture; the domain's traps go to a spool file in ``work``."""
    cap = Capture(path)
    stats = DomainStats(domain)
    spool = Spool(work / "traps.bin", TRAP_DTYPE)
    for chunk in io_traps(cap, domain, stats, progress):
        spool.append(chunk)
    traps = spool.close()
    if domain not in stats.domains:
        seen = ", ".join(str(d) for d in sorted(stats.domains)) or "none"
        raise InputError(
            path, "--domain", f"no exit of domain {domain} in the capture (domains: {seen})"
        )
    if not len(traps):
        raise InputError(
            path,
            "--domain",
            f"domain {domain} has no I/O exits (port I/O, MMIO, page-table writes) to fit; "
            f"its {stats.domains[domain]} exits are all of other kinds",
        )
    return Measured(path, domain, cpu_hz, cap, stats, traps)


@dataclass
class Fit:
    """Everything ``fit.md`` reports, and the scenario it describes."""

    measured: Measured
    devices: DeviceMap
    dists: list[FittedDist] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path_used: str = "latency residual"
    overheads: Overheads | None = None  # the model's own cost, per device and direction
    costs: dict[str, float] = field(default_factory=dict)
    exit_entry: FittedDist | None = None
    scenario: dict[str, Any] = field(default_factory=dict)
    validation: Validation | None = None
    simulated: SimTraps | None = None
    unassigned_traps: int = 0
    in_xen: set[int] = field(default_factory=set)  # devices Xen's own emulators answer
    calibration_traps: int = 0


def _think(m: Measured, fit: Fit) -> list[dict[str, Any]]:
    """Per model vCPU: its think time's distribution (the CSV name is think-vcpuN.csv)."""
    out = []
    lat = m.latency_ns.mean()
    vcpu, kind = m.traps["vcpu"], m.traps["gap_kind"]
    for i, v in enumerate(m.vcpu_ids):
        gaps = m.ns(m.traps["gap_tsc"][(vcpu == v) & (kind == GAP_MEASURED)])
        name = f"think, vCPU {v}"
        if len(gaps) >= MIN_SAMPLES:
            d = fit_distribution(name, gaps, f"think-vcpu{i}.csv")
        else:
            # Too few gaps to fit: an exponential with the mean that keeps the vCPU's rate.
            mean = max(m.span_ns / max(m.stats.io_exits[v], 1) - lat, 1.0)
            d = constant(name, mean)
            d.chosen, d.dist = "exponential", {"dist": "exponential", "mean_ns": mean}
            fit.notes.append(
                f"vCPU {v} has {len(gaps)} measured gaps (< {MIN_SAMPLES}): its think time is "
                "an exponential whose mean keeps its measured trap rate."
            )
        fit.dists.append(d)
        out.append(d.dist)
    return out


def _kinds(dmap: DeviceMap, idx: np.ndarray) -> np.ndarray:
    """Per trap (its device index ``idx``), the index of its model trap kind in
    ACCESS_KINDS (-1: no device)."""
    table = np.array([ACCESS_KINDS.index(d.kind) for d in dmap.devices] + [-1], dtype=np.int64)
    return table[np.where(idx >= 0, idx, len(dmap.devices))]


def _scenario(m: Measured, fit: Fit, think: list[dict], platform: str) -> dict[str, Any]:
    """The fitted scenario's data, with service and wake-up still at 0 (calibration)."""
    zero = {"dist": "constant", "value_ns": 0.0}
    n = len(m.vcpu_ids)
    ppgtt = load_preset(platform)["ppgtt"]
    pt = fit.devices.page_tables
    vgpu: dict[str, Any] = {
        "ppgtt": {
            "live_pages": pt.pages if pt else 0,
            "pages_per_ppgtt": min(max(pt.pages, 1), ppgtt["max_pages_per_ppgtt"])
            if pt
            else ppgtt["pages_per_ppgtt"],
            "contiguity": round(pt.contiguity, 4) if pt else 0.0,
        },
        "device_model": {"workers": n, "wakeup": zero, "service": {"default": zero}},
    }
    guest: dict[str, Any] = {"name": f"dom{m.domain}", "vcpus": n}
    if n == 1:
        guest["think"] = think[0]
    else:
        guest["vcpu_think"] = think
    guest["devices"] = fit.devices.scenario_devices()
    guest["vgpu"] = vgpu
    guest["qemu"] = {"workers": n, "wakeup": dict(zero), "service": {"default": dict(zero)}}
    return {
        "schema_version": 1,
        "name": f"fit-{m.path.stem}-dom{m.domain}",
        "description": f"Fitted by vgpu-sim trace fit to domain {m.domain} of {m.path.name}",
        "platform": platform,
        "seed": 1,
        "duration_ms": round(m.span_ns / 1e6, 6),
        "warmup_ms": 0,
        # Every page the capture shows trapped was write-protected, so no node limit
        # refuses a map here; --set xen.max_nr_io_ranges=N to study a limit.
        "xen": {"max_nr_io_ranges": None},
        "costs": dict(fit.costs),
        "host": {"tsc_hz": m.cpu_hz},
        "guests": [guest],
    }


def _exit_entry(m: Measured, fit: Fit) -> None:
    cycles = np.concatenate(m.stats.cpuid_cycles) if m.stats.cpuid_cycles else np.zeros(0)
    if len(cycles) < CPUID_MIN:
        fit.notes.append(
            f"{len(cycles)} CPUID exits (< {CPUID_MIN}): exit and entry costs keep the "
            "scenario's defaults."
        )
        return
    fit.exit_entry = fit_distribution("exit + entry (CPUID arcs)", m.ns(cycles), "exit-entry.csv")
    half = round(fit.exit_entry.mean / 2, 1)
    fit.costs.update(vmexit_ns=half, vmentry_ns=half)


def _server_dists(
    fit: Fit, server: str, kinds: tuple[str, ...], samples: dict[str, np.ndarray], quantity: str
) -> dict[str, Any] | None:
    """``{default: ..., <kind>: ...}`` for one server, or None if it had no traps."""
    mine = {k: samples[k] for k in kinds if k in samples and len(samples[k])}
    if not mine:
        return None
    pooled = np.concatenate(list(mine.values()))
    default = fit_distribution(f"{quantity}, {server}", pooled, f"{quantity}-{server}.csv")
    fit.dists.append(default)
    out: dict[str, Any] = {"default": default.dist}
    if len(mine) > 1:
        for k, v in mine.items():
            if len(v) >= MIN_SAMPLES:
                d = fit_distribution(f"{quantity}, {server} {k}", v, f"{quantity}-{server}-{k}.csv")
                fit.dists.append(d)
                out[k] = d.dist
    return out


def _staged(m: Measured) -> np.ndarray:
    """Per trap: it blocked, and the capture shows every stage of its round trip."""
    t = m.traps
    return (t["closed_by"] == 1) & (t["dom0_tsc"] > 0) & (t["wake_tsc"] > 0) & (t["resume_tsc"] > 0)


def _service(
    m: Measured,
    fit: Fit,
    kinds: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    data: dict[str, Any],
) -> None:
    """Fill the device models' service (and wake-up) from the capture, by one of the two
    paths of the module docstring; ``before``/``after``: per trap, the model's own cost
    on either side of the device model (sim.trace.overhead)."""
    t = m.traps
    exit_tsc = t["exit_tsc"].astype(np.int64)
    staged = _staged(m)
    use_stages = staged.mean() >= STAGE_SHARE
    service: dict[str, np.ndarray] = {}
    wakeup: dict[str, np.ndarray] = {}
    if use_stages:
        fit.path_used = "round-trip stages"
        sel = staged & (kinds >= 0)
        k = kinds[sel]
        serve = m.ns(t["wake_tsc"][sel].astype(np.int64) - t["dom0_tsc"][sel].astype(np.int64))
        wake = m.ns(t["dom0_tsc"][sel].astype(np.int64) - exit_tsc[sel]) - before[sel]
        resume = m.ns(t["resume_tsc"][sel].astype(np.int64) - t["wake_tsc"][sel].astype(np.int64))
        fit.costs["vcpu_wake_ns"] = round(max(0.0, float((resume - after[sel]).mean())), 1)
        for i, name in enumerate(ACCESS_KINDS):
            service[name] = np.maximum(serve[k == i], 0)
            wakeup[name] = np.maximum(wake[k == i], 0)
    else:
        known = (t["resume_tsc"] > 0) & (kinds >= 0)
        k = kinds[known]
        lat = m.ns(t["resume_tsc"][known].astype(np.int64) - exit_tsc[known])
        resid = lat - before[known] - after[known]
        for i, name in enumerate(ACCESS_KINDS):
            service[name] = np.maximum(resid[k == i], 0)
        clipped = int((resid < 0).sum())
        if clipped:
            fit.notes.append(
                f"{clipped} traps were faster than the model's own cost of them; their "
                "service is taken as 0."
            )
    guest = data["guests"][0]
    for server, kinds_of_server, parent, key in (
        ("xengt", XENGT_KINDS, guest["vgpu"], "device_model"),
        ("qemu", ("other",), guest, "qemu"),
    ):
        svc = _server_dists(fit, server, kinds_of_server, service, "service")
        if svc is None:
            del parent[key]  # the server had no traps: it keeps the schema's defaults
            continue
        target = parent[key]
        target["service"] = svc
        if use_stages:
            pooled = np.concatenate([wakeup[k] for k in kinds_of_server if k in wakeup])
            wk = fit_distribution(f"dom0 wake-up, {server}", pooled, f"wakeup-{server}.csv")
            fit.dists.append(wk)
            target["wakeup"] = wk.dist


class _Hex(int):
    """An address, written in hex in the scenario file."""


class _Dumper(yaml.SafeDumper):
    """Plain YAML: addresses in hex, no anchors for repeated values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(_Hex, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", hex(v)))


def _yaml(data: dict[str, Any]) -> str:
    data = copy.deepcopy(data)
    for dev in data["guests"][0].get("devices", []):
        dev["ranges"] = [[_Hex(s), _Hex(e)] for s, e in dev.get("ranges", [])] or None
        if dev["ranges"] is None:
            del dev["ranges"]
    head = "# Written by vgpu-sim trace fit; fit.md says how each value was found.\n"
    if not data.get("costs"):
        data.pop("costs", None)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)
    return head + text


def _write_csvs(fit: Fit, directory: Path) -> None:
    for d in [*fit.dists, *([fit.exit_entry] if fit.exit_entry else [])]:
        if d.chosen == "empirical" and d.values is not None:
            write_text_atomic(directory / d.dist["file"], empirical_csv(d.values))


def _load(
    data: dict[str, Any], directory: Path, overrides: list[tuple[str, Any]], final: Path
) -> Scenario:
    """Write ``scenario.yaml`` into the (temporary) ``directory`` and load it, with the
    user's ``--set`` overrides; errors name the file it will become, ``final``."""
    path = directory / "scenario.yaml"
    write_text_atomic(path, _yaml(data))
    try:
        return scenario_from_data(yaml.safe_load(path.read_text(encoding="utf-8")), path, overrides)
    except InputError as exc:
        raise InputError(final / "scenario.yaml", exc.keypath, exc.problem) from None


def fit_capture(
    path: Path,
    domain: int,
    out_dir: Path,
    *,
    cpu_hz: float | None = None,
    platform: str = "bdw",
    overrides: list[tuple[str, Any]] | None = None,
    max_sim_traps: int | None = 200_000,
    progress: Callable[[int, int], None] | None = None,
    report: Callable[[Fit, Path], None] | None = None,
) -> Fit:
    """Fit, validate and write ``out_dir`` (which must not exist): ``scenario.yaml``, its
    CSVs, ``fit.md`` and the figure. ``report`` writes the last two (sim.trace.fitreport)."""
    if out_dir.exists():
        raise InputError(out_dir, "--out", "already exists; a fit is never written over")
    overrides = overrides or []
    hz = cpu_hz or DEFAULT_TSC_HZ
    with tempfile.TemporaryDirectory(prefix="vgpu-sim-fit-") as work:
        m = read_capture(path, domain, hz, Path(work), progress)
        fit = Fit(m, map_devices(m.traps))
        if cpu_hz is None:
            fit.notes.append(f"--cpu-hz not given: the TSC is taken to run at {hz:.4g} Hz.")
        device = fit.devices.index_of(m.traps)
        kinds = _kinds(fit.devices, device)
        fit.unassigned_traps = int((kinds < 0).sum())
        with atomic_directory(out_dir) as tmp:
            _exit_entry(m, fit)
            think = _think(m, fit)
            data = _scenario(m, fit, think, platform)
            _write_csvs(fit, tmp)
            if _staged(m).mean() >= STAGE_SHARE:
                data["costs"]["vcpu_wake_ns"] = 0.0  # measured below, from the stages
            # Long enough for CALIBRATION_TRAPS traps at the capture's rate.
            stretch = -(-CALIBRATION_TRAPS // len(m.traps)) + 1
            longer = [*overrides, ("duration_ms", data["duration_ms"] * stretch)]
            calib = _load(data, tmp, longer, out_dir)
            calibration = simulate(calib, tmp, CALIBRATION_TRAPS)
            fit.calibration_traps = len(calibration.t_trap)
            sim_device = calibration_devices(fit.devices, calibration)
            fit.in_xen = handled_in_xen(fit.devices, calibration, sim_device)
            if fit.in_xen:
                # Their latency is the model's own: leave them out of the service fit.
                kinds = np.where(np.isin(device, list(fit.in_xen)), -1, kinds)
            write = m.traps["write"].astype(np.int64)
            fit.overheads = overheads(
                fit.devices, calibration, sim_device, device, write, fit.in_xen
            )
            before, after = fit.overheads.per_trap(device, write)
            _service(m, fit, kinds, before, after, data)
            data["costs"].update(fit.costs)
            fit.scenario = data
            _write_csvs(fit, tmp)
            scenario = _load(data, tmp, overrides, out_dir)
            fit.simulated = simulate(scenario, tmp, max_sim_traps)
            fit.validation = compare(
                m.latency_ns, m.stats.io_exits, m.span_ns, fit.simulated, m.vcpu_ids
            )
            if report is not None:
                report(fit, tmp)
    return fit
