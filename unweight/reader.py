"""Read tensors from a packed directory or a plain safetensors checkpoint, one shard at a time.

`open(path)` mirrors safetensors' `safe_open`: a context manager with `keys()` and
`get_tensor(name, device=...)`; packed checkpoints also give `get_packed(name)`.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import torch

from .codec import floats, huffman, lanes
from .errors import CorruptDataError, SourceError
from .format.manifest import MANIFEST_NAME, Manifest, TensorRecord, load_manifest
from .format.safetensors_file import DTYPE_SIZES, SafetensorsHeader, read_header, read_range
from .packed import PackedTensor, tensor_from_bytes
from .sources import resolve_source


class PackedReader:
    """Tensors of a packed directory; shard headers are parsed once, streams read on demand."""

    is_packed = True

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest: Manifest = load_manifest(self.root)
        self._headers: dict[str, SafetensorsHeader] = {}
        self._files = {t: f.name for f in self.manifest.files for t in f.tensors}

    def keys(self) -> list[str]:
        return list(self.manifest.tensors)

    def source_file(self, name: str) -> str:
        """The original file a tensor came from."""
        return self._files.get(name, "?")

    def record(self, name: str) -> TensorRecord:
        try:
            return self.manifest.tensors[name]
        except KeyError:
            raise KeyError(f"{self.root}: no tensor named {name!r}") from None

    def get_packed(self, name: str) -> PackedTensor:
        rec = self.record(name)
        header = self._shard(rec.shard)
        where = f"{header.path}: tensor {name!r}"
        streams = {}
        for role, (begin, end) in rec.spans.items():
            entry = header.entries.get(role)
            if entry is None or entry.dtype != "U8" or end > entry.nbytes:
                raise CorruptDataError(f"{where}: its {role} stream [{begin}, {end}) is missing from the shard")
            streams[role] = torch.from_numpy(read_range(header, entry, begin, end))
        lengths = _code_lengths(rec, where) if rec.encoding == "lanes" else None
        packed = PackedTensor(name, rec.dtype, tuple(rec.shape), rec.encoding, streams, rec.steps, lengths,
                              group=rec.group)
        _check_streams(packed, where)
        return packed

    def get_tensor(self, name: str, device="cpu", backend: str | None = None) -> torch.Tensor:
        packed = self.get_packed(name)
        if torch.device(device).type == "cuda":
            packed = packed.to(device)
        return packed.decode(device=device, backend=backend)

    def names_by_shard(self) -> list[str]:
        """Tensor names ordered so that each shard is read once, in order."""
        order = {s: i for i, s in enumerate(self.manifest.shards)}
        return sorted(self.keys(), key=lambda n: order.get(self.manifest.tensors[n].shard, 0))

    def _shard(self, shard: str) -> SafetensorsHeader:
        if shard not in self._headers:
            path = self.root / shard
            if not path.is_file():
                raise CorruptDataError(f"{self.root}: shard {shard} is missing")
            self._headers[shard] = read_header(path)
        return self._headers[shard]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._headers.clear()
        return False


class PlainReader:
    """Tensors of an ordinary safetensors checkpoint (directory, sharded or not, or one file)."""

    is_packed = False

    def __init__(self, path: Path):
        source = resolve_source(path)
        self.root = source.root
        self._where: dict[str, SafetensorsHeader] = {}
        for rel in source.weight_files:
            header = read_header(source.root / rel)
            for name in header.entries:
                self._where[name] = header

    def keys(self) -> list[str]:
        return list(self._where)

    def get_packed(self, name: str) -> PackedTensor:
        raise SourceError(f"{self.root}: not a packed checkpoint; compress it with `unweight compress` first")

    def get_tensor(self, name: str, device="cpu", backend: str | None = None) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"{self.root}: no tensor named {name!r}")
        header = self._where[name]
        entry = header.entries[name]
        return tensor_from_bytes(read_range(header, entry), entry.dtype, entry.shape).to(device)

    def names_by_shard(self) -> list[str]:
        return self.keys()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def open(path: str | Path) -> PackedReader | PlainReader:  # noqa: A001 - mirrors safetensors.safe_open
    """Open a packed directory (has unweight.json) or a plain safetensors checkpoint."""
    p = Path(path).expanduser()
    if (p / MANIFEST_NAME).is_file():
        return PackedReader(p)
    return PlainReader(p)


def load(path: str | Path, device="cpu", backend: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, decoded, on `device`."""
    with open(path) as f:
        return {name: f.get_tensor(name, device=device, backend=backend) for name in f.names_by_shard()}


def _code_lengths(rec: TensorRecord, where: str) -> np.ndarray:
    """The code lengths of every symbol value from the manifest's description of the code."""
    if not isinstance(rec.code, str):
        raise CorruptDataError(f"{where}: its code is not a string")
    try:
        data = base64.b64decode(rec.code, validate=True)
    except ValueError as e:
        raise CorruptDataError(f"{where}: its code is not base64 ({e})") from e
    return huffman.lengths_from_description(data, where)


def _check_streams(p: PackedTensor, where: str) -> None:
    """Sizes and offsets from the file are checked before any decoder trusts them."""
    width = DTYPE_SIZES[p.dtype]
    if p.encoding == "raw" and p.streams["data"].numel() != p.numel * width:
        raise CorruptDataError(f"{where}: holds {p.streams['data'].numel()} bytes, expected {p.numel * width}")
    if p.encoding != "lanes":
        return
    if p.dtype not in floats.LAYOUTS or not 1 <= p.steps <= lanes.MAX_STEPS:
        raise CorruptDataError(f"{where}: invalid coded dtype {p.dtype} or steps {p.steps}")
    if p.group not in lanes.GROUPS or p.steps % p.group:
        raise CorruptDataError(f"{where}: invalid group {p.group!r} (one of {lanes.GROUPS}, dividing steps {p.steps})")
    huffman.check_lengths(p.code_lengths, where)
    raw, words, index = p.streams["raw"], p.streams["words"], p.streams["index"]
    num_blocks = lanes.num_blocks(p.numel, p.steps)
    if raw.numel() != p.numel * floats.LAYOUTS[p.dtype].raw_planes:
        raise CorruptDataError(f"{where}: raw plane holds {raw.numel()} bytes, expected "
                               f"{p.numel * floats.LAYOUTS[p.dtype].raw_planes}")
    if index.numel() != 8 * (num_blocks + 1) or words.numel() % 2:
        raise CorruptDataError(f"{where}: block index or word stream has the wrong size")
    offsets = index.numpy().view(np.int64)
    if offsets[0] != 0 or offsets[-1] != words.numel() // 2 or np.any(np.diff(offsets) < 0):
        raise CorruptDataError(f"{where}: block index is not a monotone cover of the word stream")
