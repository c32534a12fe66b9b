"""`decompress`: rebuild the original checkpoint files, byte-identical, from a packed directory."""

from __future__ import annotations

import hashlib
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import CorruptDataError
from .format.output_dir import atomic_directory
from .reader import PackedReader


def decompress(packed: str | Path, out: str | Path, *, force: bool = False, backend: str | None = None,
               progress: Callable[[int], None] | None = None) -> list[Path]:
    """Write every source file back under OUT; returns the weight files written."""
    reader = PackedReader(Path(packed))
    out = Path(out).expanduser().absolute()
    with atomic_directory(out, force) as tmp:
        written = [_rebuild_file(reader, f, tmp, backend, progress or (lambda n: None))
                   for f in reader.manifest.files]
        for rel in reader.manifest.copied:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(reader.root / rel, tmp / rel)
    return [out / p.relative_to(tmp) for p in written]


def _rebuild_file(reader: PackedReader, source_file, tmp: Path, backend, progress) -> Path:
    path = tmp / source_file.name
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    header = source_file.header_bytes
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(header)), header):
            f.write(chunk)
            digest.update(chunk)
        for name in source_file.tensors:
            data = reader.get_tensor(name, backend=backend).contiguous().view(torch.uint8).numpy()
            f.write(memoryview(data))
            digest.update(data)
            progress(data.size)
    if digest.hexdigest() != source_file.sha256:
        raise CorruptDataError(f"{reader.root}: rebuilt {source_file.name} does not match the recorded SHA-256 "
                               f"of the original file")
    return path
