"""Bit layouts of the float dtypes we code: which bits form the symbol, which stay raw.

    bf16  s eeeeeeee mmmmmmm          symbol = bits 7..14 (the exponent)
    fp16  s eeeee mmmmmmmmmm          symbol = bits 7..14 (exponent + top 3 mantissa bits)
          raw plane 0 = s << 7 | bits 0..6           (one byte a weight for both)
    fp32  s eeeeeeee m(23)            symbol = bits 23..30 (the exponent)
          raw planes 0, 1 = bits 0..7, 8..15; plane 2 = s << 7 | bits 16..22

For fp16 the symbol takes three mantissa bits along so that every weight keeps
exactly one raw byte; those bits are near-uniform and cost ~3 bits either way.
Raw planes are stored one after another ([planes, n]) so that lanes reading
neighbouring weights read neighbouring bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class FloatLayout:
    dtype: str          # safetensors dtype name
    width: int          # bytes a weight
    symbol_shift: int   # symbol = (bits >> symbol_shift) & 0xFF
    raw_planes: int     # raw bytes a weight


LAYOUTS = {
    "BF16": FloatLayout("BF16", 2, 7, 1),
    "F16": FloatLayout("F16", 2, 7, 1),
    "F32": FloatLayout("F32", 4, 23, 3),
}


@numba.njit(cache=True, nogil=True, inline="always")
def _split16_at(bits, sym, raw, i):
    v = bits[i]
    sym[i] = (v >> 7) & 0xFF
    raw[i] = ((v >> 8) & 0x80) | (v & 0x7F)


@numba.njit(cache=True, nogil=True, parallel=True)
def _split16(bits, sym, raw):
    for i in numba.prange(bits.size):
        _split16_at(bits, sym, raw, i)


# small tensors split on the calling thread: waking the thread pool costs more than it saves. (A
# loop of its own, not _split16 compiled again: numba's disk cache keys compiled code by function
# name, so the two compilations would share one entry.)
@numba.njit(cache=True, nogil=True)
def _split16_serial(bits, sym, raw):
    for i in range(bits.size):
        _split16_at(bits, sym, raw, i)


PARALLEL_MIN = 1 << 16  # weights


@numba.njit(cache=True, nogil=True, parallel=True)
def _split32(bits, sym, raw):
    n = bits.size
    for i in numba.prange(n):
        v = bits[i]
        sym[i] = (v >> 23) & 0xFF
        raw[i] = v & 0xFF
        raw[n + i] = (v >> 8) & 0xFF
        raw[2 * n + i] = ((v >> 24) & 0x80) | ((v >> 16) & 0x7F)


@numba.njit(cache=True, nogil=True, parallel=True)
def _merge16(sym, raw, bits):
    for i in numba.prange(bits.size):
        r = np.uint16(raw[i])
        bits[i] = ((r & 0x80) << 8) | (np.uint16(sym[i]) << 7) | (r & 0x7F)


@numba.njit(cache=True, nogil=True, parallel=True)
def _merge32(sym, raw, n_total, offset, bits):
    """Merge weights [offset, offset + bits.size) of a tensor of n_total weights."""
    for k in numba.prange(bits.size):
        i = offset + k
        hi = np.uint32(raw[2 * n_total + i])
        bits[k] = (((hi & 0x80) << 24) | (np.uint32(sym[k]) << 23) | ((hi & 0x7F) << 16)
                   | (np.uint32(raw[n_total + i]) << 8) | np.uint32(raw[i]))


def split(layout: FloatLayout, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw little-endian bytes of n weights -> (symbols uint8[n], raw uint8[planes * n])."""
    bits = data.view(np.uint16 if layout.width == 2 else np.uint32)
    sym = np.empty(bits.size, dtype=np.uint8)
    raw = np.empty(bits.size * layout.raw_planes, dtype=np.uint8)
    if layout.width == 2:
        (_split16 if bits.size >= PARALLEL_MIN else _split16_serial)(bits, sym, raw)
    else:
        _split32(bits, sym, raw)
    return sym, raw


def merge(layout: FloatLayout, sym: np.ndarray, raw: np.ndarray, n_total: int, offset: int = 0) -> np.ndarray:
    """Inverse of split for weights [offset, offset + sym.size): returns their raw bytes."""
    if layout.width == 2:
        bits = np.empty(sym.size, dtype=np.uint16)
        _merge16(sym, raw[offset : offset + sym.size], bits)
    else:
        bits = np.empty(sym.size, dtype=np.uint32)
        _merge32(sym, raw, n_total, offset, bits)
    return bits.view(np.uint8)


@numba.njit(cache=True, nogil=True)
def _raw_planes(bits, raw):
    n = np.uint64(bits.size)
    for k in range(bits.size):
        i = np.uint64(k)  # unsigned indices: numba adds negative-index wraparound code to signed ones
        v = bits[i]
        if bits.itemsize == 2:
            raw[i] = ((v >> 8) & 0x80) | (v & 0x7F)
        else:
            raw[i] = v & 0xFF
            raw[n + i] = (v >> 8) & 0xFF
            raw[np.uint64(2) * n + i] = ((v >> 24) & 0x80) | ((v >> 16) & 0x7F)


def raw_planes(layout: FloatLayout, data: np.ndarray) -> np.ndarray:
    """The half of `split` that the encoder needs (it reads the symbols from the bits itself):
    raw uint8[planes * n], on the calling thread."""
    bits = data.view(np.uint16 if layout.width == 2 else np.uint32)
    raw = np.empty(bits.size * layout.raw_planes, dtype=np.uint8)
    _raw_planes(bits, raw)
    return raw


@numba.njit(cache=True, nogil=True)
def _symbol_counts(bits, shift, counts):
    """Symbol counts into 4 copies of the histogram in turn (counts[copy, symbol]): a run of equal
    symbols then adds to different counters instead of waiting on one."""
    for k in range(bits.size):
        i = np.uint64(k)
        counts[i & np.uint64(3), np.uint64((bits[i] >> shift) & 0xFF)] += 1


def symbol_histogram(layout: FloatLayout, data: np.ndarray) -> np.ndarray:
    """Counts of each symbol value (int64[256]) straight from raw bytes, without splitting them, on
    the calling thread (the encoder runs one per worker thread)."""
    bits = data.view(np.uint16 if layout.width == 2 else np.uint32)
    counts = np.zeros((4, 256), dtype=np.int64)
    _symbol_counts(bits, layout.symbol_shift, counts)
    return counts.sum(axis=0)
