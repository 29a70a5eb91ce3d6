"""The device models' part of a scenario: threads, wake-up, service times, service order.

Two ioreq servers serve each guest: XenGT's in-kernel device model (its service times
stay assumptions: no capture of a GPU guest has been fitted) and QEMU, the default
server, whose wake-up and service are fitted to a real capture ([TRACE],
``shared/reference/cost-anchors.md`` §6). How the threads run is in
:mod:`sim.model.processes`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sim.inputs import StrictModel, bounded
from sim.model.dists import AnyDist, Dist, LognormalDist, lognorm


class ServiceTimes(StrictModel):
    """Device-model service time per trap kind; kinds not given use ``default``."""

    default: Dist
    mmio: Dist | None = None
    pio: Dist | None = None
    ppgtt_write: Dist | None = None
    other: Dist | None = None

    def for_kind(self, kind: str) -> AnyDist:
        chosen = getattr(self, kind)
        return chosen if chosen is not None else self.default


def _dom0_wakeup() -> LognormalDist:
    # [TRACE] fit; the arithmetic is in DeviceModel.wakeup's description.
    return lognorm(6134, 0.471)


Workers = bounded(int, 1, 64, "more threads than a guest has vCPUs are never all busy")
ServiceOrder = Literal["fifo", "vcpu-index"]


class DeviceModel(StrictModel):
    workers: Workers = Field(
        1,
        description="[CODE] threads serving this server's ioreqs; XenGT runs one "
        "vgt_emulation kthread per VM (intel/XenGT-Preview-kernel xengt.c, xen_hvm_init). "
        "At most 64: more threads than a guest has vCPUs are never all busy.",
    )
    wakeup: Dist = Field(
        default_factory=_dom0_wakeup,
        description="[TRACE] dom0 wake-up of a sleeping thread, charged only when it was "
        "asleep. The capture's exit -> dom0 running stage has median 6.70 us, p90 11.25 "
        "us; its first 1.21 us (exit -> dom0 vCPU woken) are the exit side, which the "
        "model charges itself, so the wake-up is fitted to 5.49 / 10.04 us: a lognormal "
        "with sigma = ln(10.04 / 5.49) / 1.2816 = 0.471 and mean = 5.49 us * "
        "exp(0.471^2 / 2) = 6.134 us.",
    )
    service: ServiceTimes
    order: ServiceOrder = Field(
        "fifo",
        description="Which pending request a thread serves next: fifo (arrival) or "
        "vcpu-index (sweeps of the pending vCPUs from vCPU 0 upwards).",
    )


class XengtDeviceModel(DeviceModel):
    """XenGT's in-kernel device model: its service times stay assumptions."""

    order: ServiceOrder = Field(
        "vcpu-index",
        description="[CODE] vgt_emulation_thread sweeps its ioreq_pending bitmap from vCPU "
        "0 upwards (intel/XenGT-Preview-kernel 1728045fed, drivers/xen/xengt.c).",
    )


def xengt_service() -> ServiceTimes:
    # [ASSUMPTION], still: no capture of a GPU guest has been fitted (cost-anchors §6).
    # The kernel thread skips QEMU's trip to user space (~13,000 cycles in KVM,
    # kvm-unit-tests 00bfecaa), so it is far below QEMU's measured 36 us.
    return ServiceTimes(
        default=lognorm(2000, 0.5),  # [ASSUMPTION] register emulation in the kernel
        ppgtt_write=lognorm(3000, 0.5),  # [ASSUMPTION] a shadow PTE update costs more
    )


def _qemu_service() -> ServiceTimes:
    # [TRACE] dom0 running -> guest woken, 35.6 us median, p90 55 us (p10 28 us): a
    # lognormal fitted to median and p90 has sigma = ln(55 / 35.6) / 1.2816 = 0.339 and
    # mean = 35.6 us * exp(0.339^2 / 2) = 37.71 us (its p10, 23 us, is below the
    # capture's 28 us: the measured left tail is thinner).
    return ServiceTimes(default=lognorm(37711, 0.339))


class QemuDeviceModel(DeviceModel):
    """QEMU, the default ioreq server, in dom0 user space."""

    service: ServiceTimes = Field(
        default_factory=_qemu_service,
        description="[TRACE] fitted to the capture's QEMU service stage (_qemu_service).",
    )
    order: ServiceOrder = Field(
        "fifo",
        description="[ASSUMPTION] QEMU takes the ports its event-channel device reports "
        "pending one at a time, in the order they fired.",
    )
