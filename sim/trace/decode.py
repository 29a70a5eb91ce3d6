"""Streaming decode of a capture file: its window index, then records in bounded batches.

``xentrace`` writes a capture as windows: a ``TRC_TRACE_CPU_CHANGE`` record (no TSC, two
words: the pCPU and the byte size of what follows) and then that many bytes of the pCPU's
raw records (tools/xentrace/xentrace.c, ``membuf_reserve_window`` / ``write_buffer``). So
the file is first indexed by hopping from header to header, which reads 12 bytes per
window, and then read window by window in batches of a few MiB: memory stays bounded
whatever the file size, and nothing is memory-mapped (mapped pages would count as RSS).

Inside a window, records are framed by their headers (the size is in the header alone);
the per-record columns are then taken out with numpy in one go.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.inputs import InputError
from sim.trace import format as fmt

#: Data words kept per record: the most any record we interpret uses (NPF: gpa, mfn,
#: qualification, p2m type). Longer records keep their first six.
DATA_WORDS = 6
BATCH_BYTES = 4 << 20


@dataclass
class WindowIndex:
    """Where each window's records are: byte offset, pCPU, bytes present in the file."""

    path: Path
    file_size: int
    offsets: np.ndarray  # first record byte of each window
    pcpus: np.ndarray
    lengths: np.ndarray  # bytes of the window that are in the file (less when cut)
    #: windows before the first repeated pCPU: xenalyze activates these pCPUs at start.
    first_epoch: int
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)


def _not_a_capture(path: Path, problem: str) -> InputError:
    return InputError(path, "", f"not a xentrace capture: {problem}")


def index_windows(path: str | Path) -> WindowIndex:
    """Hop over the window headers. Raises :class:`InputError` if this is not a capture."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "", "no such file")
    if path.is_dir():
        raise _not_a_capture(path, "it is a directory")
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InputError(path, "", f"cannot read: {exc.strerror}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise _not_a_capture(path, "the file is empty")
        first = fh.read(fmt.CPU_CHANGE_BYTES)
        if len(first) < fmt.CPU_CHANGE_BYTES:
            raise _not_a_capture(path, f"only {size} bytes")
        head, cpu, _ = struct.unpack("<3I", first)
        if head != fmt.CPU_CHANGE_HEADER or cpu > fmt.MAX_CPUS:
            raise _not_a_capture(
                path, f"the first record (header {head:#010x}) is not a TRC_TRACE_CPU_CHANGE"
            )
        offsets: list[int] = []
        pcpus: list[int] = []
        lengths: list[int] = []
        warnings: list[str] = []
        first_epoch = -1
        seen: set[int] = set()
        pos = 0
        while pos < size:
            fh.seek(pos)
            raw = fh.read(fmt.CPU_CHANGE_BYTES)
            if len(raw) < fmt.CPU_CHANGE_BYTES:
                warnings.append(
                    f"capture cut inside a window header at byte offset {pos}; "
                    "summarised up to there"
                )
                break
            head, cpu, window = struct.unpack("<3I", raw)
            if head != fmt.CPU_CHANGE_HEADER or cpu > fmt.MAX_CPUS:
                warnings.append(
                    f"no window header at byte offset {pos} (found {head:#010x}): the "
                    "windows before it are summarised, the rest of the file is not"
                )
                break
            if first_epoch < 0 and cpu in seen:
                first_epoch = len(offsets)
            seen.add(cpu)
            start = pos + fmt.CPU_CHANGE_BYTES
            present = min(window, size - start)
            offsets.append(start)
            pcpus.append(cpu)
            lengths.append(present)
            if present < window:
                warnings.append(
                    f"capture cut inside the window of pCPU {cpu} that starts at byte "
                    f"offset {start} ({present} of {window} bytes present)"
                )
                break
            pos = start + window
    return WindowIndex(
        path=path,
        file_size=size,
        offsets=np.asarray(offsets, dtype=np.int64),
        pcpus=np.asarray(pcpus, dtype=np.int32),
        lengths=np.asarray(lengths, dtype=np.int64),
        first_epoch=len(offsets) if first_epoch < 0 else first_epoch,
        warnings=warnings,
    )


@dataclass
class RecordBatch:
    """Decoded records of consecutive windows, in file order (one row per record)."""

    pcpu: np.ndarray  # int32
    event: np.ndarray  # uint32, the 28-bit event id
    extra: np.ndarray  # int8, extra data words
    has_tsc: np.ndarray  # bool
    tsc: np.ndarray  # uint64, 0 where the record has none
    data: np.ndarray  # uint32 (n, DATA_WORDS), zero past the record's extra words
    offset: np.ndarray  # int64, byte offset of the record in the file
    window_ids: np.ndarray  # the index-numbers of the windows in this batch


#: Records per stride of the framing walk (a power of two): the Python loop visits one
#: record in STRIDE, numpy fills in the ones between.
STRIDE = 16


def _frame(words: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, int | None]:
    """Record starts (word indexes) of the window ``words[start:stop]``; and the word index
    of a last record cut by the window's end, if any.

    A record's size is in its header, so the starts are the orbit of the window's first
    word under ``next(i) = i + size(i)``. ``next`` is computed for every word at once and
    composed with itself into a jump of ``STRIDE`` records; a Python loop follows that
    jump (one step per ``STRIDE`` records) and numpy fills in the records between.
    """
    w = words[start:stop]
    n = len(w)
    sizes = 1 + ((w >> fmt.EXTRA_SHIFT) & fmt.EXTRA_MASK).astype(np.int64)
    sizes += (w >> 31).astype(np.int64) << 1
    nxt = np.empty(n + 1, dtype=np.int32)  # int32: half the memory traffic of the gathers
    np.minimum(np.arange(n, dtype=np.int32) + sizes, n, out=nxt[:n], casting="unsafe")
    nxt[n] = n  # a sink past the window
    jump = nxt
    for _ in range(STRIDE.bit_length() - 1):
        jump = jump[jump]
    samples = []
    i = 0
    while i < n:
        samples.append(i)
        i = int(jump[i])
    rows = [np.asarray(samples, dtype=np.int32)]
    for _ in range(STRIDE - 1):
        rows.append(nxt[rows[-1]])
    every = np.stack(rows, axis=1).ravel()
    starts = every[every < n]
    cut = None
    if len(starts) and int(starts[-1]) + int(sizes[starts[-1]]) > n:
        cut = int(starts[-1]) + start  # the last record runs past the window
        starts = starts[:-1]
    return starts.astype(np.int64) + start, cut


def iter_batches(
    index: WindowIndex, batch_bytes: int = BATCH_BYTES
) -> Iterator[tuple[RecordBatch, list[str]]]:
    """Decode the windows in file order, a few MiB at a time; each batch comes with the
    warnings it raised (a record cut at the end of a window)."""
    n_windows = len(index)
    w = 0
    with index.path.open("rb") as fh:
        while w < n_windows:
            first = w
            span_start = int(index.offsets[w])
            span_end = span_start + int(index.lengths[w])
            w += 1
            while w < n_windows and span_end - span_start < batch_bytes:
                nxt = int(index.offsets[w])
                if nxt - fmt.CPU_CHANGE_BYTES != span_end:
                    break
                span_end = nxt + int(index.lengths[w])
                w += 1
            fh.seek(span_start)
            raw = fh.read(span_end - span_start)
            yield _decode_span(index, raw, span_start, first, w)


def _decode_span(
    index: WindowIndex, raw: bytes, span_start: int, first: int, last: int
) -> tuple[RecordBatch, list[str]]:
    usable = len(raw) - len(raw) % 4
    words = np.frombuffer(raw, dtype="<u4", count=usable // 4)
    starts: list[np.ndarray] = []
    pcpu_runs: list[int] = []
    warnings: list[str] = []
    for k in range(first, last):
        a = int(index.offsets[k]) - span_start
        b = a + int(index.lengths[k])
        if b > usable:
            b = usable
        if a % 4 or b % 4:
            warnings.append(
                f"window of pCPU {int(index.pcpus[k])} at byte offset {span_start + a} is "
                "not a whole number of 32-bit words; its tail is ignored"
            )
        got, cut = _frame(words, a // 4, b // 4)
        if cut is not None:
            warnings.append(
                f"record at byte offset {span_start + 4 * cut} is cut by the end of its "
                f"window (pCPU {int(index.pcpus[k])}); decoded up to there"
            )
        starts.append(got)
        pcpu_runs.append(len(got))
    s = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    pcpu = np.repeat(index.pcpus[first:last], pcpu_runs).astype(np.int32)
    n_words = len(words)
    head = words[s] if len(s) else np.zeros(0, dtype=np.uint32)
    has_tsc = (head >> 31).astype(bool)
    extra = ((head >> fmt.EXTRA_SHIFT) & fmt.EXTRA_MASK).astype(np.int8)
    lo = words[np.minimum(s + 1, n_words - 1)].astype(np.uint64) if len(s) else head
    hi = words[np.minimum(s + 2, n_words - 1)].astype(np.uint64) if len(s) else head
    tsc = np.where(has_tsc, lo | (hi << np.uint64(32)), np.uint64(0)).astype(np.uint64)
    d0 = s + 1 + 2 * has_tsc
    cols = np.arange(DATA_WORDS)
    idx = np.minimum(d0[:, None] + cols, max(n_words - 1, 0))
    data = words[idx] if len(s) else np.zeros((0, DATA_WORDS), dtype=np.uint32)
    data = np.where(cols < extra[:, None], data, 0).astype(np.uint32)
    batch = RecordBatch(
        pcpu=pcpu,
        event=(head & fmt.EVENT_MASK).astype(np.uint32),
        extra=extra,
        has_tsc=has_tsc,
        tsc=tsc,
        data=data,
        offset=span_start + 4 * s,
        window_ids=np.arange(first, last),
    )
    return batch, warnings


def peek_first_key(index: WindowIndex, window: int, fh: object) -> int | None:
    """The merge key of the first TSC-carrying record of a window (xenalyze orders a
    lost-records record by the TSC of its first lost record), or None if the first few
    records carry none."""
    start = int(index.offsets[window])
    length = min(int(index.lengths[window]), 512)
    fh.seek(start)  # type: ignore[attr-defined]
    raw = fh.read(length)  # type: ignore[attr-defined]
    words = np.frombuffer(raw, dtype="<u4", count=len(raw) // 4)
    i = 0
    while i < len(words):
        h = int(words[i])
        extra = (h >> fmt.EXTRA_SHIFT) & fmt.EXTRA_MASK
        if h >> 31:
            if i + 2 >= len(words):
                return None
            if (h & fmt.EVENT_MASK) == fmt.TRC_LOST_RECORDS and extra == 4:
                if i + 6 >= len(words):
                    return None
                return int(words[i + 5]) | (int(words[i + 6]) << 32)
            return int(words[i + 1]) | (int(words[i + 2]) << 32)
        i += 1 + extra
    return None
