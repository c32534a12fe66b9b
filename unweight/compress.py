"""`compress`: a safetensors checkpoint -> a packed directory, verified, written atomically.

Tensors go through two passes (see codec/tensor.py): planned (code and exact stream sizes) a
shard at a time, then coded straight into the shard, whose layout is then known. Both passes
keep several units of work in flight on the encoder's threads while reading, writing and hashing
go on beside them; the constants below bound the memory this takes.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import struct
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from . import __version__
from .codec import floats, huffman, lanes
from .codec.tensor import DEFAULT_STEPS, TASK_BYTES, Pending, TensorEncoder, TensorJob, TensorPlan, TensorSource
from .errors import DestinationError, UnweightError
from .format.output_dir import atomic_directory
from .format.manifest import MANIFEST_NAME, SHARD_ROLES, Manifest, SourceFile, TensorRecord
from .format.safetensors_file import (SafetensorsHeader, TensorEntry, U8TensorWriter, read_entries, read_header,
                                      read_range)
from .sources import SourceCheckpoint, resolve_source

log = logging.getLogger(__name__)
DEFAULT_SHARD_BYTES = 2 * 1024**3
IN_FLIGHT_BYTES = 128 * 1024**2  # source bytes of the units planned or coded at once (a larger one goes alone)
MAX_IN_FLIGHT = 64               # units planned or coded at once
KEEP_BYTES = 256 * 1024**2       # source bytes read while planning a shard and kept for coding it
READ_BATCH_BYTES = 32 * 1024**2  # small tensors are read in runs of up to this many bytes
T = TypeVar("T")
R = TypeVar("R")


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
             progress: Progress | None = None, device: str | None = None) -> CompressReport:
    """Compress SRC into the packed directory DST (atomically: a temporary directory renamed at the end).

    `steps` fixes the block length of every coded tensor (default: codec.tensor.DEFAULT_STEPS).
    `device` ("cuda", ...) codes the words there (codec.lanes_torch) instead of with the CPU coder;
    the output is the same, byte for byte.
    """
    if steps is not None and not 1 <= steps <= lanes.MAX_STEPS:
        raise UnweightError(f"steps must be between 1 and {lanes.MAX_STEPS}, got {steps}")
    if device is not None:
        _check_device(device)
    source = resolve_source(src)
    dst = Path(dst).expanduser().absolute()
    _check_destination(source, dst, force)
    report = CompressReport(str(src), dst, skipped=list(source.skipped))
    with atomic_directory(dst, force) as tmp:
        manifest = _write_packed(source, tmp, report, verify, shard_bytes, steps, progress or (lambda n: None),
                                 device)
        manifest.save(tmp)
        report.packed_bytes = sum((tmp / name).stat().st_size for name in [*manifest.shards, MANIFEST_NAME])
    return report


def _check_destination(source: SourceCheckpoint, dst: Path, force: bool) -> None:
    root = source.root.resolve()
    if not source.single_file and (dst.resolve() == root or root in dst.resolve().parents):
        raise DestinationError(f"{dst}: the output may not be inside the source checkpoint {root}")


@dataclass
class _Tensor:
    header: SafetensorsHeader
    entry: TensorEntry
    plan: TensorPlan | None = None

    @property
    def where(self) -> str:
        return f"{self.header.path.name}: tensor {self.entry.name!r}"

    def read(self, start: int, stop: int) -> np.ndarray:
        return read_range(self.header, self.entry, start, stop)


def _check_device(device: str) -> None:
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise UnweightError(f"device {device!r} is not a torch device ({e})") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise UnweightError(f"device {device!r}: no CUDA device is available here; compress on the CPU "
                            f"(leave out --device)")


def _write_packed(source: SourceCheckpoint, out: Path, report: CompressReport, verify: bool,
                  shard_bytes: int, steps: int | None, progress: Progress, device: str | None) -> Manifest:
    """Plan the tensors of a shard (codes and exact stream sizes), then code them straight into it."""
    manifest = Manifest(created_by=f"unweight {__version__}")
    headers = [read_header(source.root / rel) for rel in source.weight_files]
    # a file's SHA-256 is fed from its tensor bytes as they stream by, in file order
    digests = {h.path: hashlib.sha256(struct.pack("<Q", len(h.header_bytes)) + h.header_bytes) for h in headers}

    def consumer(header: SafetensorsHeader) -> Callable[[np.ndarray], None]:
        def consume(data: np.ndarray) -> None:
            digests[header.path].update(data)
            progress(data.size)
        return consume

    with TensorEncoder(device=device) as encoder:
        for group in _shard_groups(_planned(encoder, headers, steps), shard_bytes):
            name = f"packed-{len(manifest.shards) + 1:05d}.safetensors"
            for tensor, sha256, spans in _write_shard(encoder, out / name, group, verify, consumer):
                manifest.tensors[tensor.entry.name] = _record(tensor.entry, tensor.plan, sha256, name, spans)
                report.tensors.append(_stats(tensor.entry, tensor.plan))
            manifest.shards.append(name)
    for rel, header in zip(source.weight_files, headers):
        report.original_bytes += header.file_size
        manifest.files.append(SourceFile(rel, header.file_size, digests[header.path].hexdigest(),
                                         SourceFile.pack_header(header.header_bytes), list(header.entries)))
    for rel in source.other_files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.root / rel, out / rel)
        manifest.copied.append(rel)
    return manifest


def _planned(encoder: TensorEncoder, headers: list[SafetensorsHeader], steps: int | None) -> Iterator[_Tensor]:
    """Every tensor with its plan, in file order, planning several units at once (IN_FLIGHT_BYTES of
    source, plus the rest of a run of small tensors read together)."""
    units = (unit for header in headers for unit in _units(_readers(header)))
    for tensors in _in_flight(units, lambda unit: encoder.plan([_source(t.entry, read, steps) for t, read in unit]),
                              _with_plans):
        yield from tensors


def _in_flight(units: Iterator[list[tuple[_Tensor, T]]], start: Callable[[list[tuple[_Tensor, T]]], object],
               finish: Callable[[list[_Tensor], object], R]) -> Iterator[R]:
    """start(unit) for every unit, in order, with several in flight at once (their source bytes within
    IN_FLIGHT_BYTES, see _may_add); yields finish(the unit's tensors, what start returned) in order."""
    pending: deque[tuple[list[_Tensor], object]] = deque()
    for unit in units:
        tensors = [t for t, _ in unit]
        while pending and not _may_add([u for u, _ in pending], tensors):
            yield finish(*pending.popleft())
        pending.append((tensors, start(unit)))
    while pending:
        yield finish(*pending.popleft())


def _with_plans(unit: list[_Tensor], plans: Future) -> list[_Tensor]:
    for tensor, plan in zip(unit, plans.result()):
        tensor.plan = plan
    return unit


def _source(entry: TensorEntry, read: Callable[[int, int], np.ndarray], steps: int | None) -> TensorSource:
    return TensorSource(entry.dtype, entry.numel, entry.nbytes, read, steps or DEFAULT_STEPS)


def _units(tensors: Iterator[tuple[_Tensor, T]]) -> Iterator[list[tuple[_Tensor, T]]]:
    """Tensors (each with something) in units of work (see TensorEncoder): a tensor of more than
    TASK_BYTES alone, smaller ones of one file in runs of up to TASK_BYTES."""
    unit: list[tuple[_Tensor, T]] = []
    size = 0
    for tensor, other in tensors:
        nbytes = tensor.entry.nbytes
        if unit and (nbytes > TASK_BYTES or size + nbytes > TASK_BYTES or tensor.header is not unit[0][0].header):
            yield unit
            unit, size = [], 0
        unit.append((tensor, other))
        size += nbytes
    if unit:
        yield unit


def _readers(header: SafetensorsHeader) -> Iterator[tuple[_Tensor, Callable[[int, int], np.ndarray]]]:
    """Each tensor of a file with a function that reads its bytes. Runs of small tensors are read at
    once, up to READ_BATCH_BYTES (reading each alone costs a page fault per 4 KiB), by a thread of
    their own one run ahead, so that planning does not wait for the reads; a larger tensor is read
    when it is planned (by chunks if it is too large to hold)."""
    with ThreadPoolExecutor(1, thread_name_prefix="unweight-read") as reader:
        ahead: deque[tuple[list[TensorEntry], Future]] = deque()

        def ready(keep: int) -> Iterator[tuple[_Tensor, Callable[[int, int], np.ndarray]]]:
            while len(ahead) > keep:
                entries, data = ahead.popleft()
                for e, d in zip(entries, data.result()):
                    yield _Tensor(header, e), lambda a, b, d=d: d[a:b]

        for batch in _batches(header):
            if batch[0].nbytes > READ_BATCH_BYTES:
                yield from ready(0)
                tensor = _Tensor(header, batch[0])
                yield tensor, tensor.read
            else:
                ahead.append((batch, reader.submit(read_entries, header, batch)))
                yield from ready(1)
        yield from ready(0)


def _batches(header: SafetensorsHeader) -> Iterator[list[TensorEntry]]:
    """The tensors of a file in runs of up to READ_BATCH_BYTES (a larger tensor alone)."""
    batch: list[TensorEntry] = []
    for entry in header.entries.values():
        if batch and entry.end - batch[0].begin > READ_BATCH_BYTES:
            yield batch
            batch = []
        batch.append(entry)
    if batch:
        yield batch


def _may_add(in_flight: list[list[_Tensor]], unit: list[_Tensor]) -> bool:
    """Whether one more unit may be in flight: their source bytes stay within IN_FLIGHT_BYTES."""
    def nbytes(tensors: list[_Tensor]) -> int:
        return sum(t.entry.nbytes for t in tensors)
    return len(in_flight) < MAX_IN_FLIGHT and sum(map(nbytes, in_flight)) + nbytes(unit) <= IN_FLIGHT_BYTES


def _shard_groups(planned: Iterator[_Tensor], shard_bytes: int) -> Iterator[list[_Tensor]]:
    """Tensors in shards: a shard is closed when the next tensor would overflow it (and it is not
    empty). The source bytes read while planning are kept for coding up to KEEP_BYTES a shard."""
    group: list[_Tensor] = []
    size = kept = 0
    any_shard = False
    for tensor in planned:
        plan = tensor.plan
        if size and size + plan.packed_bytes > shard_bytes:
            yield group
            group, size, kept, any_shard = [], 0, 0, True
        if kept + plan.kept_bytes > KEEP_BYTES:
            plan.data = None  # read again when coded
        kept += plan.kept_bytes
        group.append(tensor)
        size += plan.packed_bytes
    if size or not any_shard:
        yield group


def _write_shard(encoder: TensorEncoder, path: Path, group: list[_Tensor], verify: bool,
                 consumer: Callable[[SafetensorsHeader], Callable[[np.ndarray], None]],
                 ) -> list[tuple[_Tensor, str, dict[str, list[int]]]]:
    """Code the tensors of one shard straight into it; returns each with its SHA-256 and stream spans."""
    sizes = dict.fromkeys(SHARD_ROLES, 0)
    spans = []
    for tensor in group:
        spans.append({role: [sizes[role], sizes[role] + n] for role, n in tensor.plan.sizes.items()})
        for role, n in tensor.plan.sizes.items():
            sizes[role] += n
    writer = U8TensorWriter(path, list(sizes.items()))
    try:
        # units coded several at a time, in file order
        jobs = [(t, TensorJob(t.plan, t.read, _shard_writer(writer, s), t.where)) for t, s in zip(group, spans)]

        def code(unit: list[tuple[_Tensor, TensorJob]]) -> Pending:
            return encoder.code([job for _, job in unit], verify, consumer(unit[0][0].header))

        sha256s = [sha for shas in _in_flight(_units(iter(jobs)), code, lambda _, coded: coded.result())
                   for sha in shas]
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return list(zip(group, sha256s, spans))


def _shard_writer(writer: U8TensorWriter, spans: dict[str, list[int]]) -> Callable[[str, int, np.ndarray], None]:
    """A tensor's `write`: an offset in one of its streams -> the offset in the shard's tensor of that role."""
    return lambda role, offset, data: writer.write(role, spans[role][0] + offset, data)


def _record(entry: TensorEntry, plan: TensorPlan, sha256: str, shard: str, spans: dict[str, list[int]]) -> TensorRecord:
    return TensorRecord(
        name=entry.name, dtype=entry.dtype, shape=list(entry.shape), sha256=sha256,
        encoding=plan.encoding, shard=shard, spans=spans, steps=plan.steps, group=plan.group,
        entropy_bits=round(plan.entropy_bits, 6), code=_code_text(plan.code_lengths))


def _code_text(lengths: np.ndarray | None) -> str:
    """The code as the manifest stores it: huffman.describe, base64."""
    return base64.b64encode(huffman.describe(lengths)).decode() if lengths is not None else ""


def _stats(entry: TensorEntry, plan: TensorPlan) -> TensorStats:
    if plan.encoding == "lanes":
        layout = floats.LAYOUTS[entry.dtype]
        bound = entry.numel * (plan.entropy_bits + 8 * layout.raw_planes) / 8
    else:
        bound = plan.packed_bytes
    return TensorStats(entry.name, entry.dtype, entry.shape, entry.nbytes, plan.packed_bytes, plan.entropy_bits,
                       bound)
