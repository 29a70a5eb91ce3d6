"""Version profiles (:mod:`sim.xen.profiles`): each rule per release, with its source.

Server ids, slots, limits and search order are checked by hand and, for random
create/destroy sequences, against a brute-force model of each release's bookkeeping.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.inputs import InputError
from sim.model.scenario import load_scenario, scenario_from_data
from sim.xen.abi import RangeType
from sim.xen.ioreq import Access, IoreqDomain
from sim.xen.profiles import (
    FIRST_RELEASE,
    PROFILES,
    VERSIONS,
    Design,
    VersionProfile,
    profile,
    resolve,
    rule_names,
)

CITATION = re.compile(r"\b[0-9a-f]{10}\b|@(RELEASE-4\.\d+\.0|master)")


# -- the profiles themselves ------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rule_names_its_source(version: str) -> None:
    prof = PROFILES[version]  # type: ignore[index]
    assert set(prof.sources) == set(rule_names())
    for rule, source in prof.sources.items():
        assert CITATION.search(source), f"{version}.{rule}: {source!r} cites no commit or tag"


def test_a_profile_without_a_source_is_refused() -> None:
    prof = PROFILES["4.6"]
    sources = dict(prof.sources)
    del sources["max_reps"]
    fields = {f: getattr(prof, f) for f in ("name", "ref", *rule_names())}
    with pytest.raises(ValueError, match="sources missing \\['max_reps'\\]"):
        VersionProfile(**fields, sources=sources)


def test_the_rules_that_differ() -> None:
    """One line per rule of the issue, per release (sources in the profiles)."""
    p46, p49, p412, pm = (PROFILES[v] for v in VERSIONS)
    assert [p.mmio_window_df_aware for p in (p46, p49, p412, pm)] == [False, False, True, True]
    assert [p.rep_mmio_page_cut for p in (p46, p49, p412, pm)] == [False, False, True, True]
    assert [p.default_server for p in (p46, p49, p412, pm)] == [True, True, False, False]
    assert [p.server_ids for p in (p46, p49, p412, pm)] == ["counter"] * 2 + ["slot"] * 2
    assert [p.server_limit_errno for p in (p46, p49, p412, pm)] == ["ENOMEM"] * 2 + ["ENOSPC"] * 2
    assert [p.amd_ext_families for p in (p46, p49, p412, pm)] == [
        (0x10, 0x17),
        (0x11, 0x17),
        (0x11, 0x17),
        (0x10, 0x16),
    ]
    assert [p.p2m_ioreq_server for p in (p46, p49, p412, pm)] == [False, True, True, True]
    assert [p.map_start_above_end_einval for p in (p46, p49, p412, pm)] == [
        False,
        False,
        True,
        True,
    ]
    assert [p.max_mmio_access for p in (p46, p49, p412, pm)] == [32, 32, 64, 64]
    assert all(p.max_reps == 4096 and p.created_disabled for p in (p46, p49, p412, pm))


def test_unknown_version_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r'"4\.6", "4\.9", "4\.12", "master"'):
        profile("4.7")


@pytest.mark.parametrize(
    ("version", "design", "expected"),
    [
        (None, None, ("4.6", Design.XEN_46)),
        (None, "p2m-ioreq-server", ("4.9", Design.P2M_IOREQ_SERVER)),
        (None, "wp-split", ("4.6", Design.WP_SPLIT)),
        ("4.12", None, ("4.12", Design.P2M_IOREQ_SERVER)),
        ("4.6", None, ("4.6", Design.XEN_46)),
        ("master", "p2m-ioreq-server", ("master", Design.P2M_IOREQ_SERVER)),
    ],
)
def test_resolve_fills_the_missing_half(
    version: str | None, design: str | None, expected: tuple[str, Design]
) -> None:
    prof, chosen = resolve(version, design)
    assert (prof.name, chosen) == expected
    assert FIRST_RELEASE[chosen] in VERSIONS


@pytest.mark.parametrize(
    ("version", "design", "cites"),
    [
        ("4.6", "p2m-ioreq-server", "ca2b511d3f"),
        ("4.9", "xen-4.6", "c858e932c1"),
        ("master", "xen-4.6", "c858e932c1"),
        ("4.12", "wp-split", "19e5e78324"),
    ],
)
def test_resolve_refuses_a_pair_no_release_ran(version: str, design: str, cites: str) -> None:
    with pytest.raises(ValueError, match=cites):
        resolve(version, design)


# -- scenarios -------------------------------------------------------------------------------
def _scenario(xen: dict[str, object]) -> dict[str, object]:
    return {
        "schema_version": 1,
        "platform": "hsw",
        "duration_ms": 1,
        "xen": xen,
        "guests": [{"name": "vm1"}],
    }


def test_scenario_version_defaults_and_follows_the_design() -> None:
    assert scenario_from_data(_scenario({}), "s.yaml").xen.version == "4.6"
    s = scenario_from_data(_scenario({"design": "p2m-ioreq-server"}), "s.yaml")
    assert (s.xen.version, s.xen.design) == ("4.9", "p2m-ioreq-server")
    s = scenario_from_data(_scenario({"version": "master"}), "s.yaml")
    assert s.xen.design == "p2m-ioreq-server"
    s = load_scenario("scenarios/hsw-p2m-ioreq-server.yaml", [("xen.version", 4.12)])
    assert s.xen.version == "4.12"  # --set xen.version=4.12 reads a number
    assert load_scenario("scenarios/bdw-p2m-ioreq-server.yaml").xen.version == "4.9"


@pytest.mark.parametrize(
    ("xen", "words"),
    [
        ({"version": "4.6", "design": "p2m-ioreq-server"}, "ca2b511d3f"),
        ({"version": "4.12", "design": "xen-4.6"}, "c858e932c1"),
        ({"mmio_window": "xen-4.12"}, "replaced by version"),
        ({"version": "4.10"}, "4.10"),
    ],
)
def test_scenario_refuses_a_version_that_cannot_run_it(xen: dict[str, object], words: str) -> None:
    with pytest.raises(InputError) as info:
        scenario_from_data(_scenario(xen), "s.yaml")
    assert info.value.keypath.startswith("xen")
    assert words in info.value.problem


# -- server ids, slots, limits ---------------------------------------------------------------
@pytest.mark.parametrize("version", ["4.6", "4.9"])
def test_ids_count_from_1_and_a_failed_create_uses_one_up(version: str) -> None:
    """next_ioservid() (hvm.c @RELEASE-4.6.0 lines 1079-1103) is an argument of
    hvm_ioreq_server_init() (lines 1127-1128); 8 ioreq pages from libxc, two for a
    server with a buffered ring (lines 877-881), -ENOMEM when they run out."""
    dom = IoreqDomain(version=version)
    assert dom.create_server("qemu", default=True).id == 1
    ring = dom.create_server("ring", bufioreq=True)
    plain = [dom.create_server(f"s{i}") for i in range(6)]
    assert [ring.id, *(s.id for s in plain)] == list(range(2, 9))
    assert dom.create_server_rc("late") == ("ENOMEM", None)  # 2 + 6 pages taken
    assert dom.destroy_server_rc(ring) is None  # gives back two pages
    rc, late = dom.create_server_rc("late")
    assert rc is None
    assert late is not None
    assert late.id == 10  # id 9 went to the failure
    assert not late.enabled  # a secondary server is created disabled (line 1135-1139)
    assert dom.create_server_rc("late2")[0] is None
    assert dom.create_server_rc("late3")[0] == "ENOMEM"
    assert dom.create_server_rc("qemu2", default=True) == ("EEXIST", None)


@pytest.mark.parametrize("version", ["4.12", "master"])
def test_slots_take_the_lowest_free_and_fill_at_8(version: str) -> None:
    """97a5a3e301: server[8], lowest free slot, id = slot, -ENOSPC past 8."""
    dom = IoreqDomain(version=version)
    servers = [dom.create_server(f"s{i}") for i in range(8)]
    assert [s.id for s in servers] == list(range(8))
    assert dom.create_server_rc("s8") == ("ENOSPC", None)
    assert dom.destroy_server_rc(servers[2]) is None
    rc, late = dom.create_server_rc("late")
    assert rc is None
    assert late is not None
    assert late.id == 2
    assert [s.name for s in dom.search_order()] == [
        "s7",
        "s6",
        "s5",
        "s4",
        "s3",
        "late",
        "s1",
        "s0",
    ]
    # The destroyed server's id now names "late": a by-id hypercall reaches it.
    assert dom.set_server_state_rc(servers[2], True) is None
    assert late.enabled
    with pytest.raises(ValueError, match="2c257bd69a"):
        dom.create_server_rc("qemu", default=True)


def test_default_server_is_never_found_by_id() -> None:
    dom = IoreqDomain(version="4.9")
    qemu = dom.create_server("qemu", default=True)
    assert dom.destroy_server_rc(qemu) == "ENOENT"
    assert dom.set_server_state_rc(qemu, False) == "ENOENT"
    assert dom.map_io_range_rc(qemu, RangeType.PORT, 1, 2) == ("ENOENT", 0)


def _port_probe(dom: IoreqDomain) -> str:
    return dom.route(Access("pio", 0x300, 1, False)).handler


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 15)), max_size=40)


@pytest.mark.parametrize("version", VERSIONS)
@given(script=ops)
def test_search_order_after_create_and_destroy_matches_a_brute_force_model(
    version: str, script: list[tuple[bool, int]]
) -> None:
    """Newest first for 4.6/4.9 (list_add); slot 7 down for 4.12/master (97a5a3e301),
    with the lowest free slot on create; limits of 8 (pages or slots)."""
    prof = PROFILES[version]  # type: ignore[index]
    dom = IoreqDomain(version=version)
    live: list[tuple[str, int]] = []  # (name, id) in creation order
    next_id = 0
    for n, (create, pick) in enumerate(script):
        if create or not live:
            name = f"s{n}"
            rc, server = dom.create_server_rc(name)
            if prof.server_ids == "slot":
                free = [i for i in range(8) if i not in {i for _, i in live}]
                want = None if free else "ENOSPC"
                new_id = free[0] if free else None
            else:
                next_id += 1  # used up even when the create fails
                want = None if len(live) < 8 else "ENOMEM"
                new_id = next_id
            assert rc == want
            if rc is None:
                assert server is not None
                assert server.id == new_id
                dom.set_server_state_rc(server, True)
                dom.map_io_range(server, RangeType.PORT, 0x300, 0x300)
                live.append((name, new_id))  # type: ignore[arg-type]
        else:
            name, server_id = live.pop(pick % len(live))
            assert dom.destroy_server_rc(server_id) is None
            assert dom.destroy_server_rc(server_id) == "ENOENT"
        if prof.server_ids == "slot":
            expected = [name for name, _ in sorted(live, key=lambda x: -x[1])]
        else:
            expected = [name for name, _ in reversed(live)]
        assert [s.name for s in dom.search_order()] == expected
        assert _port_probe(dom) == (expected[0] if expected else "none")
