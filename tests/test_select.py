"""``vgpu-sim select``: shipped case files pass, mismatches fail, bad files exit 2."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.inputs import InputError
from sim.xen.casefile import load_case_file
from sim.xen.casereport import run_case, run_case_file

ROOT = Path(__file__).resolve().parent.parent
SELECTION = ROOT / "scenarios" / "selection"
SHIPPED = sorted(SELECTION.glob("*.yaml"))
BAD = Path(__file__).resolve().parent / "cases" / "bad"

# One broken file per kind of bad input: (file, key path in the message, problem words).
BAD_CASES = [
    ("unknown-key.yaml", "servers[0].ports", "unknown key"),
    ("exponent-is-a-string.yaml", "accesses[1].count", "valid integer"),
    ("yaml-bool-name.yaml", "servers[1].name", "valid string"),
    ("start-above-end.yaml", "servers[1].port[0]", "above end"),
    ("negative-address.yaml", "accesses[1].addr", "greater than or equal to 0"),
    ("unknown-design.yaml", "design", "xen-4.7"),
    ("unknown-rangeset.yaml", "rangeset", "skiplist"),
    ("unknown-vendor.yaml", "vendor", "via"),
    ("duplicate-server.yaml", "servers[2].name", "duplicate server name 'xengt'"),
    ("two-defaults.yaml", "servers[1].default", "at most one default"),
    ("default-with-ranges.yaml", "servers[0].port", "default server has no ranges"),
    ("expect-unknown-server.yaml", "accesses[1].expect", "no server is named 'xegnt'"),
    ("expect-null.yaml", "accesses[0].expect", "write 'none'"),
    ("bad-pci.yaml", "servers[0].pci[0]", "above 0x1f"),
    ("bad-yaml.yaml", "line 5", "invalid YAML"),
    ("window-overflow.yaml", "accesses[0].count", "beyond 2^64-1"),
    ("bad-size.yaml", "accesses[1].size", "port I/O is 1, 2 or 4 bytes"),
    ("missing-dir.yaml", "accesses[0].dir", "required key is missing"),
    ("too-many-wp-pages.yaml", "servers[0].wp_pages[0]", "1048577 pages"),
    ("cf8-write-without-data.yaml", "accesses[0].data", "needs data"),
    ("pio-8-bytes.yaml", "accesses[0].size", "port I/O is 1, 2 or 4 bytes"),
    ("port-above-ffff.yaml", "servers[0].port[0]", "above 0xffff"),
    ("default-on-4.12.yaml", "servers[0].default", "2c257bd69a"),
    ("design-needs-4.9.yaml", "design", "ca2b511d3f"),
    ("claim-on-4.6.yaml", "accesses[1].do", "ca2b511d3f"),
    ("mem-type-not-in-release.yaml", "accesses[0].type", "c858e932c1"),
    ("split-with-expect.yaml", "accesses[0]", "becomes 2 requests under xen 4.12"),
    ("expect-requests-count.yaml", "accesses[0].expect_requests", "becomes 2 requests"),
    ("plain-read-of-wp-page.yaml", "accesses[1]", "add rmw: true"),
    ("mmio-window-key.yaml", "mmio_window", 'xen: "4.12"'),
    ("too-many-requests.yaml", "accesses[0].count", "more than 1024 requests"),
    ("map-start-above-end-4.6.yaml", "accesses[0].port", "XSA-238"),
    ("unknown-version.yaml", "xen", "4.7"),
    ("unknown-emulator.yaml", "accesses[0].expect", "no emulator 'lapic'"),
    ("step-stray-key.yaml", "accesses[0].gfns", "takes no gfns"),
    ("stdvga-cache-master.yaml", "stdvga_cache", "53b7246bdf"),
    ("mmio-too-wide-4.6.yaml", "accesses[0].size", "at most 32 bytes"),
    ("created-twice.yaml", "accesses[1].server", "destroy it first"),
]

XENGT_CASE = """\
servers:
  - name: qemu-dm
    default: true
  - name: xengt
    port: [[0x3b0, 0x3df]]
    memory: [[0xf7800000, 0xf7bfffff]]
accesses:
  - {type: pio, addr: 0x3c0, size: 1, dir: read, expect: xengt, expect_visits: 1}
  - {type: mmio, addr: 0xf7800000, size: 4, dir: write, expect: qemu-dm, expect_visits: 7}
  - {type: pio, addr: 0x60, size: 1, dir: read, expect: qemu-dm}
"""


def table_rows(report: str) -> list[dict[str, str]]:
    """Parse the aligned table of a verbose report into one dict per row.

    Every column is cut at the start of its header word. That holds for the numeric,
    right-aligned columns too, because their headers are at least as wide as any value.
    A row is a request (``3`` or, for an access split into several, ``3.0``, ``3.1``) or a
    step (type ``do``).
    """
    lines = report.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["#", "type"])
    header = lines[header_at]
    spans = [(m.group(), m.start()) for m in re.finditer(r"\S+", header)]
    starts = [0] + [start for _, start in spans[1:]] + [None]
    rows = []
    for line in lines[header_at + 1 :]:
        if not re.match(r"\s*\d+(\.\d+)?\s", line):
            break
        rows.append(
            {name: line[starts[i] : starts[i + 1]].strip() for i, (name, _) in enumerate(spans)}
        )
    return rows


# -- shipped cases -----------------------------------------------------------------------
def test_enough_focused_case_files_are_shipped() -> None:
    assert 20 <= len(SHIPPED) <= 40


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_case_passes(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", str(path)]) == 0
    captured = capsys.readouterr()
    assert "MISMATCH" not in captured.out
    assert captured.err == ""
    assert re.search(
        r"\d+ accesses(, \d+ steps)?, [1-9]\d* expectations, 0 failed$", captured.out.strip()
    )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_case_is_documented(path: Path) -> None:
    """Each file opens with a comment block citing Xen; each expectation has a note."""
    text = path.read_text()
    comment = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert text.startswith("# ")
    assert "Rules checked" in comment
    assert re.search(r"RELEASE-4\.\d+\.0|\b[0-9a-f]{10}\b", comment), "cite a tag or commit"
    for i, item in enumerate(yaml.safe_load(text)["accesses"]):
        checks = [item, *item.get("expect_requests", [])]
        for check in checks:
            if any(k.startswith("expect") and k != "expect_requests" for k in check):
                assert check.get("note") or item.get("note"), f"{path.name}: accesses[{i}]"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_table_shows_what_the_file_expects(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every row of the printed table carries the handler, visits and rc that were checked."""
    main(["select", str(path)])
    rows = table_rows(capsys.readouterr().out)
    expected: list[dict[str, object]] = []
    for item in yaml.safe_load(path.read_text())["accesses"]:
        if "do" in item:
            expected.append({"rc": item.get("expect_rc")})
        else:
            expected.extend(item.get("expect_requests", [item]))
    assert len(rows) == len(expected)
    checked = 0
    for row, want in zip(rows, expected, strict=True):
        if "expect_visits" in want:
            assert int(row["visits"]) == want["expect_visits"], (path.name, row["#"])
            checked += 1
        if "expect" in want:
            assert row["handler"] == want["expect"] or row["handler"].startswith(
                f"{want['expect']}:"
            )
            checked += 1
        if want.get("rc") is not None:
            rc = want["rc"]
            assert row["handler"] == f"rc {rc if rc == 0 else '-' + str(rc).lstrip('-')}"
            checked += 1
    assert checked, f"{path.name} checks nothing in its table"


def test_shipped_cases_cover_every_configuration() -> None:
    cases = [load_case_file(path) for path in SHIPPED]
    assert {c.profile.name for c in cases} == {"4.6", "4.9", "4.12", "master"}
    assert {c.design_used for c in cases} == {"xen-4.6", "wp-split", "p2m-ioreq-server"}
    assert {c.rangeset for c in cases} == {"list", "rbtree"}
    assert {c.vendor for c in cases} == {"intel", "amd"}
    assert any(not s.enabled for c in cases for s in c.servers)
    assert any(not any(s.default for s in c.servers) for c in cases)
    runs = [run_case(c) for c in cases]
    handlers = {r.route.handler for run in runs for o in run.outcomes for r in o.requests}
    assert {"none", "ram", "xen", "retry", "crash", "xengt", "qemu-dm"} <= handlers
    assert any(len(o.requests) > 1 for run in runs for o in run.outcomes)
    steps = {o.spec.do for run in runs for o in run.items if not hasattr(o, "requests")}
    assert steps >= {"create", "destroy", "enable", "disable", "claim", "release_claim"}
    assert steps >= {"set_mem_type", "map", "unmap", "write_protect", "unprotect"}
    warnings = "\n".join(w for run in runs for w in run.warnings)
    for errno in ("EEXIST", "ENOMEM", "EBUSY", "ENOSPC"):
        assert f"-{errno}" in warnings


def test_map_refusals_are_warnings_naming_server_range_and_errno(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["select", str(SELECTION / "map-refusals.yaml")]) == 0
    warnings = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")
    ]
    assert len(warnings) == 4
    assert "servers[1].port[1]: xengt could not map PORT [0x3c4, 0x3c5]: -EEXIST" in warnings[0]
    assert "PORT [0x3b0, 0x3bf]: -ENOMEM" in warnings[1]  # allocate before right-merge
    assert "PORT [0x3da, 0x3da]: -ENOMEM" in warnings[2]
    assert "PCI 00:02.0 (sbdf 0x10): -EEXIST" in warnings[3]


def test_second_p2m_claimer_is_refused_with_ebusy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", str(SELECTION / "design-p2m-ioreq-server.yaml")]) == 0
    out = capsys.readouterr().out
    assert "warning: servers[2].wp_pages[0]: demu could not write-protect gfns 0x30000" in out
    assert "-EBUSY" in out


WITHOUT_STEPS = [
    p
    for p in SHIPPED
    if not any("do" in item for item in yaml.safe_load(p.read_text())["accesses"])
]


@pytest.mark.parametrize("path", WITHOUT_STEPS, ids=lambda p: p.name)
def test_default_and_disabled_servers_are_never_asked(path: Path) -> None:
    """(Steps change which servers exist and are enabled: files with steps are left out.)"""
    case = load_case_file(path)
    not_asked = {s.name for s in case.servers if s.default or not s.enabled}
    for outcome in run_case(case).outcomes:
        for request in outcome.requests:
            assert not not_asked & {name for name, _ in request.route.tried}


@pytest.mark.parametrize(
    "path", [p for p in SHIPPED if load_case_file(p).rangeset == "list"], ids=lambda p: p.name
)
def test_rbtree_routes_every_access_like_the_list(path: Path) -> None:
    """The rangeset structure changes what a lookup costs, never where an access goes."""
    as_list = load_case_file(path)
    as_tree = as_list.model_copy(update={"rangeset": "rbtree"})
    for a, b in zip(run_case(as_list).outcomes, run_case(as_tree).outcomes, strict=True):
        for ra, rb in zip(a.requests, b.requests, strict=True):
            assert (ra.route.handler, ra.route.ioreq_type, ra.route.addr) == (
                rb.route.handler,
                rb.route.ioreq_type,
                rb.route.addr,
            )


# -- mismatches ----------------------------------------------------------------------------
def test_wrong_expectations_exit_1_and_name_each_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wrong.yaml"
    path.write_text(XENGT_CASE)
    assert main(["select", str(path)]) == 1
    out = capsys.readouterr().out
    assert "accesses[1] (mmio write 0xf7800000): expected handler qemu-dm, got xengt" in out
    assert "accesses[1] (mmio write 0xf7800000): expected 7 visits, got 1" in out
    assert f"{path}: xen 4.6: 3 accesses, 5 expectations, 2 failed" in out
    rows = table_rows(out)
    assert [row["check"] for row in rows] == ["✓", "MISMATCH", "✓"]


def test_quiet_prints_only_mismatches_and_the_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wrong.yaml"
    path.write_text(XENGT_CASE)
    assert main(["select", "-q", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"MISMATCH {path}: accesses[1]") for line in lines[:2])
    assert lines[2] == f"{path}: xen 4.6: 3 accesses, 5 expectations, 2 failed"
    assert main(["select", "-q", str(SELECTION / "pio-window.yaml")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_wrong_rewritten_request_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "cfc.yaml"
    path.write_text(
        "servers:\n"
        "  - {name: xengt, pci: ['00:02.0']}\n"
        "accesses:\n"
        "  - {type: pio, addr: 0xcf8, size: 4, dir: write, data: 0x80001004}\n"
        "  - {type: pio, addr: 0xcfc, size: 2, dir: read, expect_ioreq: PIO 0xcfc}\n"
    )
    out = io.StringIO()
    assert run_case_file(path, out, verbose=False) == 1
    assert "expected ioreq PIO 0xcfc, got PCI_CONFIG 0x0000001000000004" in out.getvalue()


# -- bad input ---------------------------------------------------------------------------
def test_every_bad_file_has_a_case() -> None:
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(name for name, _, _ in BAD_CASES)


@pytest.mark.parametrize(("name", "keypath", "problem"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_file_exits_2_naming_file_key_and_problem(
    name: str, keypath: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = BAD / name
    assert main(["select", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing is printed before the whole file validates
    assert captured.err.startswith(f"vgpu-sim: error: {path}: {keypath}")
    assert problem in captured.err
    assert "Traceback" not in captured.err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "no-such-case.yaml"
    assert main(["select", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: file not found" in err
    assert "Traceback" not in err


def test_run_case_file_writes_nothing_for_a_bad_file() -> None:
    out = io.StringIO()
    with pytest.raises(InputError) as info:
        run_case_file(BAD / "two-defaults.yaml", out, verbose=True)
    assert info.value.keypath == "servers[1].default"
    assert out.getvalue() == ""


def test_console_script_exits_2_without_traceback() -> None:
    script = Path(sys.executable).parent / "vgpu-sim"
    if not script.exists():
        pytest.skip(f"{script} is not installed")
    bad = BAD / "window-overflow.yaml"
    done = subprocess.run(
        [str(script), "select", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"{bad}: accesses[0].count" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_every_file_is_checked_even_after_a_bad_one(capsys: pytest.CaptureFixture[str]) -> None:
    """A broken file gives exit 2 but does not hide the results of the files after it."""
    bad = BAD / "unknown-key.yaml"
    good = SELECTION / "server-order.yaml"
    assert main(["select", str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    assert str(bad) in captured.err
    assert "0 failed" in captured.out


def test_readme_case_file_example_passes(tmp_path: Path) -> None:
    """The case file shown in the README is a working regression test, not prose."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Case files") :]
    start = section.index("```yaml") + len("```yaml")
    example = tmp_path / "readme.yaml"
    example.write_text(section[start : section.index("```", start)])
    assert main(["select", "-q", str(example)]) == 0


# -- releases, steps and split requests --------------------------------------------------
def test_an_unquoted_release_number_is_read_as_the_release(tmp_path: Path) -> None:
    """YAML reads 4.12 as a float; the releases here are unambiguous, so it is accepted."""
    path = tmp_path / "float.yaml"
    path.write_text(
        "xen: 4.12\nservers:\n  - {name: xengt}\n"
        "accesses:\n  - {type: pio, addr: 0x60, size: 1, dir: read, expect: none}\n"
    )
    assert load_case_file(path).profile.name == "4.12"


def test_step_and_request_mismatches_name_what_failed(tmp_path: Path) -> None:
    path = tmp_path / "wrong.yaml"
    path.write_text(
        'xen: "4.12"\n'
        "servers:\n  - {name: xengt, memory: [[0xf7800000, 0xf7bfffff]]}\n"
        "accesses:\n"
        "  - {do: destroy, server: xengt, expect_rc: ENOENT}\n"
        "  - type: mmio\n    addr: 0xf7800ff0\n    size: 4\n    count: 8\n    dir: read\n"
        "    expect_requests:\n"
        "      - {count: 4, expect: none}\n"
        "      - {count: 3, expect: none}\n"
    )
    out = io.StringIO()
    assert run_case_file(path, out, verbose=True) == 1
    text = out.getvalue()
    assert "accesses[0] (do destroy xengt): expected rc -ENOENT, got 0" in text
    assert "accesses[1] (mmio read 0xf7800ff0): request 1: expected count 3, got 4" in text
    assert f"{path}: xen 4.12: 1 accesses, 1 steps, 5 expectations, 2 failed" in text
    rows = table_rows(text)
    assert [row["#"] for row in rows] == ["0", "1.0", "1.1"]
    assert rows[0]["type"] == "do"
    assert rows[0]["handler"] == "rc 0"


def test_a_step_acts_on_the_id_the_server_got(tmp_path: Path) -> None:
    """Hypercalls name servers by id (get_ioreq_server, ioreq.c @RELEASE-4.12.0 lines
    49-55); the table shows whose the id is now."""
    path = tmp_path / "ids.yaml"
    path.write_text(
        'xen: "4.12"\n'
        "servers:\n  - {name: a}\n  - {name: b}\n"
        "accesses:\n"
        "  - {do: destroy, server: a}\n"
        "  - {do: create, server: c}\n"
        "  - {do: disable, server: a, expect_rc: 0}\n"
    )
    run = run_case(load_case_file(path))
    assert [o.target for o in run.items] == ["a (id 0)", "c (id 0)", "a (id 0, now c's)"]
    assert not run.domain.servers[-1].enabled
