"""Bit layouts of the float dtypes we code: which bits form the symbol, which stay raw.

The coder's symbols are pairs: the symbol fields of two neighbouring weights (pair_symbols).

    bf16  s eeeeeeee mmmmmmm          field = bits 7..14 (the exponent)
    fp16  s eeeee mmmmmmmmmm          field = bits 7..14 (exponent + top 3 mantissa bits)
          raw plane 0 = s << 7 | bits 0..6           (one byte a weight for both)
    fp32  s eeeeeeee m(23)            field = bits 23..30 (the exponent)
          raw planes 0, 1 = bits 0..7, 8..15; plane 2 = s << 7 | bits 16..22

For fp16 the field takes three mantissa bits along so that every weight keeps
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
    symbol_shift: int   # a weight's symbol field = (bits >> symbol_shift) & 0xFF
    raw_planes: int     # raw bytes a weight


LAYOUTS = {
    "BF16": FloatLayout("BF16", 2, 7, 1),
    "F16": FloatLayout("F16", 2, 7, 1),
    "F32": FloatLayout("F32", 4, 23, 3),
}


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


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_at(bits, shift, k, last):
    """Symbol k of the weights' bits (see pair_symbols); `last` = the index of the last weight."""
    i = np.uint64(2 * k)
    j = min(i + np.uint64(1), last)  # an odd count: the last weight pairs with itself
    return ((bits[i] >> shift) & 0xFF) | (((bits[j] >> shift) & 0xFF) << 8)


@numba.njit(cache=True, nogil=True)
def _pair_symbols(bits, shift, sym):
    last = np.uint64(bits.size) - np.uint64(1)
    for k in range(sym.size):
        sym[k] = _pair_at(bits, shift, k, last)


def pair_symbols(layout: FloatLayout, data: np.ndarray) -> np.ndarray:
    """The symbols of n weights' raw bytes: uint16[ceil(n / 2)], symbol k = the symbol field of weight
    2k | that of weight 2k + 1 << 8 (an odd count pairs the last weight with itself)."""
    bits = data.view(np.uint16 if layout.width == 2 else np.uint32)
    sym = np.empty((bits.size + 1) // 2, dtype=np.uint16)
    _pair_symbols(bits, np.uint32(layout.symbol_shift), sym)
    return sym


@numba.njit(cache=True, nogil=True)
def _symbol_counts(bits, shift, counts):
    last = np.uint64(bits.size) - np.uint64(1)
    for k in range((bits.size + 1) // 2):
        counts[np.uint64(_pair_at(bits, shift, k, last))] += 1


def symbol_histogram(layout: FloatLayout, data: np.ndarray) -> np.ndarray:
    """Counts of each pair symbol (int64[65536], see pair_symbols) straight from raw bytes, on the
    calling thread (the encoder runs one per worker thread)."""
    bits = data.view(np.uint16 if layout.width == 2 else np.uint32)
    counts = np.zeros(1 << 16, dtype=np.int64)
    if bits.size:
        _symbol_counts(bits, np.uint32(layout.symbol_shift), counts)
    return counts
