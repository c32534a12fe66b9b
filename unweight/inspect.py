"""`inspect`: per-tensor and total sizes, exponent entropy and achieved bits a weight, from the manifest."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .codec import floats
from .format.manifest import load_manifest


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    original_bytes: int
    packed_bytes: int
    entropy_bits: float       # exponent-symbol entropy (coded floats only)
    bits_per_weight: float    # achieved
    bound_bits_per_weight: float


@dataclass(frozen=True)
class Inspection:
    tensors: list[TensorInfo]
    original_bytes: int       # tensor data bytes
    packed_bytes: int         # stream bytes

    @property
    def ratio(self) -> float:
        return self.packed_bytes / max(1, self.original_bytes)

    def to_dict(self) -> dict:
        return {"original_bytes": self.original_bytes, "packed_bytes": self.packed_bytes, "ratio": self.ratio,
                "tensors": [asdict(t) for t in self.tensors]}


def inspect(packed: str | Path) -> Inspection:
    manifest = load_manifest(Path(packed))
    rows = [_info(t) for t in manifest.tensors.values()]
    return Inspection(rows, sum(r.original_bytes for r in rows), sum(r.packed_bytes for r in rows))


def _info(t) -> TensorInfo:
    numel = max(1, math.prod(t.shape))
    layout = floats.LAYOUTS.get(t.dtype)
    coded = t.encoding == "lanes" and layout is not None
    bound = t.entropy_bits + 8 * layout.raw_planes if coded else 8 * t.packed_bytes / numel
    return TensorInfo(t.name, t.dtype, tuple(t.shape), t.encoding, t.original_bytes, t.packed_bytes,
                      t.entropy_bits, 8 * t.packed_bytes / numel, bound)
