"""A strict reader and a streaming writer for .safetensors files.

We parse headers ourselves (instead of trusting a library with sizes from the
file) so that every failure names the file and the field, sizes are checked
against the file before anything is allocated, and the exact header bytes can be
kept for byte-identical rebuilds.

File layout: u64 little-endian header length N, N bytes of JSON header
({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}),
then the data region; offsets are relative to its start.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError, UnsupportedDtypeError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own cap

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the data region
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_bytes: bytes              # exactly as in the file, padding included
    entries: dict[str, TensorEntry]  # in data order
    metadata: dict[str, str] | None
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + len(self.header_bytes)


def read_header(path: Path) -> SafetensorsHeader:
    """Read and validate the header of a .safetensors file."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise FormatError(f"{path}: file is {len(prefix)} bytes, too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > file_size - 8:
                raise FormatError(f"{path}: header declares {length} bytes, but the file has {file_size - 8} "
                                  f"after the length field (limit {MAX_HEADER_BYTES})")
            header_bytes = f.read(length)
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        raw = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: header is not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise FormatError(f"{path}: header must be a JSON object")
    metadata = raw.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise FormatError(f"{path}: __metadata__ must map strings to strings")
    entries = _parse_entries(path, raw, file_size - 8 - length)
    return SafetensorsHeader(path, header_bytes, entries, metadata, file_size)


def _parse_entries(path: Path, raw: dict, data_size: int) -> dict[str, TensorEntry]:
    entries = [_parse_entry(path, name, info) for name, info in raw.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    cursor = 0
    for e in entries:
        if e.begin != cursor:
            raise FormatError(f"{path}: tensor {e.name!r} starts at data offset {e.begin}, expected {cursor} "
                              f"(overlapping or missing bytes)")
        cursor = e.end
    if cursor > data_size:
        raise FormatError(f"{path}: tensors need {cursor} data bytes but the file holds {data_size} "
                          f"(truncated file or offsets past the end)")
    if cursor < data_size:
        raise FormatError(f"{path}: {data_size - cursor} trailing bytes after the last tensor")
    return {e.name: e for e in entries}


def _parse_entry(path: Path, name: str, info) -> TensorEntry:
    if not isinstance(info, dict):
        raise FormatError(f"{path}: entry {name!r} must be an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise UnsupportedDtypeError(f"{path}: tensor {name!r} has dtype {dtype!r}; "
                                    f"supported: {', '.join(sorted(DTYPE_SIZES))}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**63 for d in shape)):
        raise FormatError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise FormatError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise FormatError(f"{path}: tensor {name!r} ({dtype}, shape {shape}) needs {expected} bytes, "
                          f"data_offsets give {offsets[1] - offsets[0]}")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_range(header: SafetensorsHeader, entry: TensorEntry, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Read bytes [start, stop) of a tensor's data into a new uint8 array (no mmap: RSS stays bounded)."""
    stop = entry.nbytes if stop is None else stop
    out = np.empty(stop - start, dtype=np.uint8)
    with open(header.path, "rb") as f:
        f.seek(header.data_start + entry.begin + start)
        got = f.readinto(memoryview(out))
    if got != out.size:
        raise FormatError(f"{header.path}: tensor {entry.name!r} is truncated (read {got} of {out.size} bytes)")
    return out


def read_entries(header: SafetensorsHeader, entries: list[TensorEntry]) -> list[np.ndarray]:
    """The data of tensors that follow each other in the file, read at once into one array: a view
    per tensor. One system call, and an array large enough for numpy to ask for huge pages (a page
    fault per 2 MiB rather than per 4 KiB)."""
    begin, end = entries[0].begin, entries[-1].end
    if any(a.end != b.begin for a, b in zip(entries, entries[1:])):
        raise ValueError(f"{header.path}: tensors to read at once must follow each other in the file")
    run = TensorEntry(f"{entries[0].name} .. {entries[-1].name}", "U8", (end - begin,), begin, end)
    data = read_range(header, run)
    return [data[e.begin - begin : e.end - begin] for e in entries]


def build_header(tensors: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None) -> bytes:
    """Header bytes (padded to 8) for tensors given as (name, dtype, shape, nbytes) in data order."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


FLUSH_BYTES = 16 * 1024 * 1024  # bytes written between two background flushes of a U8TensorWriter


class U8TensorWriter:
    """Writes a .safetensors file of U8 tensors whose sizes are known before their bytes: the header
    goes first, then each tensor's bytes at their place, in any order and from any thread (pwrite
    releases the GIL). Data reaches the disk in the background while more is being produced, so
    the fsync in `close` has little left to wait for."""

    def __init__(self, path: Path, tensors: list[tuple[str, int]], metadata: dict[str, str] | None = None,
                 flush_bytes: int | None = None):
        self.path = Path(path)
        header = build_header([(name, "U8", (size,), size) for name, size in tensors], metadata)
        self.sizes = dict(tensors)
        self.starts, start = {}, 8 + len(header)  # file offset of each tensor's first byte
        for name, size in tensors:
            self.starts[name] = start
            start += size
        self.data_bytes, self.written = sum(self.sizes.values()), 0
        self.flush_bytes, self._unflushed = flush_bytes or FLUSH_BYTES, 0
        # writes in progress, counted so that the file is closed only once none is (a late write to a
        # closed descriptor could land in whatever file reuses its number)
        self._state = threading.Condition()
        self._writing, self._closed = 0, False
        self._flusher = ThreadPoolExecutor(1, thread_name_prefix="unweight-flush")
        self._flushing: Future | None = None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            self._pwrite(struct.pack("<Q", len(header)) + header, 0)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, offset: int, data: np.ndarray) -> None:
        """Write `data` (bytes of any dtype) at byte `offset` of tensor `name`."""
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        if not 0 <= offset <= offset + view.nbytes <= self.sizes[name]:
            raise ValueError(f"{self.path}: bytes [{offset}, {offset + view.nbytes}) lie outside tensor {name!r} "
                             f"of {self.sizes[name]} bytes")
        with self._state:
            if self._closed:
                raise OSError(f"{self.path}: written to after it was closed")
            self._writing += 1
        try:
            self._pwrite(view, self.starts[name] + offset)
        finally:
            with self._state:
                self._writing -= 1
                self._state.notify_all()
        with self._state:
            self.written += view.nbytes
            self._unflushed += view.nbytes
            if self._unflushed >= self.flush_bytes and (self._flushing is None or self._flushing.done()):
                self._unflushed = 0
                self._flushing = self._flusher.submit(os.fdatasync, self._fd)

    def close(self) -> None:
        """Check that every byte was written, then fsync and close."""
        try:
            self._stop()
            if self._flushing is not None:
                self._flushing.result()
            if self.written != self.data_bytes:
                raise OSError(f"{self.path}: {self.written} bytes of tensor data written, expected {self.data_bytes}")
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        """Close without the checks (the file is left incomplete), once the writes under way are done."""
        self._stop()
        os.close(self._fd)

    def _stop(self) -> None:
        with self._state:
            self._closed = True
            self._state.wait_for(lambda: self._writing == 0)
        self._flusher.shutdown(wait=True)

    def _pwrite(self, data, position: int) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = os.pwrite(self._fd, view, position)
            view, position = view[n:], position + n
