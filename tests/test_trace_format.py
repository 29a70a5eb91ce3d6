"""Byte-level captures built by hand: record layout, windows, merging, xenalyze's arc rules,
lost records, cut and bad files. Each expected figure is worked out in the test.

Every capture summarised here was also run through xenalyze (xen.git c447b7308b) while
writing the tests, and gave the same counts and means; the one exception is the exit with
the wrong number of words, where xenalyze stops at its default tolerance (``--tolerance
6`` skips the record, as we do). The generated captures in test_trace_agreement.py carry
xenalyze's stored output.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.cli import main
from sim.inputs import InputError
from sim.trace import format as fmt
from sim.trace import report
from sim.trace.decode import _frame, index_windows, iter_batches
from sim.trace.reader import summarize_capture
from sim.trace.report import EXIT_COLUMNS, unattributed_arcs

R = fmt.encode


def running(dom: int, vcpu: int, tsc: int, old: int = fmt.RUNNABLE) -> bytes:
    return R(fmt.runstate_event(old, fmt.RUNNING), (fmt.vcpu_word(dom, vcpu),), tsc)


def change(dom: int, vcpu: int, old: int, new: int, tsc: int) -> bytes:
    return R(fmt.runstate_event(old, new), (fmt.vcpu_word(dom, vcpu),), tsc)


def vmexit(reason: int, tsc: int | None) -> bytes:
    return R(fmt.TRC_HVM_VMX_EXIT, (reason, 0xFFF0), tsc)


def entry(tsc: int) -> bytes:
    return R(fmt.TRC_HVM_VMENTRY, (), tsc)


def capture(*windows: tuple[int, list[bytes]]) -> bytes:
    out = b""
    for pcpu, records in windows:
        body = b"".join(records)
        out += fmt.cpu_change(pcpu, len(body)) + body
    return out


def summarize(tmp_path: Path, data: bytes, **kw):
    path = tmp_path / "cap.bin"
    path.write_bytes(data)
    return summarize_capture(path, **kw)


def arcs(summary) -> dict[tuple[int, int, str], tuple[int, int]]:
    return {
        (d, v, fmt.exit_reason_name(r)): (st.count, st.mean_cycles)
        for (d, v, r), st in summary.exits.items()
        if d != fmt.DEFAULT_DOMAIN
    }


# -- layout ---------------------------------------------------------------------------------
def test_record_bytes_follow_trace_h() -> None:
    # header 0x00081002 | 2 extra words << 28 | TSC flag << 31; TSC low word first.
    assert R(fmt.TRC_HVM_VMX_EXIT, (30, 0x1234), 0x1_0000_0002) == bytes.fromhex(
        "021008a002000000010000001e00000034120000"
    )
    # the window header: TRC_TRACE_CPU_CHANGE, 2 words, no TSC: pCPU and window bytes
    assert fmt.cpu_change(3, 40) == bytes.fromhex("03f001200300000028000000")
    assert fmt.runstate_event(fmt.BLOCKED, fmt.RUNNABLE) == 0x00021211
    assert fmt.vcpu_word(2, 1) == 0x00020001


def test_every_record_kind_decodes(tmp_path: Path) -> None:
    gpa64 = 0x1_2345_6000
    records = [
        running(1, 0, 10),
        vmexit(48, 100),
        R(fmt.TRC_HVM_VMX_EXIT64, (30, 0x81000000, 0xFFFFFFFF), 110),
        R(fmt.TRC_HVM_NPF, (0xF7800000, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0x182, 15)),
        R(fmt.TRC_HVM_IOMEM_READ, (0xF7800010, 7)),
        R(fmt.TRC_HVM_IOMEM_WRITE | fmt.TRC_64_FLAG, (gpa64, gpa64 >> 32, 9, 0)),
        R(fmt.TRC_HVM_IOPORT_READ, (0x3B0, 1)),
        R(fmt.TRC_HVM_IOPORT_WRITE, (0xCF8, 0x80001000)),
        entry(200),
        R(fmt.TRC_LOST_RECORDS, (5, 1, 150, 0), 300),
    ]
    path = tmp_path / "kinds.bin"
    path.write_bytes(capture((0, records)))
    index = index_windows(path)
    ((batch, warnings),) = list(iter_batches(index))
    assert warnings == []
    assert batch.event.tolist() == [
        fmt.runstate_event(fmt.RUNNABLE, fmt.RUNNING),
        fmt.TRC_HVM_VMX_EXIT,
        fmt.TRC_HVM_VMX_EXIT64,
        fmt.TRC_HVM_NPF,
        fmt.TRC_HVM_IOMEM_READ,
        fmt.TRC_HVM_IOMEM_WRITE | fmt.TRC_64_FLAG,
        fmt.TRC_HVM_IOPORT_READ,
        fmt.TRC_HVM_IOPORT_WRITE,
        fmt.TRC_HVM_VMENTRY,
        fmt.TRC_LOST_RECORDS,
    ]
    assert batch.extra.tolist() == [1, 2, 3, 6, 2, 4, 2, 2, 0, 4]
    assert batch.has_tsc.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    assert batch.tsc[batch.has_tsc].tolist() == [10, 100, 110, 200, 300]
    assert batch.data[2, :3].tolist() == [30, 0x81000000, 0xFFFFFFFF]
    assert batch.data[3].tolist() == [0xF7800000, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0x182, 15]
    assert batch.data[5, :4].tolist() == [gpa64 & 0xFFFFFFFF, 1, 9, 0]
    offsets = np.cumsum([0] + [len(r) for r in records[:-1]]) + 12
    assert batch.offset.tolist() == offsets.tolist()


# -- arcs -----------------------------------------------------------------------------------
def test_port_io_arc_with_its_address(tmp_path: Path) -> None:
    s = summarize(
        tmp_path,
        capture(
            (0, [running(1, 0, 1000), vmexit(30, 2000), R(fmt.TRC_HVM_IOPORT_WRITE, (0x3B0, 5))]),
            (0, [entry(2600)]),  # a second window of the same pCPU continues its stream
        ),
    )
    assert arcs(s) == {(1, 0, "IO_INSTRUCTION"): (1, 600)}
    assert [(k, st.count, st.mean_cycles) for k, st in s.addresses.items()] == [
        ((1, 1, 0x3B0, 1), 1, 600)
    ]


def test_record_without_tsc_takes_its_pcpus_last(tmp_path: Path) -> None:
    s = summarize(tmp_path, capture((0, [running(1, 0, 5000), vmexit(10, None), entry(5300)])))
    assert arcs(s) == {(1, 0, "CPUID"): (1, 300)}


def test_wake_closes_the_arc_and_the_entry_after_it_counts_nothing(tmp_path: Path) -> None:
    # d1v0 exits on pCPU 0 and blocks; pCPU 1 (dom0's) wakes it at 2500; it runs again
    # at 2700 and enters at 2800. xenalyze ends the arc at the wake: 2500 - 2000.
    guest = [
        running(1, 0, 1000),
        vmexit(30, 2000),
        R(fmt.TRC_HVM_IOPORT_READ, (0x60, 0)),
        change(1, 0, fmt.RUNNING, fmt.BLOCKED, 2100),
        running(1, 0, 2700),
        entry(2800),
    ]
    dom0 = [running(0, 0, 1500), change(1, 0, fmt.BLOCKED, fmt.RUNNABLE, 2500)]
    s = summarize(tmp_path, capture((1, dom0), (0, guest)))  # pCPU 1's window comes first
    assert arcs(s) == {(1, 0, "IO_INSTRUCTION"): (1, 500)}


def test_round_trip_stages(tmp_path: Path) -> None:
    guest = [
        running(1, 0, 1000),
        vmexit(30, 2000),
        R(fmt.TRC_HVM_IOPORT_READ, (0x60, 0)),
        change(1, 0, fmt.RUNNING, fmt.BLOCKED, 2100),
        running(1, 0, 5000),
        entry(5100),
    ]
    dom0 = [
        change(0, 0, fmt.RUNNABLE, fmt.BLOCKED, 500),  # dom0 starts blocked
        change(0, 0, fmt.BLOCKED, fmt.RUNNABLE, 2200),
        running(0, 0, 2600),
        change(1, 0, fmt.BLOCKED, fmt.RUNNABLE, 4000),  # the device model's reply
        change(0, 0, fmt.RUNNING, fmt.BLOCKED, 4010),
    ]
    s = summarize(tmp_path, capture((0, guest), (1, dom0)))
    stages = {name: (st.count, st.mean_cycles) for name, st in s.stages[1].items()}
    assert stages == {
        "exit_to_dom0": (1, 600),
        "dom0_to_done": (1, 1400),
        "done_to_resume": (1, 1100),
        "exit_to_resume": (1, 3100),
    }


def test_a_second_exit_replaces_an_open_one(tmp_path: Path) -> None:
    s = summarize(
        tmp_path, capture((0, [running(1, 0, 50), vmexit(10, 100), vmexit(12, 200), entry(250)]))
    )
    assert arcs(s) == {(1, 0, "HLT"): (1, 50)}


def test_exits_before_any_scheduler_record_belong_to_no_domain(tmp_path: Path) -> None:
    s = summarize(tmp_path, capture((0, [vmexit(10, 100), entry(150), running(1, 0, 200)])))
    assert arcs(s) == {}
    assert unattributed_arcs(s) == 1


def test_a_zero_cycle_arc_counts_but_is_not_in_the_mean(tmp_path: Path) -> None:
    records = [running(1, 0, 50), vmexit(10, 100), entry(100), vmexit(10, 200), entry(301)]
    s = summarize(tmp_path, capture((0, records)))
    assert arcs(s) == {(1, 0, "CPUID"): (2, 101)}


def test_an_exit_with_the_wrong_size_is_ignored(tmp_path: Path) -> None:
    bad = R(fmt.TRC_HVM_VMX_EXIT, (10,), 100)  # one word: xenalyze's check_extra_words fails
    s = summarize(tmp_path, capture((0, [running(1, 0, 50), bad, entry(150)])))
    assert arcs(s) == {}


@pytest.mark.parametrize(("named", "owner"), [((1, 0), (1, 0)), ((0, 0), (0, 0))])
def test_lost_records_drop_the_open_arc_and_are_counted(tmp_path: Path, named, owner) -> None:
    # Records from 150 to 400 were lost: the exit at 100 never gets its arc, the entry at
    # 500 closes nothing, and after the loss the pCPU runs the vCPU the record names.
    word = named[0] | named[1] << 16  # struct {u16 domain, vcpu} in the lost record
    lost = R(fmt.TRC_LOST_RECORDS, (7, word, 150, 0), 400)
    records = [running(1, 0, 50), vmexit(10, 100), lost, entry(500), vmexit(12, 600), entry(650)]
    s = summarize(tmp_path, capture((0, records)))
    assert (s.lost_records, s.lost_events) == (7, 1)
    assert arcs(s) == {(*owner, "HLT"): (1, 50)}


def test_windows_are_merged_by_tsc_not_file_order(tmp_path: Path) -> None:
    # pCPU 1's window (a wake at 300) comes before pCPU 0's (the exit at 100 and the
    # block at 150): processed in file order the wake would find no open arc.
    p0 = [running(1, 0, 50), vmexit(30, 100), change(1, 0, fmt.RUNNING, fmt.BLOCKED, 150)]
    p1 = [running(0, 0, 20), change(1, 0, fmt.BLOCKED, fmt.RUNNABLE, 300)]
    s = summarize(tmp_path, capture((1, p1), (0, p0)))
    assert arcs(s) == {(1, 0, "IO_INSTRUCTION"): (1, 200)}


def test_equal_tsc_goes_to_the_pcpu_processed_last(tmp_path: Path) -> None:
    """xenalyze's record_order_bubble: on a tie the pCPU that ran most recently goes on.

    pCPU 1's last record before the tie (600) is later than pCPU 0's (500), so its wake at
    1000 is processed before pCPU 0's exit at 1000: the wake closes nothing, and the arc
    runs to the entry at 1200. Were the exit first, the wake would close it at 0 cycles.
    """
    p0 = [running(1, 0, 100), vmexit(10, 500), entry(500), vmexit(10, 1000), entry(1200)]
    p1 = [running(0, 0, 100), R(fmt.TRC_HVM_VMENTRY, (), 600), change(1, 0, 2, 1, 1000)]
    s = summarize(tmp_path, capture((0, p0), (1, p1)))
    assert arcs(s) == {(1, 0, "CPUID"): (2, 200)}
    # The other way round, pCPU 0 ran last: its exit goes first and the wake closes it.
    p0 = [running(1, 0, 100), vmexit(10, 600), entry(600), vmexit(10, 1000), entry(1200)]
    p1 = [running(0, 0, 100), R(fmt.TRC_HVM_VMENTRY, (), 500), change(1, 0, 2, 1, 1000)]
    s = summarize(tmp_path, capture((0, p0), (1, p1)))
    assert arcs(s) == {(1, 0, "CPUID"): (2, 0)}


def test_64_bit_mmio_keeps_the_whole_address(tmp_path: Path) -> None:
    gpa = 0x1_F780_0000
    records = [
        running(1, 0, 10),
        R(fmt.TRC_HVM_VMX_EXIT64, (48, 0x81000000, 0xFFFFFFFF), 100),
        R(fmt.TRC_HVM_NPF, (gpa, gpa >> 32, 0, 0, 0x181, fmt.P2M_MMIO_DM)),
        R(fmt.TRC_HVM_IOMEM_READ | fmt.TRC_64_FLAG, (gpa, gpa >> 32, 1, 0)),
        entry(900),
    ]
    s = summarize(tmp_path, capture((0, records)))
    assert [k for k, _ in s.addresses.items()] == [(1, 2, gpa, 0)]
    assert [(k, st.mean_cycles) for k, st in s.npf.items()] == [((1, fmt.P2M_MMIO_DM), 800)]


# -- cut and bad files ----------------------------------------------------------------------
def test_a_capture_cut_inside_its_last_record(tmp_path: Path, capsys) -> None:
    data = capture((0, [running(1, 0, 10), vmexit(10, 100), entry(300), vmexit(12, 400)]))
    cut = data[:-6]
    path = tmp_path / "cut.bin"
    path.write_bytes(cut)
    s = summarize_capture(path)
    assert arcs(s) == {(1, 0, "CPUID"): (1, 200)}
    assert any("cut" in w and str(len(data) - 20) in w for w in s.warnings), s.warnings
    assert main(["trace", "summarize", str(path), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err
    assert f"byte offset {len(data) - 20}" in err


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.bin", b""),
        ("text.txt", b"this is a text file, not a trace\n" * 4),
        ("other.bin", R(fmt.TRC_HVM_VMENTRY, (), 100) * 4),
        ("short.bin", b"\x03\xf0"),
    ],
)
def test_not_a_capture_is_exit_2_in_one_line(tmp_path: Path, capsys, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a xentrace capture"):
        index_windows(path)
    assert main(["trace", "summarize", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert str(path) in err


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_a_directory_or_a_missing_file_is_exit_2(tmp_path: Path, capsys, kind: str) -> None:
    path = tmp_path if kind == "directory" else tmp_path / "nothing.bin"
    assert main(["trace", "summarize", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1


# -- output ---------------------------------------------------------------------------------
def test_csv_and_json_output(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.bin"
    path.write_bytes(capture((0, [running(1, 0, 10), vmexit(30, 100), entry(2900)])))
    assert main(["trace", "summarize", str(path), "--format", "csv", "--cpu-hz", "2.8G"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",") == [*EXIT_COLUMNS, "mean_us"]
    assert lines[1].split(",")[:6] == ["1", "0", "IO_INSTRUCTION", "30", "1", "2800"]
    assert lines[1].split(",")[-1] == "1.0"
    assert main(["trace", "summarize", str(path), "--format", "json", "--domain", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exits"] == []
    assert doc["records"] == 3
    assert doc["lost_records"] == 0


def test_the_address_table_lists_the_busiest_first(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    records, t = [running(1, 0, 10)], 100
    for port, n in ((0x60, 1), (0x3B0, 3), (0x70, 2), (0x64, 2)):
        for _ in range(n):
            records += [vmexit(30, t), R(fmt.TRC_HVM_IOPORT_WRITE, (port, 0)), entry(t + 50)]
            t += 100
    path = tmp_path / "c.bin"
    path.write_bytes(capture((0, records)))
    # ties (0x64 and 0x70, two each) in address order
    assert main(["trace", "summarize", str(path), "--format", "csv", "--table", "addresses"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [(r.split(",")[2], r.split(",")[4]) for r in rows] == [
        ("0x3b0", "3"),
        ("0x64", "2"),
        ("0x70", "2"),
        ("0x60", "1"),
    ]
    monkeypatch.setattr(report, "TEXT_ADDRESSES", 2)
    assert main(["trace", "summarize", str(path)]) == 0
    text = capsys.readouterr().out.split("Port and MMIO addresses")[1].split("\n\n")[0]
    assert text.startswith(", the 2 busiest of 4 ")
    assert [line.split()[2] for line in text.splitlines()[2:]] == ["0x3b0", "0x64"]


def test_bad_cpu_hz_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    path.write_bytes(capture((0, [running(1, 0, 10)])))
    with pytest.raises(SystemExit) as exc:
        main(["trace", "summarize", str(path), "--cpu-hz", "fast"])
    assert exc.value.code == 2


def test_header_word_size_rules() -> None:
    head = fmt.header(fmt.TRC_HVM_NPF, 6, False)
    assert head >> 31 == 0
    assert (head >> 28) & 7 == 6
    with pytest.raises(ValueError, match=r"0\.\.7"):
        fmt.header(fmt.TRC_HVM_NPF, 8, False)
    assert struct.unpack("<I", R(fmt.TRC_HVM_VMENTRY, (), 1)[:4])[0] == 0x80081001


@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=400),
    st.integers(0, 400),
    st.integers(0, 400),
)
def test_framing_walks_every_record_header(words: list[int], a: int, b: int) -> None:
    """The strided numpy framing finds the same record starts as a plain walk."""
    arr = np.asarray(words, dtype=np.uint32)
    a, b = sorted((min(a, len(arr)), min(b, len(arr))))
    starts, cut = _frame(arr, a, b)
    expect, i = [], a
    while i < b:
        expect.append(i)
        i += 1 + ((words[i] >> 28) & 7) + 2 * (words[i] >> 31)
    expect_cut = expect.pop() if i > b else None
    assert starts.tolist() == expect
    assert cut == expect_cut
