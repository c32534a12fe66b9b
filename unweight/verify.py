"""`verify`: decode every tensor of a packed directory and check it against its SHA-256
(and, optionally, bit for bit against the source checkpoint)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UnweightError, VerificationError
from .reader import PackedReader, PlainReader


@dataclass
class VerifyReport:
    checked: int = 0
    mismatches: list[str] = field(default_factory=list)   # one line each: tensor, file, what differs


def verify(packed: str | Path, against: str | Path | None = None, *, device: str | None = None,
           backend: str | None = None, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every tensor; raises VerificationError naming the first mismatch (and how many)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # the GPU decoder when there is one
    reader = PackedReader(Path(packed))
    source = PlainReader(Path(against)) if against is not None else None
    report = VerifyReport()
    if source is not None:
        _compare_names(reader, source, report)
    for name in reader.names_by_shard():
        rec = reader.record(name)
        source_file = reader.source_file(name)
        try:
            tensor = reader.get_tensor(name, device=device, backend=backend).cpu()
        except UnweightError as e:
            report.mismatches.append(f"{name} ({source_file}): {e}")
            continue
        data = tensor.contiguous().view(torch.uint8).numpy()
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            report.mismatches.append(f"{name} ({source_file}): decoded bytes do not match the recorded SHA-256")
        elif source is not None and name in source.keys():
            original = source.get_tensor(name).contiguous().view(torch.uint8).numpy()
            if original.tobytes() != data.tobytes():
                report.mismatches.append(f"{name} ({source_file}): differs from the source tensor")
        report.checked += 1
        if progress:
            progress(rec.original_bytes)
    if report.mismatches:
        more = f" (and {len(report.mismatches) - 1} more)" if len(report.mismatches) > 1 else ""
        raise VerificationError(f"{packed}: tensor {report.mismatches[0]}{more}")
    return report


def _compare_names(reader: PackedReader, source: PlainReader, report: VerifyReport) -> None:
    packed_names, source_names = set(reader.keys()), set(source.keys())
    for name in sorted(source_names - packed_names):
        report.mismatches.append(f"{name}: in the source but not in the packed checkpoint")
    for name in sorted(packed_names - source_names):
        report.mismatches.append(f"{name}: in the packed checkpoint but not in the source")
