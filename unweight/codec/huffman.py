"""Length-limited prefix codes for exponent symbols: lengths, canonical codes, decode table.

Code lengths come from package-merge (optimal under a maximum length); codes are
canonical so that a code is fully described by its 256 lengths, which is what the
manifest stores.
"""

from __future__ import annotations

import numba
import numpy as np

from ..errors import CorruptDataError

NUM_SYMBOLS = 256
MAX_CODE_LEN = 12  # the decode table has 2**MAX_CODE_LEN entries (8 KiB as int16)
TABLE_SIZE = 1 << MAX_CODE_LEN
PREFIX_BITS = 6                       # the GPU table's first level: codes up to 6 bits
PREFIX_ENTRIES = 1 << PREFIX_BITS     # 64 int16 entries = one 128-byte cache line


@numba.njit(cache=True, nogil=True, parallel=True)
def _histogram(sym, num_chunks):
    partial = np.zeros((num_chunks, NUM_SYMBOLS), dtype=np.int64)
    chunk = -(-sym.size // num_chunks)
    for c in numba.prange(num_chunks):
        for i in range(c * chunk, min(sym.size, (c + 1) * chunk)):
            partial[c, sym[i]] += 1
    return partial.sum(axis=0)


def histogram(sym: np.ndarray) -> np.ndarray:
    """Counts of each symbol value (int64[256])."""
    return _histogram(sym, max(1, min(64, sym.size // (1 << 16))))


def entropy_bits(histogram: np.ndarray) -> float:
    """Shannon entropy of a histogram, in bits per symbol."""
    counts = histogram[histogram > 0].astype(np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def code_lengths(histogram: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal code lengths (uint8[256]) with no length above `max_len` (package-merge)."""
    used = np.flatnonzero(histogram)
    lengths = np.zeros(NUM_SYMBOLS, dtype=np.uint8)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1  # a code needs one bit even when only one symbol occurs
        return lengths
    weights = sorted((int(histogram[s]), (int(s),)) for s in used)
    merged: list = []
    for _ in range(max_len):
        # each item is (weight, symbols it covers); a symbol's length is how often it is picked
        packages = [(merged[i][0] + merged[i + 1][0], merged[i][1] + merged[i + 1][1])
                    for i in range(0, len(merged) - 1, 2)]
        merged = sorted(weights + packages, key=lambda item: item[0])
    for _, symbols in merged[: 2 * (used.size - 1)]:
        for s in symbols:
            lengths[s] += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (uint16[256]) for the given lengths, MSB-first."""
    codes = np.zeros(NUM_SYMBOLS, dtype=np.uint16)
    code = 0
    prev_len = 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev_len
        prev_len = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def check_lengths(lengths: np.ndarray, where: str) -> None:
    """Refuse code lengths that cannot come from a valid prefix code."""
    if lengths.shape != (NUM_SYMBOLS,) or int(lengths.max(initial=0)) > MAX_CODE_LEN:
        raise CorruptDataError(f"{where}: code lengths must be 256 values of at most {MAX_CODE_LEN}")
    kraft = sum(1 << (MAX_CODE_LEN - int(n)) for n in lengths if n)
    if kraft > TABLE_SIZE:
        raise CorruptDataError(f"{where}: code lengths over-subscribe the code space (Kraft sum > 1)")


def decode_table(lengths: np.ndarray) -> np.ndarray:
    """Lookup table int16[4096]: entry = symbol | length << 8, indexed by the next 12 bits.

    Entries no code reaches (only possible with a single symbol) decode as that
    symbol, so a peek at padding bits never leaves the table.
    """
    codes = canonical_codes(lengths)
    table = np.zeros(TABLE_SIZE, dtype=np.int16)
    fill = 0
    for s in np.flatnonzero(lengths):
        n = int(lengths[s])
        start = int(codes[s]) << (MAX_CODE_LEN - n)
        table[start : start + (1 << (MAX_CODE_LEN - n))] = s | (n << 8)
        fill = s | (n << 8)
    if np.flatnonzero(lengths).size == 1:
        table[:] = fill
    return table


def gpu_decode_table(lengths: np.ndarray) -> np.ndarray:
    """The decode table followed by its first level: int16[4096 + 64].

    Entry 4096 + p is the full table's entry for the 6-bit prefix p (followed by zeros).
    When its length is at most 6 it decodes every peek that starts with p; otherwise the
    decoder looks the full 12 bits up. The first level fits one cache line, so a warp's
    lookups touch one line instead of ~25 of the 8 KiB table.
    """
    table = decode_table(lengths)
    return np.concatenate([table, table[:: TABLE_SIZE // PREFIX_ENTRIES]])
