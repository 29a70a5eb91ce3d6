"""The report of a fit: ``fit.md`` and the figure of measured and simulated latency CDFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from sim.results import save_figure, write_text_atomic
from sim.trace import format as fmt
from sim.trace.fit import CPUID_MIN, MIN_SAMPLES, Fit
from sim.trace.fitdist import ALPHA, FAMILIES
from sim.trace.overhead import MIN_KEY
from sim.trace.validate import MEAN_TOLERANCE, MIN_TRAPS_FOR_RATE, QUANTILES, RATE_TOLERANCE

FIGURE = "latency_cdf"
CDF_POINTS = 5000


def write_report(fit: Fit, directory: Path) -> None:
    """``fit.md`` and ``latency_cdf.png``/``.svg`` in ``directory``, each atomically."""
    write_figure(fit, directory / FIGURE)
    write_text_atomic(directory / "fit.md", render(fit))


def write_figure(fit: Fit, stem: Path) -> list[Path]:
    v, sim = fit.validation, fit.simulated
    assert v is not None
    assert sim is not None
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    for label, values, style in (
        (f"measured (capture), n = {v.measured_n:,}", fit.measured.latency_ns, "-"),
        (f"simulated (fitted scenario), n = {v.simulated_n:,}", sim.latency, "--"),
    ):
        x = np.sort(np.asarray(values, dtype=np.float64)) / 1e3
        y = np.arange(1, len(x) + 1) / len(x)
        if len(x) > CDF_POINTS:  # evenly spaced points of the CDF are enough to draw it
            keep = np.linspace(0, len(x) - 1, CDF_POINTS).round().astype(np.int64)
            x, y = x[keep], y[keep]
        ax.step(x, y, where="post", linestyle=style, label=label)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("trap latency, VM exit -> VM entry (µs, log scale)")
    ax.set_ylabel("fraction of traps")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    m = fit.measured
    verdict = "pass" if v.passed else "FAIL"
    ax.set_title(
        f"{m.path.name}, domain {m.domain}: two-sample KS D = {v.ks_d:.3f}; {verdict}",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, stem, dpi=120)


def _us(ns: float) -> str:
    return f"{ns / 1e3:.2f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def render(fit: Fit) -> str:
    m, v = fit.measured, fit.validation
    assert v is not None
    cap = m.capture
    lines = [f"# Fit of domain {m.domain} of `{m.path.name}`", ""]
    lines += [
        f"Capture `{m.path}`: {cap.file_size:,} bytes, {cap.records:,} records, "
        f"{len(cap.pcpus)} pCPUs, {m.span_ns / 1e6:.3f} ms from first to last TSC at "
        f"{m.cpu_hz / 1e9:.4g} GHz; lost records: {cap.lost_records}.",
        "",
    ]
    lines += [f"- warning: {w}" for w in cap.warnings] + ([""] if cap.warnings else [])
    lines += _verdict(fit)
    lines += _latency(fit)
    lines += _rates(fit)
    lines += _sources(fit)
    lines += _devices(fit)
    lines += _distributions(fit)
    lines += _costs(fit)
    if fit.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in fit.notes] + [""]
    lines += _limits()
    return "\n".join(lines)


def _verdict(fit: Fit) -> list[str]:
    v = fit.validation
    assert v is not None
    rows = [
        [
            c.name,
            f"{c.measured:,.0f}/s" if "rate" in c.name else f"{_us(c.measured)} µs",
            f"{c.simulated:,.0f}/s" if "rate" in c.name else f"{_us(c.simulated)} µs",
            f"{100 * c.error:+.1f} %",
            f"± {100 * c.tolerance:.0f} %",
            "pass" if c.passed else "**FAIL**",
        ]
        for c in v.criteria
    ]
    lines = ["## Verdict: " + ("PASS" if v.passed else "FAIL"), ""]
    lines += [
        "The fitted scenario (`scenario.yaml`) was run for the capture's span "
        f"({v.simulated_s * 1e3:.3f} ms simulated, seed 1) and compared with the capture. "
        f"Acceptance (issue #10): trap rate within {RATE_TOLERANCE:.0%} (the domain's, and "
        f"every vCPU's with at least {MIN_TRAPS_FOR_RATE} traps), mean trap latency within "
        f"{MEAN_TOLERANCE:.0%}.",
        "",
    ]
    return lines + _table(
        ["criterion", "measured", "simulated", "error", "tolerance", "result"], rows
    )


def _latency(fit: Fit) -> list[str]:
    v, m = fit.validation, fit.measured
    assert v is not None
    head = ["", "n", "mean µs", *(f"p{q} µs" for q in QUANTILES)]
    rows = [
        [
            "measured",
            f"{v.measured_n:,}",
            _us(v.measured_mean),
            *(_us(v.measured_q[q]) for q in QUANTILES),
        ],
        [
            "simulated",
            f"{v.simulated_n:,}",
            _us(v.simulated_mean),
            *(_us(v.simulated_q[q]) for q in QUANTILES),
        ],
    ]
    arcs = m.arc_ns
    unknown = len(m.traps) - v.measured_n
    lines = [
        "## Trap latency",
        "",
        "Trap latency is the same quantity on both sides: from an I/O trap's VM exit to the "
        "VM entry that resumes the vCPU. In the capture that is the exit arc when the arc "
        "ends at the entry; when the vCPU blocked on the device model, xenalyze ends the arc "
        "at the wake-up, and the latency runs on to the next entry. In the model it is "
        "`t_resumed - t_trap`, as `summary.csv` reports it.",
        "",
        *_table(head, rows),
        f"Two-sample Kolmogorov-Smirnov: D = {v.ks_d:.4f}, p = {v.ks_p:.3g} (reported, not "
        "judged: with thousands of traps it rejects differences far below what matters).",
        "",
        f"For reference, xenalyze's arcs of these traps (what `vgpu-sim trace summarize` "
        f"counts): mean {_us(float(arcs.mean()))} µs over {len(arcs):,} arcs."
        + (f" {unknown} traps have no VM entry in the capture and no latency." if unknown else ""),
        "",
        f"![measured and simulated trap-latency CDFs]({FIGURE}.png)",
        "",
    ]
    return lines


def _rates(fit: Fit) -> list[str]:
    v = fit.validation
    assert v is not None
    rows = []
    for i, (label, meas, simu, n) in enumerate(v.rates):
        model = f"vCPU {i}" if label != "domain" else "all"
        err = f"{100 * (simu - meas) / meas:+.1f} %" if meas else "n/a"
        rows.append([label, model, f"{n:,}", f"{meas:,.0f}", f"{simu:,.0f}", err])
    return [
        "## Trap rate",
        "",
        *_table(["capture", "model", "traps", "measured /s", "simulated /s", "error"], rows),
    ]


def _sources(fit: Fit) -> list[str]:
    m = fit.measured
    st = m.stats
    trapping = m.vcpu_ids
    silent = [v for v in st.vcpus if v not in trapping]
    total = sum(n for n, _ in st.exits.values())
    io = sum(st.io_exits.values())
    lines = [
        "## What the scenario is built from",
        "",
        f"- vCPUs with exits in the capture: {st.vcpus}; with I/O traps: {trapping} (model "
        f"vCPUs 0..{len(trapping) - 1}, in that order); never trapping, not in the model: "
        f"{silent or 'none'}.",
        f"- exits of domain {m.domain}: {total:,}; I/O traps the model represents: {io:,} "
        f"({100 * io / total:.1f} %). Of these, {st.completed_after_wake} are reads whose "
        f"record came after the wake-up (Xen traces a read when it completes) and "
        f"{st.unknown_port_reads} port reads whose port is unknown (shared among the port "
        "devices).",
    ]
    unattributed = st.domains.get(fmt.DEFAULT_DOMAIN, 0)
    if unattributed:
        lines.append(
            f"- {unattributed:,} exits came before any scheduler record on their pCPU "
            "(xenalyze's default domain, 32768): no domain can be given them, they are left out."
        )
    if fit.unassigned_traps:
        lines.append(f"- {fit.unassigned_traps} traps fall in no device and are left out.")
    lines += ["", "Exits the model does not represent (their time is part of the think time):", ""]
    rows = [
        [fmt.exit_reason_name(r), f"{n:,}", f"{100 * n / total:.1f} %", f"{c / m.cpu_hz * 1e3:.3f}"]
        for r, (n, c) in sorted(st.not_modelled().items(), key=lambda kv: -kv[1][0])
    ]
    if rows:
        lines += _table(["exit reason", "arcs", "of the domain's exits", "time in arcs, ms"], rows)
    else:
        lines += ["none: every exit of the domain is an I/O trap.", ""]
    return lines


def _devices(fit: Fit) -> list[str]:
    total = sum(d.traps for d in fit.devices.devices) or 1.0
    rows = [
        [
            d.name,
            d.space,
            d.server,
            "" if d.space == "page_tables" else f"{d.first:#x}-{d.last:#x}",
            f"{d.traps:,.0f}",
            f"{d.traps / total:.3f}",
            f"{d.reads / d.traps:.2f}" if d.traps else "",
            d.kind,
            f"{d.closed_by_wake:,}",
            "Xen's emulator" if i in fit.in_xen else "device model",
        ]
        for i, d in enumerate(fit.devices.devices)
    ]
    lines = [
        "### Devices",
        "",
        "Grouped as `sim/trace/devicemap.py` says: named PC devices, clusters of the other "
        "ports (gap > 0x20) and MMIO addresses (gap > 1 MiB); `xengt` for what overlaps the "
        "vGPU's default BAR0 and VGA ports and for page-table writes, `qemu` otherwise.",
        "",
        *_table(
            [
                "device",
                "space",
                "server",
                "range seen",
                "traps",
                "share",
                "reads",
                "kind",
                "blocked",
                "in the model",
            ],
            rows,
        ),
    ]
    if fit.in_xen:
        names = ", ".join(fit.devices.devices[i].name for i in sorted(fit.in_xen))
        lines += [
            f"In the model, Xen's own emulators answer {names} (`sim/xen/intercept.py`, as "
            "the scenario's Xen version registers them) before any ioreq server: no device "
            "model serves them, so their traps are left out of the service fit and their "
            "latency is the model's own.",
            "",
        ]
    pt = fit.devices.page_tables
    if pt is not None:
        lines += [
            f"Page tables: {pt.pages:,} distinct pages written (`vgpu.ppgtt.live_pages`, a "
            f"lower bound), {pt.contiguity:.3f} of them followed by a written neighbour "
            "(`contiguity`).",
            "",
        ]
    return lines


def _distributions(fit: Fit) -> list[str]:
    lines = [
        "### Distributions",
        "",
        f"Criterion (`sim/trace/fitdist.py`): exponential, lognormal and gamma by maximum "
        f"likelihood (lognormal and gamma only when every value is positive: a blank AIC "
        f"means the family was not tried); the lowest AIC is used if a one-sample KS test "
        f"does not reject it at {ALPHA} (p >= {ALPHA}), else the measured values (an "
        f"empirical CSV). Constant values are a constant. Fewer than {MIN_SAMPLES} values: "
        "see the notes.",
        "",
    ]
    dists = [*fit.dists, *([fit.exit_entry] if fit.exit_entry else [])]
    rows = []
    for d in dists:
        aic = {c.family: f"{c.aic:,.0f}" for c in d.candidates}
        best = min(d.candidates, key=lambda c: c.aic) if d.candidates else None
        ks = f"{best.family}: {best.ks_d:.3f} / {best.ks_p:.3g}" if best else ""
        rows.append(
            [
                d.quantity,
                f"{d.n:,}",
                f"{_us(d.mean)}",
                d.describe(),
                *(aic.get(f, "") for f in FAMILIES),
                ks,
            ]
        )
    return lines + _table(
        ["quantity", "n", "mean µs", "chosen", *(f"AIC {f}" for f in FAMILIES), "best KS D / p"],
        rows,
    )


def _costs(fit: Fit) -> list[str]:
    rows = [
        [
            o.device,
            "write" if o.write else "read",
            o.kind,
            o.exit_reason,
            f"{o.captured:,}",
            f"{o.calibration:,} ({o.source})",
            _us(o.before),
            _us(o.after),
            _us(o.spread),
        ]
        for o in (fit.overheads.rows if fit.overheads else [])
    ]
    head = [
        "device",
        "dir",
        "kind",
        "exit",
        "captured traps",
        "calibration traps (key)",
        "exit -> device model, µs",
        "device model -> entry, µs",
        "spread (sd), µs",
    ]
    lines = [
        "### Costs and service",
        "",
        f"Service path: **{fit.path_used}** (`sim/trace/fit.py` says how each works). The "
        f"model's own cost of a trap outside the device model, from a calibration run of "
        f"the fitted scenario with every service and wake-up at 0 "
        f"({fit.calibration_traps:,} traps), was subtracted: its mean per device and "
        f"direction (`sim/trace/overhead.py`; a key with fewer than {MIN_KEY} calibration "
        "traps takes the device's, then its kind and exit type's). The spread is what "
        "varies within a key in the model itself (a page's place in the rangeset, lock "
        "and CPU waits): it stays in the fitted service.",
        "",
        *_table(head, rows),
    ]
    if fit.exit_entry is not None:
        lines.append(
            f"Exit and entry: CPUID arcs, {fit.exit_entry.describe()}; `costs.vmexit_ns` and "
            f"`vmentry_ns` take half the mean each."
        )
    else:
        lines.append(f"Exit and entry: fewer than {CPUID_MIN} CPUID exits; the defaults stay.")
    for key, value in sorted(fit.costs.items()):
        lines.append(f"- `costs.{key}` = {value}")
    return [*lines, ""]


def _limits() -> list[str]:
    return [
        "## Limits",
        "",
        "- The model does not represent non-I/O exits; their time is inside the think time.",
        "- Each device model gets one worker per vCPU, so the fitted model does not queue "
        "again what the measured service already holds: what-if studies of device-model "
        "load on a fitted scenario should set `workers` back.",
        "- Which server handles a device is a rule (see Devices), not something a capture "
        "records; Xen's internal emulators (PIT, RTC, ...) are modelled as QEMU's.",
        "- Page-table pages not written during the capture are not counted.",
        "",
    ]
