"""Scenario files: schema, platform presets, ``--set`` overrides and loading.

A scenario is an inert description (Ciw's idea): validated in full before any SimPy
object exists. Every default number below names its source in its ``description``, with
the tags of ``shared/reference/cost-anchors.md``: [CODE] read from source, [PUB] a
published figure, [HERE] measured on this project's machines, [ASSUMPTION] a proposed
default with no primary number, to be swept rather than trusted.

Durations carry their unit in the key name (``_ns``, ``_ms``). Simulated time is in ns.

Every number has a finite range a real system could have, made with
:func:`sim.inputs.bounded`, which records why (``tests/test_bounds.py`` fails for a number
without one). Checks that need several fields (RAM against page tables and BARs, address
ranges that must not overlap) are validators here; a trap cycle that could take no
simulated time is refused by :func:`sim.model.budget.zero_time_cycles`, called from
:func:`scenario_from_data`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from sim.inputs import (
    InputError,
    StrictModel,
    bounded,
    load_yaml,
    parse_yaml,
    read_input_text,
    set_keypath,
    validate,
)
from sim.model.bounds import (
    MAX_GUESTS,
    Addr,
    DurationMs,
    Fraction,
    LifetimeMs,
    MaxAccesses,
    MaxIoRanges,
    Name,
    Pages,
    PagesAtLeastOne,
    Port,
    RamMb,
    Seed,
    Vcpus,
    WarmupMs,
    guest_layout_problem,
)
from sim.model.costs import Costs
from sim.model.device_models import (
    QemuDeviceModel,
    XengtDeviceModel,
    xengt_service,
)
from sim.model.devices import Device, Replay, check_devices, conflicting_guest_keys
from sim.model.dists import (
    Dist,
    EmpiricalDist,
    expo,
    read_empirical,
)
from sim.model.host import Host
from sim.xen.abi import parse_pci_slot
from sim.xen.profiles import VERSIONS, Design, resolve

SCHEMA_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
PRESET_DIR = Path(__file__).parent / "presets"
PLATFORMS = ("hsw", "bdw")
ACCESS_KINDS = ("mmio", "pio", "ppgtt_write", "other")


def _ordered_range(value: list[int]) -> list[int]:
    if value[0] > value[1]:
        raise ValueError(f"start {value[0]:#x} is above end {value[1]:#x}")
    return value


def _pci_address(value: str) -> str:
    parse_pci_slot(value)  # validation only: the config keeps the user's spelling
    return value


# A YAML list [start, end]: strict validation refuses lists for tuple types.
AddrRange = Annotated[list[Addr], Field(min_length=2, max_length=2), AfterValidator(_ordered_range)]
PortRange = Annotated[list[Port], Field(min_length=2, max_length=2), AfterValidator(_ordered_range)]


# -- the model's parts ----------------------------------------------------------------------
class XenConfig(StrictModel):
    version: Literal["4.6", "4.9", "4.12", "master"] = Field(
        "4.6",
        description="[CODE] the Xen release whose routing rules apply (sim.xen.profiles: "
        "RELEASE-4.6.0, 4.9.0, 4.12.0 or master c447b7308b). Default 4.6, or 4.9 when only "
        "design p2m-ioreq-server is given (the first release with it, ca2b511d3f).",
    )
    design: Literal["xen-4.6", "wp-split", "p2m-ioreq-server"] = Field(
        "xen-4.6",
        description="How write-protected PPGTT pages are tracked; see sim.xen.ioreq. xen-4.6 "
        "runs on 4.6 only (c858e932c1 removed its p2m type in 4.7); wp-split is f5a32c5b8e "
        "on 4.6 (reverted, never released); p2m-ioreq-server is Xen 4.9+. Default: the "
        "version's own design.",
    )
    rangeset: Literal["list", "rbtree"] = Field(
        "list",
        description="list: Xen's linked list (4.5..master). rbtree: proposed by the 2015 "
        "series, never landed upstream.",
    )
    max_nr_io_ranges: MaxIoRanges | None = Field(
        256,
        description="[CODE] MAX_NR_IO_RANGES = 256 (xen/include/asm-x86/hvm/domain.h "
        "@4.6). Intel's XenGT tree: 512 (intel/Igvtg-xen 4bc17c1aef). null: unlimited.",
    )

    @model_validator(mode="before")
    @classmethod
    def _version_and_design(cls, data: Any) -> Any:
        """Fill whichever of version and design is missing; refuse a pair no release ran."""
        if not isinstance(data, dict):
            return data
        if "mmio_window" in data:
            raise ValueError(
                "mmio_window was replaced by version: the MMIO window is part of the Xen "
                'release (version: "4.12" for the direction-aware window of 60a56dc006)'
            )
        version, design = data.get("version"), data.get("design")
        if isinstance(version, float) and str(version) in VERSIONS:
            version = str(version)  # YAML (and --set) read an unquoted 4.12 as a number
        if version not in (None, *VERSIONS) or design not in (None, *(d.value for d in Design)):
            return data  # the field validators name the bad value
        prof, chosen = resolve(version, design)
        return {**data, "version": prof.name, "design": chosen.value}


class Ppgtt(StrictModel):
    live_pages: Pages = Field(
        description="Page-table pages write-protected per vGPU at steady state; from the "
        "platform preset unless given."
    )
    pages_per_ppgtt: PagesAtLeastOne = Field(
        description="Pages in one PPGTT; from the platform preset unless given."
    )
    max_pages_per_ppgtt: PagesAtLeastOne = Field(
        description="[CODE] geometry bound from the platform preset (i915_gem_gtt.h)."
    )
    lifetime_ms: LifetimeMs | None = Field(
        None,
        description="[ASSUMPTION] each PPGTT is destroyed (pages unprotected) and replaced "
        "by a fresh one after this long; null: PPGTTs live for the whole run.",
    )
    contiguity: Fraction = Field(
        0.0,
        description="[ASSUMPTION] probability that a PPGTT's next page frame follows the "
        "previous one; adjacent pages merge into one rangeset node (rangeset.c).",
    )

    @model_validator(mode="after")
    def _fits_geometry(self) -> Ppgtt:
        if self.pages_per_ppgtt > self.max_pages_per_ppgtt:
            raise ValueError(
                f"pages_per_ppgtt ({self.pages_per_ppgtt}) exceeds max_pages_per_ppgtt "
                f"({self.max_pages_per_ppgtt}) of the platform"
            )
        return self


class Vgpu(StrictModel):
    bar0_mmio: AddrRange = Field(
        [0xF7800000, 0xF7BFFFFF],
        description="[PUB] HSW BAR0, 2 MB MMIO + 2 MB GTT, trapped as one range "
        "(intel/XenGT-Preview-xen issue #27 boot log).",
    )
    vga_ports: PortRange = Field(
        [0x3B0, 0x3DF], description="[PUB] trapped PIO range in the same boot log."
    )
    pci: Annotated[str, Field(max_length=16), AfterValidator(_pci_address)] = Field(
        "00:02.0", description="[CODE] the integrated GPU's PCI address."
    )
    mmio_read_fraction: Fraction = Field(
        0.5, description="[ASSUMPTION] share of register MMIO traps that are reads."
    )
    ppgtt: Ppgtt
    device_model: XengtDeviceModel = Field(
        default_factory=lambda: XengtDeviceModel(service=xengt_service()),
        description="The XenGT ioreq server's device model.",
    )


class OtherDevices(StrictModel):
    """Devices QEMU emulates; their traps miss every XenGT rangeset."""

    mmio: AddrRange = Field(
        [0xFEBF0000, 0xFEBFFFFF],
        description="[ASSUMPTION] a NIC BAR above the GPU BAR, so a list walk passes "
        "every XenGT node before missing.",
    )
    ports: PortRange = Field([0xC000, 0xC03F], description="[ASSUMPTION] an I/O BAR.")
    mmio_fraction: Fraction = Field(
        0.5, description="[ASSUMPTION] share of 'other' traps that are MMIO rather than PIO."
    )


class Mix(StrictModel):
    """Share of each trap kind; the shares must sum to 1."""

    mmio: Fraction = 0.55
    pio: Fraction = 0.05
    ppgtt_write: Fraction = 0.30
    other: Fraction = 0.10

    @model_validator(mode="after")
    def _sums_to_one(self) -> Mix:
        total = self.mmio + self.pio + self.ppgtt_write + self.other
        if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-9):
            raise ValueError(f"shares must sum to 1, they sum to {total:g}")
        return self


#: Guests one entry may stand for: gVirt ran 7 vGPUs on a host and gScale 15 ([PUB],
#: cost-anchors §1.6); 64 leaves room for what-if studies while keeping a run's size sane.
MAX_GUEST_COUNT = 64
GuestCount = bounded(int, 1, MAX_GUEST_COUNT, "gVirt ran 7 vGPUs per host, gScale 15")


class Guest(StrictModel):
    name: Name
    count: GuestCount = Field(
        1,
        description="Identical guests this entry stands for, each a domain of its own with "
        "its own vGPU, device models and random streams, named <name>-1 .. <name>-N when "
        "N > 1. At most 64 (gVirt ran 7 vGPUs per host, gScale 15: cost-anchors §1.6).",
    )
    vcpus: Vcpus = 1
    think: Dist = Field(
        default_factory=lambda: expo(50_000),
        description="[ASSUMPTION] guest run time between traps: 20,000 traps/s per vCPU, "
        "inside the 1e3..1e5 range of cost-anchors §1.6 (trap rates not published).",
    )
    mix: Mix = Field(default_factory=Mix, description="[ASSUMPTION] trap mix.")
    ram_mb: RamMb = Field(
        2048,
        description="[PUB] XenGT 2016-Q1 release: at least 2 GB guest memory for 3D "
        "(cost-anchors §1.6). Page-table frames are drawn from it.",
    )
    vgpu: Vgpu
    other_devices: OtherDevices = Field(default_factory=OtherDevices)
    qemu: QemuDeviceModel = Field(
        default_factory=QemuDeviceModel,
        description="QEMU, the default ioreq server.",
    )
    # Optional keys (sim.model.devices, sim.model.replay): left out of the effective
    # configuration when not given, so existing scenarios keep their hash.
    vcpu_think: Annotated[list[Dist], Field(min_length=1, max_length=128)] | None = Field(
        None,
        description="One think-time distribution per vCPU, in vCPU order, instead of "
        "'think' (vgpu-sim trace fit writes one per captured vCPU). At most 128: [CODE] "
        "HVM_MAX_VCPUS (xen/include/public/hvm/hvm_info_table.h @RELEASE-4.6.0, line 35).",
    )
    devices: Annotated[list[Device], Field(max_length=256)] | None = Field(
        None,
        description="The devices the guest traps on, instead of mix, other_devices and "
        "the vGPU's BAR0 and VGA ports (sim.model.devices). At most 256 (a fit writes at "
        "most 49: 24 per address space and the page tables).",
    )
    replay: Replay | None = Field(
        None,
        description="Drive the vCPUs with a capture's accesses instead of think and mix "
        "(sim.model.replay).",
    )

    @model_validator(mode="after")
    def _sources(self) -> Guest:
        if self.vcpu_think is not None and len(self.vcpu_think) != self.vcpus:
            raise ValueError(
                f"vcpu_think has {len(self.vcpu_think)} entries for {self.vcpus} vCPUs"
            )
        if self.devices is not None:
            check_devices(self.devices)
        problem = guest_layout_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in OPTIONAL_GUEST_KEYS:
            if data.get(key) is None:
                data.pop(key, None)
        return data


OPTIONAL_GUEST_KEYS = ("vcpu_think", "devices", "replay")


class Scenario(StrictModel):
    schema_version: Literal[1]
    name: Name = Field(
        description="Names the results directory results/<name>/: one path component, "
        "not starting with a dot."
    )
    description: Annotated[str, Field(max_length=4096)] = ""
    platform: Literal["hsw", "bdw"]
    seed: Seed = 0
    duration_ms: DurationMs
    warmup_ms: WarmupMs = 0.0
    max_accesses: MaxAccesses | None = None
    xen: XenConfig = Field(default_factory=XenConfig)
    costs: Costs = Field(default_factory=Costs)
    host: Host = Field(description="The host; host.cpu comes from the platform preset.")
    guests: Annotated[list[Guest], Field(min_length=1, max_length=MAX_GUESTS)]

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.warmup_ms >= self.duration_ms:
            raise ValueError(
                f"warmup_ms ({self.warmup_ms}) must be below duration_ms ({self.duration_ms})"
            )
        names = [g.name for g in self.guests]
        if len(set(names)) != len(names):
            raise ValueError(f"guest names must be unique, got {names}")
        seen: set[str] = set()
        for guest, name in guest_instances(self):
            if name in seen:
                raise ValueError(
                    f"guest {guest.name!r} with count {guest.count} names a guest {name!r}, "
                    "which another entry also names; rename one"
                )
            seen.add(name)
        return self

    def config(self) -> dict[str, Any]:
        """The effective configuration, defaults included, as plain JSON data."""
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        canonical = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def guest_instances(scenario: Scenario) -> list[tuple[Guest, str]]:
    """Every guest domain of a scenario with its name: an entry with ``count: N`` > 1
    gives N domains named ``<name>-1`` .. ``<name>-N``."""
    out: list[tuple[Guest, str]] = []
    for g in scenario.guests:
        if g.count == 1:
            out.append((g, g.name))
        else:
            out.extend((g, f"{g.name}-{i}") for i in range(1, g.count + 1))
    return out


# -- presets and overrides ------------------------------------------------------------------
def load_preset(platform: str) -> dict[str, Any]:
    """The preset's values (``sim/model/presets/<platform>.yaml``): ``ppgtt`` merges under
    each guest's ``vgpu``, ``cpu`` under ``host``."""
    return copy.deepcopy(_preset(platform))


@functools.cache
def _preset(platform: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{platform}.yaml"
    data = parse_yaml(read_input_text(path), path)
    assert isinstance(data, dict)
    return data


def _merge_under(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` wins; nested dicts merge."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_under(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand(raw: Any, file: str | Path) -> dict[str, Any]:
    """Fill the name and merge the platform preset under each guest and the host, before
    validation."""
    if not isinstance(raw, dict):
        raise InputError(file, "(top level)", "a scenario must be a mapping of keys")
    data = copy.deepcopy(raw)
    if "name" not in data:
        stem = Path(file).stem
        if not _NAME.fullmatch(stem) or len(stem) > 64:
            raise InputError(
                file,
                "(file name)",
                f"{stem!r} is not a scenario name (letters, digits, _ . -, not starting with "
                "a dot, at most 64): rename the file or give the scenario a name: key",
            )
        data["name"] = stem
    platform = data.get("platform")
    if platform not in PLATFORMS:
        return data
    preset = load_preset(platform)
    guests = data.get("guests")
    if isinstance(guests, list):
        data["guests"] = [
            _merge_under({"vgpu": {"ppgtt": preset["ppgtt"]}}, g) if isinstance(g, dict) else g
            for g in guests
        ]
    host = data.get("host", {})
    if isinstance(host, dict):
        data["host"] = _merge_under({"cpu": preset["cpu"]}, host)
    return data


def scenario_from_data(
    raw: Any, file: str | Path, overrides: list[tuple[str, Any]] | None = None
) -> Scenario:
    """Apply overrides, expand presets, validate; empirical CSVs are checked too."""
    data = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(data, dict):
        raise InputError(file, "(top level)", "a scenario must be a mapping of keys")
    for key, value in overrides or []:
        set_keypath(data, key, value, f"{file} (--set)")
    guests = data.get("guests")
    for gi, g in enumerate(guests if isinstance(guests, list) else []):
        problem = conflicting_guest_keys(g) if isinstance(g, dict) else None
        if problem is not None:
            raise InputError(file, f"guests[{gi}].{problem[0]}", problem[1])
    scenario = validate(Scenario, expand(data, file), file)
    base = Path(file).parent
    for keypath, dist in iter_dists(scenario):
        if isinstance(dist, EmpiricalDist):
            read_empirical(base, dist, file, keypath)
    for gi, g in enumerate(scenario.guests):
        if g.replay is not None and not (base / g.replay.capture).is_file():
            raise InputError(
                file, f"guests[{gi}].replay.capture", f"{g.replay.capture}: no such file"
            )
    from sim.model.budget import zero_time_cycles

    for keypath, problem in zero_time_cycles(scenario, base):
        raise InputError(file, keypath, problem)
    return scenario


def load_scenario(path: str | Path, overrides: list[tuple[str, Any]] | None = None) -> Scenario:
    """Load and fully validate a scenario file."""
    return scenario_from_data(load_yaml(path), path, overrides)


def iter_dists(scenario: Scenario) -> list[tuple[str, Any]]:
    """Every distribution in a scenario with its key path (for checks and samplers)."""
    out: list[tuple[str, Any]] = []
    for gi, g in enumerate(scenario.guests):
        out.append((f"guests[{gi}].think", g.think))
        for vi, d in enumerate(g.vcpu_think or []):
            out.append((f"guests[{gi}].vcpu_think[{vi}]", d))
        for dm_key, dm in (("vgpu.device_model", g.vgpu.device_model), ("qemu", g.qemu)):
            out.append((f"guests[{gi}].{dm_key}.wakeup", dm.wakeup))
            for kind in ("default", *ACCESS_KINDS):
                d = getattr(dm.service, kind)
                if d is not None:
                    out.append((f"guests[{gi}].{dm_key}.service.{kind}", d))
    return out
