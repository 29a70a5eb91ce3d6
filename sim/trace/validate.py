"""Run a fitted scenario and hold it against the capture it was fitted to.

As SimGrid validates its VM model against real runs, the fit is judged by the quantities
a user would measure on the host:

* **trap latency**, the same quantity on both sides: from the VM exit of an I/O trap to
  the VM entry that resumes the vCPU. In the capture that is the exit arc when it ended
  at the entry; when the vCPU blocked on the device model, xenalyze ends the arc at the
  wake-up and the latency runs on to the entry after it (``resume_tsc``, from the round
  trip). In the model it is ``t_resumed - t_trap``, which is what ``summary.csv``
  reports. (The xenalyze arc of a blocked trap leaves out the wake-up -> running ->
  entry stage, which the guest waits for too; ``fit.md`` shows the arc figure beside.)
* **trap rate** per vCPU: traps per second of capture, and per simulated second.

Criteria (issue #10): the domain's trap rate, and that of every vCPU with at least
:data:`MIN_TRAPS_FOR_RATE` traps, within 20 %; the mean trap latency within 10 %. The
two-sample Kolmogorov-Smirnov statistic and the quantiles are reported, not judged: with
thousands of traps a KS test rejects differences far below anything that matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from sim.model.recorder import Trap
from sim.model.scenario import ACCESS_KINDS, Scenario
from sim.model.simulation import Simulation

QUANTILES = (10, 50, 90, 99)
RATE_TOLERANCE = 0.20
MEAN_TOLERANCE = 0.10
MIN_TRAPS_FOR_RATE = 100
KS_MAX_VALUES = 50_000


@dataclass
class SimTraps:
    """Every trap of a run, as plain arrays (vCPU index in its guest, kind index)."""

    vcpu: np.ndarray
    kind: np.ndarray
    t_trap: np.ndarray
    t_served: np.ndarray
    t_resumed: np.ndarray
    end_ns: float
    addr: np.ndarray  # the access's port or guest-physical address
    is_port: np.ndarray
    is_write: np.ndarray
    to_dm: np.ndarray  # sent to a device model (else handled inside Xen)

    @property
    def latency(self) -> np.ndarray:
        return self.t_resumed - self.t_trap


def simulate(scenario: Scenario, base_dir: Path, max_traps: int | None) -> SimTraps:
    """Run ``scenario`` (its first guest is the fitted one) and keep every trap of it."""
    cols: dict[str, list] = {
        k: [] for k in ("vcpu", "kind", "trap", "served", "res", "addr", "port", "write", "dm")
    }
    guest = scenario.guests[0].name
    kinds = {k: i for i, k in enumerate(ACCESS_KINDS)}

    def keep(trap: Trap) -> None:
        if trap.vcpu.guest.name != guest:
            return
        cols["vcpu"].append(trap.vcpu.index)
        cols["kind"].append(kinds[trap.kind])
        cols["trap"].append(trap.t_trap)
        cols["served"].append(trap.t_served)
        cols["res"].append(trap.t_resumed)
        cols["addr"].append(trap.access.addr)
        cols["port"].append(trap.access.kind == "pio")
        cols["write"].append(trap.access.is_write)
        cols["dm"].append(trap.dm is not None)

    if max_traps is not None:
        scenario = scenario.model_copy(update={"max_accesses": max_traps})
    sim = Simulation(scenario, scenario.seed, base_dir=base_dir, trace=keep)
    result = sim.run()
    return SimTraps(
        vcpu=np.asarray(cols["vcpu"], dtype=np.int64),
        kind=np.asarray(cols["kind"], dtype=np.int64),
        t_trap=np.asarray(cols["trap"], dtype=np.float64),
        t_served=np.asarray(cols["served"], dtype=np.float64),
        t_resumed=np.asarray(cols["res"], dtype=np.float64),
        end_ns=result.sim_time_ns,
        addr=np.asarray(cols["addr"], dtype=np.uint64),
        is_port=np.asarray(cols["port"], dtype=bool),
        is_write=np.asarray(cols["write"], dtype=bool),
        to_dm=np.asarray(cols["dm"], dtype=bool),
    )


@dataclass
class Criterion:
    name: str
    measured: float
    simulated: float
    tolerance: float

    @property
    def error(self) -> float:
        return (self.simulated - self.measured) / self.measured if self.measured else float("inf")

    @property
    def passed(self) -> bool:
        return abs(self.error) <= self.tolerance


@dataclass
class Validation:
    measured_q: dict[int, float]
    simulated_q: dict[int, float]
    measured_mean: float
    simulated_mean: float
    measured_n: int
    simulated_n: int
    ks_d: float
    ks_p: float
    rates: list[tuple[str, float, float, int]]  # (label, measured /s, simulated /s, traps)
    criteria: list[Criterion] = field(default_factory=list)
    simulated_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria)


def compare(
    measured_latency_ns: np.ndarray,
    measured_traps: dict[int, int],
    span_ns: float,
    sim: SimTraps,
    vcpu_ids: list[int],
) -> Validation:
    """Quantiles, means, rates and the KS statistic; ``vcpu_ids[i]`` is the capture's id
    of the model's vCPU ``i``."""
    meas = np.asarray(measured_latency_ns, dtype=np.float64)
    simu = sim.latency
    mq = dict(zip(QUANTILES, np.percentile(meas, QUANTILES).tolist(), strict=True))
    sq = dict(zip(QUANTILES, np.percentile(simu, QUANTILES).tolist(), strict=True))
    ks = stats.ks_2samp(_spread(meas), _spread(simu))
    span_s, sim_s = span_ns / 1e9, sim.end_ns / 1e9
    sim_counts = np.bincount(sim.vcpu, minlength=len(vcpu_ids))
    rates = [
        (
            f"vCPU {v}",
            measured_traps.get(v, 0) / span_s,
            float(sim_counts[i]) / sim_s,
            measured_traps.get(v, 0),
        )
        for i, v in enumerate(vcpu_ids)
    ]
    total_m = sum(measured_traps.get(v, 0) for v in vcpu_ids)
    rates.append(("domain", total_m / span_s, len(simu) / sim_s, total_m))
    criteria = [
        Criterion(f"trap rate, {label}", m, s, RATE_TOLERANCE)
        for label, m, s, n in rates
        if label == "domain" or n >= MIN_TRAPS_FOR_RATE
    ]
    criteria.append(
        Criterion("mean trap latency", float(meas.mean()), float(simu.mean()), MEAN_TOLERANCE)
    )
    return Validation(
        measured_q=mq,
        simulated_q=sq,
        measured_mean=float(meas.mean()),
        simulated_mean=float(simu.mean()),
        measured_n=len(meas),
        simulated_n=len(simu),
        ks_d=float(ks.statistic),
        ks_p=float(ks.pvalue),
        rates=rates,
        criteria=criteria,
        simulated_s=sim_s,
    )


def _spread(values: np.ndarray) -> np.ndarray:
    """At most KS_MAX_VALUES evenly spaced values of the sorted sample (same CDF)."""
    if len(values) <= KS_MAX_VALUES:
        return values
    s = np.sort(values)
    return s[np.linspace(0, len(s) - 1, KS_MAX_VALUES).round().astype(np.int64)]
