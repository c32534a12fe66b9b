"""Encode one tensor into its streams, chunk by chunk, checking each chunk decodes back.

A coded float tensor has three streams: `words` (uint16 lane words, as bytes),
`index` (int64 word offset of each block, as bytes) and `raw` (the raw planes).
Other dtypes become one `data` stream, zstd-compressed when that helps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import zstandard

from ..errors import VerificationError
from . import floats, huffman, lanes

DEFAULT_STEPS = 1024       # symbols a lane decodes per block: 32 * 1024 weights a block
CHUNK_BLOCKS = 512         # blocks encoded at once (16M weights): bounds memory on huge tensors
ZSTD_LEVEL = 3


@dataclass
class EncodedTensor:
    encoding: str
    streams: dict[str, np.ndarray]  # role -> uint8 array
    sha256: str
    steps: int = 0
    code_lengths: np.ndarray | None = None
    entropy_bits: float = 0.0

    @property
    def packed_bytes(self) -> int:
        return sum(a.size for a in self.streams.values())


ReadRange = Callable[[int, int], np.ndarray]  # (byte start, byte stop) -> uint8 array


def encode_float(dtype: str, numel: int, read: ReadRange, steps: int = DEFAULT_STEPS,
                 where: str = "tensor", verify: bool = True, on_bytes: Callable[[int], None] = lambda n: None) -> EncodedTensor:
    """Encode a bf16/fp16/fp32 tensor read through `read`, verifying every chunk."""
    layout = floats.LAYOUTS[dtype]
    hist = np.zeros(huffman.NUM_SYMBOLS, dtype=np.int64)
    for start, stop in _chunks(numel, steps):
        sym, _ = floats.split(layout, read(start * layout.width, stop * layout.width))
        hist += huffman.histogram(sym)
    lengths = huffman.code_lengths(hist)
    codes = huffman.canonical_codes(lengths)
    table = huffman.decode_table(lengths)
    digest = hashlib.sha256()
    words, indices, raws = [], [], []
    word_base = 0
    for start, stop in _chunks(numel, steps):
        data = read(start * layout.width, stop * layout.width)
        digest.update(data)
        sym, raw = floats.split(layout, data)
        w, index = lanes.encode(sym, codes, lengths, steps)
        if verify:
            _check_chunk(layout, w, index, table, steps, sym, raw, data, where, start)
        words.append(w)
        indices.append(index[:-1] + word_base)
        word_base += w.size
        raws.append(raw.reshape(layout.raw_planes, -1))
        on_bytes(data.size)
    indices.append(np.array([word_base], dtype=np.int64))
    raw_planes = np.concatenate(raws, axis=1) if raws else np.zeros((layout.raw_planes, 0), np.uint8)
    streams = {
        "words": np.concatenate(words).view(np.uint8) if words else np.zeros(0, np.uint8),
        "index": np.concatenate(indices).view(np.uint8),
        "raw": raw_planes.reshape(-1),
    }
    return EncodedTensor("lanes", streams, digest.hexdigest(), steps, lengths, huffman.entropy_bits(hist))


def _chunks(numel: int, steps: int) -> Iterator[tuple[int, int]]:
    step = CHUNK_BLOCKS * lanes.LANES * steps
    for start in range(0, numel, step):
        yield start, min(numel, start + step)


def _check_chunk(layout, words, index, table, steps, sym, raw, data, where, start) -> None:
    decoded = lanes.decode(words, index, table, steps, sym.size, where=where)
    back = floats.merge(layout, decoded, raw, sym.size)
    if not np.array_equal(back, data):
        first = int(np.flatnonzero(back != data)[0]) // layout.width
        raise VerificationError(f"{where}: weight {start + first} does not decode back to its original bits")


def encode_other(data: np.ndarray) -> EncodedTensor:
    """Store a non-float tensor losslessly: zstd when it saves bytes, else as is."""
    digest = hashlib.sha256(data).hexdigest()
    packed = np.frombuffer(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data), dtype=np.uint8)
    if packed.size < data.size:
        return EncodedTensor("zstd", {"data": packed}, digest)
    return EncodedTensor("raw", {"data": data}, digest)
