"""Running a ``select`` case file: build the domain, then every access and step in order.

The servers of a :class:`~sim.xen.casefile.CaseFile` are created in order under the
file's release, enabled unless ``enabled: false``, and their ranges mapped through Xen's
hypercall semantics (a hypercall Xen refuses becomes a warning). Then the ``accesses``
list runs in order: an access is split into the release's requests and each is routed by
:meth:`sim.xen.ioreq.IoreqDomain.route`; a step issues its hypercall, by the id Xen gave
the server it names, and records the return code. Each result is compared with what the
file expects. :mod:`sim.xen.casereport` prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sim.inputs import InputError
from sim.xen.abi import PAGE_SHIFT, RangeType, format_ioreq
from sim.xen.casefile import CaseFile, ServerSpec
from sim.xen.casespec import AccessSpec, Checks, RequestChecks, StepSpec
from sim.xen.emulate import Request
from sim.xen.ioreq import Access, HypercallError, IoreqDomain, IoreqServer, Route
from sim.xen.memtypes import MemType
from sim.xen.profiles import Design, VersionProfile

REASONS = {
    "EEXIST": "it overlaps a range this server already has (servers may overlap each other)",
    "ENOMEM": "the node budget is spent (rangeset_add_range allocates before it merges)",
    "EBUSY": "another server already claims the p2m_ioreq_server type",
    "ENOENT": "no such server (the default server has no rangesets)",
    "EINVAL": "the range or its type is not valid here",
}
CREATE_REASONS = {
    "ENOMEM": "the 8 ioreq pages libxc provides are used up (a buffered ring takes a second)",
    "ENOSPC": "all 8 server slots are taken (MAX_NR_IOREQ_SERVERS)",
    "EEXIST": "the domain already has a default server",
}


def rc_text(rc: str | None) -> str:
    return "0" if rc is None else f"-{rc}"


@dataclass(frozen=True)
class RequestOutcome:
    """One request an access became, where it went, and how that compares."""

    request: Request
    route: Route
    checks: Checks | None
    failures: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """One access: the requests it became, in the order Xen sent them."""

    index: int
    spec: AccessSpec
    requests: tuple[RequestOutcome, ...]

    @property
    def route(self) -> Route:
        """The first request's route (the only one, for an access that is not split)."""
        return self.requests[0].route

    @property
    def failures(self) -> tuple[str, ...]:
        many = len(self.requests) > 1
        return tuple(
            (f"request {j}: {f}" if many else f)
            for j, r in enumerate(self.requests)
            for f in r.failures
        )

    @property
    def expectations(self) -> int:
        return sum(r.checks.count_checks for r in self.requests if r.checks is not None)


@dataclass(frozen=True)
class StepOutcome:
    """One hypercall step: what it acted on, Xen's return code, the nodes it visited."""

    index: int
    spec: StepSpec
    target: str
    rc: str | None
    visits: int
    failures: tuple[str, ...]

    @property
    def expectations(self) -> int:
        return int("expect_rc" in self.spec.model_fields_set)


@dataclass(frozen=True)
class CaseRun:
    case: CaseFile
    profile: VersionProfile
    design: Design
    warnings: tuple[str, ...]
    setup: tuple[str, ...]  # the servers after setup, as the report lists them
    items: tuple[Outcome | StepOutcome, ...]
    domain: IoreqDomain

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.items if isinstance(o, Outcome))

    @property
    def expectations(self) -> int:
        return sum(o.expectations for o in self.items)

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [(o.index, f) for o in self.items for f in o.failures]


class _Runner:
    """The domain of one case and the ids Xen gave its servers, by the file's names."""

    def __init__(self, case: CaseFile, path: str | Path) -> None:
        self.case, self.path = case, path
        self.profile, self.design = case.profile, case.design_used
        self.domain = IoreqDomain(
            self.design,
            case.rangeset,
            case.max_nr_io_ranges,
            case.vendor,
            self.profile.name,
            amd_family=case.amd_family,
            acpi=case.acpi,
            stdvga_cache=case.stdvga_cache,
        )
        self.ids: dict[str, int] = {}
        self.warnings: list[str] = []

    # -- setup ---------------------------------------------------------------------------
    def build(self) -> None:
        domain = self.domain
        for i, spec in enumerate(self.case.servers):
            rc, server = domain.create_server_rc(
                spec.name, default=spec.default, bufioreq=spec.bufioreq
            )
            if rc is not None or server is None:
                reason = CREATE_REASONS.get(rc or "", "refused")
                self.warnings.append(
                    f"warning: servers[{i}]: could not create {spec.name}: -{rc}, {reason}; "
                    "skipped with its ranges"
                )
                continue
            self.ids[spec.name] = server.id
            if not spec.default and spec.enabled:
                domain.set_server_state_rc(server, True)
            for keypath, what, call in self._map_calls(server, spec, f"servers[{i}]"):
                try:
                    call()
                except HypercallError as exc:
                    reason = REASONS.get(exc.errno_name, "refused")
                    self.warnings.append(
                        f"warning: {keypath}: {spec.name} could not {what}: "
                        f"-{exc.errno_name}, {reason}; skipped"
                    )

    def _map_calls(
        self, server: IoreqServer, spec: ServerSpec, where: str
    ) -> Iterator[tuple[str, str, Callable[[], int]]]:
        """``(key path, description, hypercall)`` for each range, in the order mapped."""
        domain = self.domain
        for key, rtype in (("port", RangeType.PORT), ("memory", RangeType.MEMORY)):
            for j, (s, e) in enumerate(getattr(spec, key)):
                yield (
                    f"{where}.{key}[{j}]",
                    f"map {rtype.name} [{s:#x}, {e:#x}]",
                    partial(domain.map_io_range, server, rtype, s, e),
                )
        for j, slot in enumerate(spec.pci):
            sbdf = slot.sbdf
            yield (
                f"{where}.pci[{j}]",
                f"map PCI {slot} (sbdf {sbdf:#x})",
                partial(domain.map_io_range, server, RangeType.PCI, sbdf, sbdf),
            )
        for j, (first, last) in enumerate(spec.wp_pages):
            yield (
                f"{where}.wp_pages[{j}]",
                f"write-protect gfns {first:#x}..{last:#x} ({self._wp_tracking(first, last)})",
                partial(domain.write_protect, server, first, last),
            )

    def _wp_tracking(self, first: int, last: int) -> str:
        """Where the design keeps write-protected pages, for the warning text."""
        if self.design is Design.XEN_46:
            return f"MEMORY [{first << PAGE_SHIFT:#x}, {((last + 1) << PAGE_SHIFT) - 1:#x}]"
        if self.design is Design.WP_SPLIT:
            return "WP_MEM, by gfn"
        return "as p2m type p2m_ioreq_server"

    # -- the sequence ------------------------------------------------------------------------
    def access(self, index: int, spec: AccessSpec) -> Outcome:
        results = []
        requests = spec.requests(self.profile)
        for j, req in enumerate(requests):
            if spec.type == "mmio" and not spec.is_write and not spec.rmw:
                self._refuse_plain_read(index, req)
            data = spec.data if j == 0 else None
            access = Access(spec.type, req.addr, req.size, spec.is_write, req.count, spec.df, data)
            route = self.domain.route(access)
            checks: Checks | None = spec
            if spec.expect_requests is not None:
                checks = spec.expect_requests[j]
            elif len(requests) > 1:
                checks = None
            results.append(RequestOutcome(req, route, checks, _failures(checks, req, route)))
        return Outcome(index, spec, tuple(results))

    def _refuse_plain_read(self, index: int, req: Request) -> None:
        gfn = req.addr >> PAGE_SHIFT
        if self.domain.is_write_protected(gfn):
            raise InputError(
                self.path,
                f"accesses[{index}]",
                f"a read of write-protected page {gfn:#x} cannot trap: the page stays readable "
                "(EPT r=1, p2m-ept.c @RELEASE-4.6.0 lines 173-175, @RELEASE-4.9.0 lines "
                "134-136); Xen only sees it as the read half of a read-modify-write whose "
                "write faulted: add rmw: true",
            )

    def step(self, index: int, spec: StepSpec) -> StepOutcome:
        target, rc, visits = self._issue(index, spec)
        failures = ()
        if "expect_rc" in spec.model_fields_set and spec.expect_rc != rc:
            failures = (f"expected rc {rc_text(spec.expect_rc)}, got {rc_text(rc)}",)
        return StepOutcome(index, spec, target, rc, visits, failures)

    def _server(self, name: str | None) -> tuple[int, str]:
        """The id the device model holds for ``name`` (-1 if its create failed)."""
        server_id = self.ids.get(name or "", -1)
        holder = self.domain.secondary(server_id) if server_id >= 0 else None
        now = "" if holder is None or holder.name == name else f", now {holder.name}'s"
        return server_id, f"{name} (id {server_id}{now})" if server_id >= 0 else f"{name} (no id)"

    def _issue(self, index: int, spec: StepSpec) -> tuple[str, str | None, int]:
        domain, do = self.domain, spec.do
        if do == "create":
            name = spec.server or ""
            if any(s.name == name for s in domain.servers):
                raise InputError(
                    self.path, f"accesses[{index}].server", f"{name!r} exists: destroy it first"
                )
            rc, server = domain.create_server_rc(name, default=spec.default, bufioreq=spec.bufioreq)
            if server is not None:
                self.ids[name] = server.id
                return f"{name} (id {server.id})", rc, 0
            return name, rc, 0
        if do == "set_mem_type":
            assert spec.gfns is not None
            assert spec.type is not None
            first, last = spec.gfns
            rc, changed = domain.set_mem_type_rc(first, last, MemType(spec.type))
            return f"gfns {first:#x}..{last:#x} {spec.type} ({changed} changed)", rc, 0
        server_id, target = self._server(spec.server)
        if do == "destroy":
            return target, domain.destroy_server_rc(server_id), 0
        if do in ("enable", "disable"):
            return target, domain.set_server_state_rc(server_id, do == "enable"), 0
        if do == "claim":
            return target, domain.claim_rc(server_id), 0
        if do == "release_claim":
            return target, domain.release_claim_rc(server_id), 0
        if do in ("write_protect", "unprotect"):
            assert spec.gfns is not None
            first, last = spec.gfns
            call = domain.write_protect_rc if do == "write_protect" else domain.unprotect_rc
            rc, visits = call(server_id, first, last)
            return f"{target} gfns {first:#x}..{last:#x}", rc, visits
        key = spec.range_key
        assert key is not None
        if key == "pci":
            assert spec.pci is not None
            s = e = spec.pci.sbdf
            what = f"PCI {spec.pci}"
        else:
            s, e = getattr(spec, key)
            what = f"{key.upper()} [{s:#x}, {e:#x}]"
        rtype = RangeType.WP_MEM if key == "wp_mem" else RangeType[key.upper()]
        call = domain.map_io_range_rc if do == "map" else domain.unmap_io_range_rc
        rc, visits = call(server_id, rtype, s, e)
        return f"{target} {what}", rc, visits


def _failures(checks: Checks | None, req: Request, route: Route) -> tuple[str, ...]:
    if checks is None:
        return ()
    failures = []
    if isinstance(checks, RequestChecks):
        for key in ("addr", "size", "count"):
            want, got = getattr(checks, key), getattr(req, key)
            if want is not None and want != got:
                fmt = "#x" if key == "addr" else "d"
                failures.append(f"expected {key} {want:{fmt}}, got {got:{fmt}}")
    if checks.expect is not None and not _handler_matches(checks.expect, route):
        failures.append(f"expected handler {checks.expect}, got {handler_text(route)}")
    if checks.expect_visits is not None and route.visits != checks.expect_visits:
        failures.append(f"expected {checks.expect_visits} visits, got {route.visits}")
    wanted = checks.expect_ioreq
    if wanted is not None and (wanted.ioreq_type, wanted.addr) != (route.ioreq_type, route.addr):
        got = format_ioreq(route.ioreq_type, route.addr)
        failures.append(f"expected ioreq {wanted}, got {got}")
    walked = checks.expect_emulators_checked
    if walked is not None and walked != route.emulators_checked:
        failures.append(f"expected {walked} emulators checked, got {route.emulators_checked}")
    return tuple(failures)


def handler_text(route: Route) -> str:
    """``xengt``, ``none``, or ``xen:hpet`` for one of Xen's own emulators."""
    if route.handler in ("xen", "crash") and route.emulator:
        return f"{route.handler}:{route.emulator}"
    return route.handler


def _handler_matches(expect: str, route: Route) -> bool:
    return expect in (route.handler, handler_text(route))


def run_case(case: CaseFile, path: str | Path = "(case file)") -> CaseRun:
    """Build the domain, then run every access and step in order (all of it is stateful).

    Raises :class:`InputError` for an access Xen cannot produce in the state reached.
    """
    runner = _Runner(case, path)
    runner.build()
    setup = tuple(server_lines(runner.domain))
    items: list[Outcome | StepOutcome] = []
    for index, item in enumerate(case.accesses):
        if isinstance(item, StepSpec):
            items.append(runner.step(index, item))
        else:
            items.append(runner.access(index, item))
    return CaseRun(
        case,
        runner.profile,
        runner.design,
        tuple(runner.warnings),
        setup,
        tuple(items),
        runner.domain,
    )


def server_lines(domain: IoreqDomain) -> list[str]:
    """The servers in the order the selector asks them, with their ids and ranges."""
    lines = []
    if domain.default_server is not None:
        lines.append(
            f"  {domain.default_server.name} (id {domain.default_server.id}): default server"
        )
    for server in domain.search_order():
        state = "" if server.enabled else ", disabled"
        ring = ", buffered ring" if server.bufioreq else ""
        ring += ", claims p2m_ioreq_server" if domain.p2m_claimer is server else ""
        sets = [r.format() for r in server.rangesets.values() if len(r)]
        body = "; ".join(sets) if sets else "no ranges"
        lines.append(f"  {server.name} (id {server.id}{state}{ring}): {body}")
    return lines
