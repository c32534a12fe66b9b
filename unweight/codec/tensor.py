"""Encode one tensor into its streams, chunk by chunk, checking each chunk decodes back.

A coded float tensor has three streams: `words` (uint16 lane words, as bytes),
`index` (int64 word offset of each block, as bytes) and `raw` (the raw planes).
Other dtypes become one `data` stream, zstd-compressed when that helps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard

from . import floats, huffman, lanes

DEFAULT_STEPS = 1024       # symbols a lane decodes per block: 32 * 1024 weights a block
LARGE_TENSOR = 1 << 25     # from 32M weights on, blocks are halved (steps 512)


def choose_steps(numel: int) -> int:
    """Steps a block for a tensor: the trade-off between size and GPU decode speed.

    Each lane wastes ~17 bits (its last, partly used words), so longer lanes pack tighter
    (steps 1024: +0.1% of bf16, 512: +0.2%); but a lane is decoded serially, so the GPU
    decoder's parallelism is numel / steps lanes. On an H200 a 67M-weight tensor decodes
    1.75x faster at steps 512 than at 1024 (BENCHMARKS.md), while small tensors are decoded
    together, a layer at a time, so they keep the tighter packing.
    """
    return DEFAULT_STEPS // 2 if numel >= LARGE_TENSOR else DEFAULT_STEPS
CHUNK_BLOCKS = 512         # blocks encoded at once (16M weights): bounds memory on huge tensors
MAX_CACHED_BYTES = 512 * 1024 * 1024  # tensors up to this size are read once; larger ones twice, by chunk
_hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unweight-sha256")  # one: keeps chunk order
ZSTD_LEVEL = 3


@dataclass
class EncodedTensor:
    encoding: str
    parts: dict[str, list[np.ndarray]]  # role -> uint8 pieces, in stream order (written back to back)
    sha256: str
    steps: int = 0
    code_lengths: np.ndarray | None = None
    entropy_bits: float = 0.0

    @property
    def packed_bytes(self) -> int:
        return sum(a.size for pieces in self.parts.values() for a in pieces)

    @property
    def streams(self) -> dict[str, np.ndarray]:
        """Each stream as one contiguous array (a copy when it has several pieces)."""
        return {role: pieces[0] if len(pieces) == 1 else np.concatenate(pieces) for role, pieces in self.parts.items()}


ReadRange = Callable[[int, int], np.ndarray]  # (byte start, byte stop) -> uint8 array
Consume = Callable[[np.ndarray], None]         # sees every byte of the tensor once, in order


def encode_float(dtype: str, numel: int, read: ReadRange, steps: int = DEFAULT_STEPS,
                 where: str = "tensor", verify: bool = True, consume: Consume = lambda data: None) -> EncodedTensor:
    """Encode a bf16/fp16/fp32 tensor read through `read`, verifying every chunk decodes back.

    Two passes (symbol histogram, then encode), reading each chunk twice only when the
    tensor is larger than one chunk, so memory stays bounded on huge tensors.
    """
    layout = floats.LAYOUTS[dtype]
    chunks = list(_chunks(numel, steps))
    cached = read(0, numel * layout.width) if numel * layout.width <= MAX_CACHED_BYTES else None

    def chunk_bytes(start: int, stop: int) -> np.ndarray:
        if cached is not None:
            return cached[start * layout.width : stop * layout.width]
        return read(start * layout.width, stop * layout.width)

    hist = np.zeros(huffman.NUM_SYMBOLS, dtype=np.int64)
    for start, stop in chunks:
        hist += floats.symbol_histogram(layout, chunk_bytes(start, stop))
    lengths = huffman.code_lengths(hist)
    codes = huffman.canonical_codes(lengths)
    table = huffman.decode_table(lengths) if verify else None
    digest = hashlib.sha256()
    words, indices, raws = [], [], []
    word_base = 0
    for start, stop in chunks:
        data = chunk_bytes(start, stop)
        hashed = _hasher.submit(_hash_chunk, digest, data, consume)  # overlaps the numba work below
        sym, raw = floats.split(layout, data)
        w, index = lanes.encode(sym, codes, lengths, steps)
        if verify:
            _check_chunk(layout, w, index, table, steps, raw, data, where, start)
        hashed.result()
        words.append(w)
        indices.append(index[:-1] + word_base)
        word_base += w.size
        raws.append(raw.reshape(layout.raw_planes, -1))
    indices.append(np.array([word_base], dtype=np.int64))
    parts = {
        "words": [w.view(np.uint8) for w in words],
        "index": [np.concatenate(indices).view(np.uint8)],
        # raw planes are stored plane after plane over the whole tensor: [planes, numel]
        "raw": [r[plane] for plane in range(layout.raw_planes) for r in raws],
    }
    return EncodedTensor("lanes", parts, digest.hexdigest(), steps, lengths, huffman.entropy_bits(hist))


def _hash_chunk(digest, data: np.ndarray, consume: Consume) -> None:
    """The tensor's SHA-256, then `consume` (the file's SHA-256, progress), in the hashing thread:
    hashlib releases the GIL, so hashing runs beside the numba kernels; one worker keeps chunks in order."""
    digest.update(data)
    consume(data)


def _chunks(numel: int, steps: int) -> Iterator[tuple[int, int]]:
    step = CHUNK_BLOCKS * lanes.LANES * steps
    for start in range(0, numel, step):
        yield start, min(numel, start + step)


def _check_chunk(layout, words, index, table, steps, raw, data, where, start) -> None:
    """Decode the chunk just encoded and compare it, in the decoder, bit for bit with its source."""
    expected = data.view(np.uint16 if layout.width == 2 else np.uint32)
    lanes.decode_into(words, index, table, raw, expected.size, steps, expected, where=f"{where} (chunk from "
                      f"weight {start})", check=True)


def encode_other(data: np.ndarray) -> EncodedTensor:
    """Store a non-float tensor losslessly: zstd when it saves bytes, else as is."""
    digest = hashlib.sha256(data).hexdigest()
    packed = np.frombuffer(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data), dtype=np.uint8)
    if packed.size < data.size:
        return EncodedTensor("zstd", {"data": [packed]}, digest)
    return EncodedTensor("raw", {"data": [data]}, digest)
