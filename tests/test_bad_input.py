"""Bad input never hangs, never tracebacks, never mislabels (issue #9, items 2-11, 17-19, 27-29).

Each case is a file as a user might write it; the command must exit 2 with one line of at
most ~300 characters naming the file, the key path and the problem, write nothing, and
never echo more than ~200 characters of the user's value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.cli import main
from sim.inputs import MAX_ECHO, MAX_MESSAGE, InputError, echo, one_line, parse_yaml

HEAD = "schema_version: 1\nplatform: hsw\nduration_ms: 1\n"


def duration(text: str) -> str:
    return HEAD.replace("duration_ms: 1\n", f"duration_ms: {text}\n")


def guest(extra: str = "", vgpu: str = "", ppgtt: str = "") -> str:
    pp = f"ppgtt: {{{ppgtt}}}, " if ppgtt else ""
    return f"guests: [{{name: a, vgpu: {{{pp}{vgpu}}}{extra}}}]\n"


def deep(levels: int) -> str:
    return "description: " + "[" * levels + "]" * levels + "\n"


BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "description: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
)

# item -> (file text, key path in the message, problem in the message)
CASES = {
    "2-infinite-duration": (
        duration(".inf") + guest(),
        "duration_ms",
        "finite number",
    ),
    "2-nan-duration": (duration(".nan") + guest(), "duration_ms", "finite"),
    "2-duration-above-an-hour": (
        duration("3600001") + guest(),
        "duration_ms",
        "one hour",
    ),
    "4-tiny-lifetime": (
        HEAD + guest(ppgtt="lifetime_ms: 0.000001"),
        "guests[0].vgpu.ppgtt.lifetime_ms",
        "greater than or equal to 0.001",
    ),
    "5-huge-vcpus": (HEAD + guest(", vcpus: 1180591620717411303424"), "guests[0].vcpus", "128"),
    "5-huge-live-pages": (
        HEAD + guest(ppgtt="live_pages: 1180591620717411303424"),
        "guests[0].vgpu.ppgtt.live_pages",
        "less than or equal to 1048576",
    ),
    "5-huge-think": (
        HEAD + guest(", think: {dist: exponential, mean_ns: 1.0e+300}"),
        "guests[0].think.exponential.mean_ns",
        "60 s",
    ),
    "6-no-node-for-the-bar": (
        HEAD + "xen: {max_nr_io_ranges: 0}\n" + guest(),
        "xen.max_nr_io_ranges",
        "BAR's own map needs one node",
    ),
    "7-more-page-tables-than-ram": (
        HEAD + guest(", ram_mb: 16", ppgtt="live_pages: 4000, pages_per_ppgtt: 100"),
        "guests[0]",
        "exceeds the 3840 page frames",
    ),
    "9-deep-yaml": (HEAD + deep(700) + guest(), "line 4", "nested deeper than 32"),
    "10-alias-bomb": (HEAD + BOMB + guest(), "line", "aliases expand it by more than"),
    "10-recursive-alias": (HEAD + "x: &x [*x]\n" + guest(), "line", "refers to a node"),
    "17-name-dot-dot": (HEAD + "name: ..\n" + guest(), "name", "should match pattern"),
    "17-name-with-a-slash": (HEAD + "name: a/b\n" + guest(), "name", "should match pattern"),
    "18-vga-port-above-16-bits": (
        HEAD + guest(vgpu="vga_ports: [0x10000, 0x10010]"),
        "guests[0].vgpu.vga_ports[0]",
        "65535",
    ),
    "18-other-port-above-16-bits": (
        HEAD + guest(", other_devices: {ports: [0xc000, 0x1c000]}"),
        "guests[0].other_devices.ports[1]",
        "16 bits",
    ),
    "19-huge-ram": (HEAD + guest(", ram_mb: 1180591620717411303424"), "guests[0].ram_mb", "16 TiB"),
    "19-bar-inside-ram": (
        HEAD + guest(", ram_mb: 8192"),
        "guests[0]",
        "vgpu.bar0_mmio [0xf7800000, 0xf7bfffff] lies inside guest RAM",
    ),
    "19-other-devices-inside-the-bar": (
        HEAD + guest(", other_devices: {mmio: [0xf7800000, 0xf780ffff]}"),
        "guests[0]",
        "other_devices.mmio overlaps vgpu.bar0_mmio",
    ),
    "integer-of-5000-digits": (
        duration("1" * 5000) + guest(),
        "",
        "a number has over 4300 digits",
    ),
    "a-long-value-is-not-echoed-whole": (
        HEAD + 'name: "' + "x" * 100_000 + '"\n' + guest(),
        "name",
        "should have at most 64 characters",
    ),
    "cross-field-error-does-not-dump-the-config": (
        duration("1\nwarmup_ms: 2") + guest(),
        "(top level)",
        "warmup_ms (2.0) must be below duration_ms (1.0)",
    ),
}


def check_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:2000]
    assert len(lines[0]) <= len("vgpu-sim: error: ") + MAX_MESSAGE
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_scenario_exits_2_with_one_short_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, keypath, problem = CASES[case]
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    line = check_one_line(capsys.readouterr().err)
    assert line.startswith(f"vgpu-sim: error: {path}: {keypath}")
    assert problem in line
    assert "x" * (MAX_ECHO + 1) not in line
    assert "'lol', 'lol'" not in line
    assert not out.exists()
    assert main(["validate", str(path)]) == 2
    check_one_line(capsys.readouterr().err)


def test_non_utf8_empirical_csv_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 11: a UnicodeDecodeError traceback before."""
    (tmp_path / "t.csv").write_bytes(b"x\n\xff\xfe1\n")
    (tmp_path / "nul.csv").write_bytes(b"1\n2\x003\n")
    for name, problem in (("t.csv", "is not UTF-8"), ("nul.csv", "row 2: not a number")):
        path = tmp_path / "s.yaml"
        path.write_text(HEAD + guest(f", think: {{dist: empirical, file: {name}}}"))
        assert main(["validate", str(path)]) == 2
        line = check_one_line(capsys.readouterr().err)
        assert "guests[0].think.file" in line
        assert problem in line


def test_a_path_with_a_nul_byte_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by `make fuzz`: a ValueError ("embedded null byte") escaped before."""
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + guest(', think: {dist: empirical, file: "a\\0b.csv"}'))
    assert main(["validate", str(path)]) == 2
    assert "guests[0].think.file: a path cannot hold a NUL byte" in check_one_line(
        capsys.readouterr().err
    )
    sweep = tmp_path / "w.yaml"
    sweep.write_text(
        'schema_version: 1\nbase: "\\0"\naxes: {seed: [1]}\nreplications: 1\nseed: 1\n'
    )
    assert main(["validate", str(sweep)]) == 2
    assert "base: a path cannot hold a NUL byte" in check_one_line(capsys.readouterr().err)


def test_an_empirical_value_is_bounded_like_every_duration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.csv").write_text("1\n1e300\n")
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + guest(", think: {dist: empirical, file: t.csv}"))
    assert main(["validate", str(path)]) == 2
    assert "row 2: 1e+300 is not a duration" in check_one_line(capsys.readouterr().err)


def test_files_that_are_not_regular_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO or a device would block or never end; a huge file is not read."""
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert main(["validate", str(fifo), "/dev/zero"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.endswith("is not a regular file") for line in err] == [True, True]
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (5 << 20))
    assert main(["validate", str(big)]) == 2
    assert "input files are limited to" in check_one_line(capsys.readouterr().err)


def test_a_set_value_that_is_not_yaml_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 27: PyYAML's six-line message before."""
    tiny = Path(__file__).resolve().parent.parent / "scenarios" / "small" / "tiny.yaml"
    argv = ["run", str(tiny), "--set", "xen.rangeset=[", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    line = check_one_line(capsys.readouterr().err)
    assert line.startswith("vgpu-sim: error: --set: xen.rangeset: value '[' is invalid YAML")
    assert main(["run", str(tiny), "--set", "guests[0].vcpus=" + "[" * 100 + "]" * 100]) == 2
    assert "nested deeper" in check_one_line(capsys.readouterr().err)


def test_a_file_name_that_is_no_scenario_name_is_reported_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 28: it was reported against a `name` key the user never wrote."""
    path = tmp_path / "my scenario.yaml"
    path.write_text(HEAD + guest())
    assert main(["validate", str(path)]) == 2
    line = check_one_line(capsys.readouterr().err)
    assert f"{path}: (file name): 'my scenario' is not a scenario name" in line
    assert "give the scenario a name: key" in line
    named = tmp_path / "my other scenario.yaml"
    named.write_text(HEAD + "name: fine\n" + guest())
    assert main(["validate", str(named)]) == 0


def test_messages_are_cut_to_one_line() -> None:
    err = InputError("f" * 500, "k" * 500, "p\n" * 500)
    assert "\n" not in str(err)
    assert len(str(err)) <= MAX_MESSAGE
    assert one_line("a\nb\x00c", 10) == "a b c"
    # Found by `make fuzz`: U+0085 (NEL) is a line break to str.splitlines().
    assert len(one_line("a\x85b\u2028c\x1ed\x0be", 20).splitlines()) == 1
    assert len(echo("x" * 10_000)) <= MAX_ECHO
    huge = [["lol"] * 1000] * 1000  # shared, as an alias bomb builds it: not rendered whole
    assert len(echo(huge)) <= MAX_ECHO


def test_duplicate_keys_and_unsafe_tags_are_refused() -> None:
    with pytest.raises(InputError, match="duplicate key 'a'"):
        parse_yaml("a: 1\na: 2\n", "f.yaml")
    with pytest.raises(InputError, match="invalid YAML"):
        parse_yaml("a: !!python/object/apply:os.system [echo hi]\n", "f.yaml")
    assert parse_yaml("a: &x {b: 1}\nc: *x\n", "f.yaml") == {"a": {"b": 1}, "c": {"b": 1}}


@pytest.mark.parametrize("loader", ["_StrictLoader", "_PurePythonLoader"])
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: " + "[" * 33 + "]" * 33, "nested deeper than 32 levels"),
        ("a: " + "[" * 5000 + "]" * 5000, "nest"),  # libyaml stops at 1000 by itself
        ("a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 40)) + " " * 40 + "x: 1", "nest"),
        ("a: &a " + "[" * 20 + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20, "aliases nest"),
        (BOMB, "aliases expand it by more than 10000 nodes"),
        ("x: &x [*x]", "refers to a node that contains it"),
        ("a: 1\na: 2", "duplicate key 'a'"),
        ("- 1\n--- \n- 2", "expected a single document"),
    ],
)
def test_the_loader_refuses_hostile_yaml_with_libyaml_and_without(
    loader: str, text: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sim.inputs

    monkeypatch.setattr(sim.inputs, "_StrictLoader", getattr(sim.inputs, loader))
    with pytest.raises(InputError) as info:
        parse_yaml(text, "f.yaml")
    assert problem in info.value.problem
    assert len(str(info.value)) <= MAX_MESSAGE
