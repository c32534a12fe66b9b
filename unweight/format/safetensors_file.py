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
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def _copy_all(source: BinaryIO, dest: BinaryIO, size: int) -> int:
    """Copy `size` bytes from the start of `source` to the end of `dest`, in the kernel where it can."""
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(source.fileno(), dest.fileno(), size - copied, copied)
            if n == 0:
                break
            copied += n
        dest.seek(0, os.SEEK_END)
        return copied
    except (AttributeError, OSError):  # no copy_file_range here (or across these files): copy through Python
        source.seek(copied)
        dest.seek(0, os.SEEK_END)
        shutil.copyfileobj(source, dest, 1 << 24)
        return source.tell()


def write_spooled(path: Path, tensors: list[tuple[str, BinaryIO, int]], metadata: dict[str, str] | None = None) -> None:
    """Write U8 tensors whose bytes wait in open files (name, file at offset 0, size), fsynced."""
    header = build_header([(name, "U8", (size,), size) for name, _, size in tensors], metadata)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, source, size in tensors:
            f.flush()
            copied = _copy_all(source, f, size)
            if copied != size:
                raise OSError(f"{path}: spooled stream {name!r} holds {copied} bytes, expected {size}")
        f.flush()
        os.fsync(f.fileno())
