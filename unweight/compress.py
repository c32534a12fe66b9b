"""`compress`: a safetensors checkpoint -> a packed directory, verified, written atomically."""

from __future__ import annotations

import hashlib
import logging
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .codec import floats
from .codec.tensor import EncodedTensor, choose_steps, encode_float, encode_other
from .errors import DestinationError
from .format.output_dir import atomic_directory
from .format.manifest import MANIFEST_NAME, SHARD_ROLES, Manifest, SourceFile, TensorRecord
from .format.safetensors_file import SafetensorsHeader, TensorEntry, read_header, read_range, write_spooled
from .sources import SourceCheckpoint, resolve_source

log = logging.getLogger(__name__)
DEFAULT_SHARD_BYTES = 2 * 1024**3


@dataclass
class TensorStats:
    name: str
    dtype: str
    shape: tuple[int, ...]
    original_bytes: int
    packed_bytes: int
    entropy_bits: float      # exponent-symbol entropy (coded floats), else 0
    bound_bytes: float       # entropy bound of this codec family for the tensor

    @property
    def bits_per_weight(self) -> float:
        numel = max(1, int(np.prod(self.shape)))
        return 8 * self.packed_bytes / numel


@dataclass
class CompressReport:
    source: str
    destination: Path
    tensors: list[TensorStats] = field(default_factory=list)
    original_bytes: int = 0          # size of the source weight files
    packed_bytes: int = 0            # size of the shards + manifest
    skipped: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.packed_bytes / max(1, self.original_bytes)

    @property
    def bound_ratio(self) -> float:
        return sum(t.bound_bytes for t in self.tensors) / max(1, self.original_bytes)


Progress = Callable[[int], None]  # called with bytes of source tensor data done


def compress(src: str | Path, dst: str | Path, *, force: bool = False, verify: bool = True,
             shard_bytes: int = DEFAULT_SHARD_BYTES, steps: int | None = None,
             progress: Progress | None = None) -> CompressReport:
    """Compress SRC into the packed directory DST (atomically: a temporary directory renamed at the end).

    `steps` fixes the block length of every coded tensor; by default it is chosen per tensor
    (codec.tensor.choose_steps).
    """
    source = resolve_source(src)
    dst = Path(dst).expanduser().absolute()
    _check_destination(source, dst, force)
    report = CompressReport(str(src), dst, skipped=list(source.skipped))
    with atomic_directory(dst, force) as tmp:
        manifest = _write_packed(source, tmp, report, verify, shard_bytes, steps, progress or (lambda n: None))
        manifest.save(tmp)
        report.packed_bytes = sum((tmp / name).stat().st_size for name in [*manifest.shards, MANIFEST_NAME])
    return report






def _check_destination(source: SourceCheckpoint, dst: Path, force: bool) -> None:
    root = source.root.resolve()
    if not source.single_file and (dst.resolve() == root or root in dst.resolve().parents):
        raise DestinationError(f"{dst}: the output may not be inside the source checkpoint {root}")






def _write_packed(source: SourceCheckpoint, out: Path, report: CompressReport, verify: bool,
                  shard_bytes: int, steps: int | None, progress: Progress) -> Manifest:
    manifest = Manifest(created_by=f"unweight {__version__}")
    shards = _ShardWriter(out, shard_bytes)
    for rel in source.weight_files:
        header = read_header(source.root / rel)
        # the file's SHA-256 is fed from the tensor bytes as they stream by, in file order
        file_digest = hashlib.sha256(struct.pack("<Q", len(header.header_bytes)) + header.header_bytes)

        def consume(data: np.ndarray) -> None:
            file_digest.update(data)
            progress(data.size)

        report.original_bytes += header.file_size
        for entry in header.entries.values():
            encoded = _encode_entry(header, entry, steps, verify, consume)
            shard, spans = shards.add(encoded.parts)
            manifest.tensors[entry.name] = _record(entry, encoded, shard, spans)
            report.tensors.append(_stats(entry, encoded))
        manifest.files.append(SourceFile(rel, header.file_size, file_digest.hexdigest(),
                                         SourceFile.pack_header(header.header_bytes), list(header.entries)))
    manifest.shards = shards.close()
    for rel in source.other_files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.root / rel, out / rel)
        manifest.copied.append(rel)
    return manifest


def _encode_entry(header: SafetensorsHeader, entry: TensorEntry, steps: int | None, verify: bool,
                  consume: Callable[[np.ndarray], None]) -> EncodedTensor:
    where = f"{header.path.name}: tensor {entry.name!r}"
    if entry.dtype in floats.LAYOUTS and entry.numel > 0:
        return encode_float(entry.dtype, entry.numel, lambda a, b: read_range(header, entry, a, b),
                            steps=steps or choose_steps(entry.numel), where=where, verify=verify, consume=consume)
    data = read_range(header, entry)
    consume(data)
    return encode_other(data)


def _record(entry: TensorEntry, encoded: EncodedTensor, shard: str, spans: dict[str, list[int]]) -> TensorRecord:
    return TensorRecord(
        name=entry.name, dtype=entry.dtype, shape=list(entry.shape), sha256=encoded.sha256,
        encoding=encoded.encoding, shard=shard, spans=spans, steps=encoded.steps,
        entropy_bits=round(encoded.entropy_bits, 6), **_trimmed_lengths(encoded.code_lengths))


def _trimmed_lengths(lengths: np.ndarray | None) -> dict:
    """Code lengths without the runs of unused symbols at both ends (most exponents never occur)."""
    used = np.flatnonzero(lengths) if lengths is not None else np.zeros(0, dtype=np.int64)
    if used.size == 0:
        return {"code_lengths": "", "first_symbol": 0}
    return {"code_lengths": lengths[used[0] : used[-1] + 1].tobytes().hex(), "first_symbol": int(used[0])}


def _stats(entry: TensorEntry, encoded: EncodedTensor) -> TensorStats:
    if encoded.encoding == "lanes":
        layout = floats.LAYOUTS[entry.dtype]
        bound = entry.numel * (encoded.entropy_bits + 8 * layout.raw_planes) / 8
    else:
        bound = encoded.packed_bytes
    return TensorStats(entry.name, entry.dtype, entry.shape, entry.nbytes, encoded.packed_bytes,
                       encoded.entropy_bits, bound)


class _ShardWriter:
    """Streams each tensor's streams to disk as it comes: one spool file per role, joined into a
    shard (one U8 tensor per role) when the next tensor would overflow it. Nothing of a shard is
    held in memory, so peak memory follows the largest tensor, not the shard size."""

    def __init__(self, out: Path, shard_bytes: int):
        self.out, self.shard_bytes = out, shard_bytes
        self.spools = {role: open(out / f".spool-{role}", "w+b") for role in SHARD_ROLES}
        self.sizes = dict.fromkeys(SHARD_ROLES, 0)
        self.names: list[str] = []

    def add(self, parts: dict[str, list[np.ndarray]]) -> tuple[str, dict[str, list[int]]]:
        """Write a tensor's streams (as pieces); returns its shard name and its spans in that shard."""
        size = sum(a.size for pieces in parts.values() for a in pieces)
        if any(self.sizes.values()) and sum(self.sizes.values()) + size > self.shard_bytes:
            self._flush()
        spans = {}
        for role, pieces in parts.items():
            length = sum(a.size for a in pieces)
            spans[role] = [self.sizes[role], self.sizes[role] + length]
            for a in pieces:
                self.spools[role].write(memoryview(np.ascontiguousarray(a)))
            self.sizes[role] += length
        return self._name(len(self.names)), spans

    def close(self) -> list[str]:
        if any(self.sizes.values()) or not self.names:
            self._flush()
        for role, spool in self.spools.items():
            spool.close()
            (self.out / f".spool-{role}").unlink()
        return self.names

    def _name(self, i: int) -> str:
        return f"packed-{i + 1:05d}.safetensors"

    def _flush(self) -> None:
        name = self._name(len(self.names))
        for spool in self.spools.values():
            spool.flush()
            spool.seek(0)
        write_spooled(self.out / name, [(role, self.spools[role], self.sizes[role]) for role in SHARD_ROLES])
        for spool in self.spools.values():
            spool.seek(0)
            spool.truncate()
        self.names.append(name)
        self.sizes = dict.fromkeys(SHARD_ROLES, 0)
