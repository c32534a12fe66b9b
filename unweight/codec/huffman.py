"""Length-limited prefix codes for exponent-pair symbols: lengths, canonical codes, decode table.

A symbol is the exponent fields of two neighbouring weights (floats.py), so the alphabet has
65536 values of which a trained tensor uses a few hundred; a code for pairs is shorter than one
for single exponents (it captures their joint distribution) and its decoder yields two weights
a lookup. Code lengths come from package-merge (optimal under a maximum length); codes are
canonical so that a code is fully described by the lengths of its symbols, which is what the
manifest stores.
"""

from __future__ import annotations

import numpy as np
import zstandard

from ..errors import CorruptDataError

SYMBOL_BITS = 16
NUM_SYMBOLS = 1 << SYMBOL_BITS
MAX_CODE_LEN = 13  # the decode table has 2**MAX_CODE_LEN entries (32 KiB as uint32: in shared memory, it
                   # leaves room for the GPU decoder's word rings within a block's 48 KiB of static shared memory)
TABLE_SIZE = 1 << MAX_CODE_LEN


class TooManySymbolsError(ValueError):
    """A histogram uses more symbols than a code of MAX_CODE_LEN bits can hold."""


def entropy_bits(histogram: np.ndarray) -> float:
    """Shannon entropy of a histogram, in bits per symbol."""
    counts = histogram[histogram > 0].astype(np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def code_lengths(histogram: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal code lengths (uint8[NUM_SYMBOLS]) with no length above `max_len` (package-merge).

    Each level's list is the leaves and the previous level's packages (neighbouring pairs),
    sorted by weight; the 2n - 2 cheapest items of the last level are chosen, and an item chosen
    at a level chooses the two it packages one level down. A leaf's length is the number of levels
    at which it is chosen. Since the leaves keep their order in every list, only how many leaves
    and packages each level's chosen prefix holds needs tracking.
    """
    used = np.flatnonzero(histogram)
    lengths = np.zeros(NUM_SYMBOLS, dtype=np.uint8)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1  # a code needs one bit even when only one symbol occurs
        return lengths
    if used.size > 1 << max_len:
        raise TooManySymbolsError(f"{used.size} distinct symbols do not fit a code of at most {max_len} bits")
    order = np.argsort(histogram[used], kind="stable")
    leaves = histogram[used][order].astype(np.int64)
    is_leaf_levels = []
    items = leaves
    is_leaf_levels.append(np.ones(leaves.size, dtype=bool))
    for _ in range(max_len - 1):
        packages = items[0 : items.size // 2 * 2 : 2] + items[1 : items.size // 2 * 2 : 2]
        merged = np.concatenate([leaves, packages])
        by_weight = np.argsort(merged, kind="stable")     # ties: leaves first
        items = merged[by_weight]
        is_leaf_levels.append(by_weight < leaves.size)
    depth = np.zeros(leaves.size, dtype=np.int64)
    chosen = 2 * used.size - 2
    for is_leaf in reversed(is_leaf_levels):
        leaf_count = int(np.count_nonzero(is_leaf[:chosen]))
        depth[:leaf_count] += 1
        chosen = 2 * (chosen - leaf_count)
    lengths[used[order]] = depth
    return lengths


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(used symbols in canonical order: by length, then value; their lengths; their codes)."""
    used = np.flatnonzero(lengths)
    n = lengths[used].astype(np.int64)
    order = np.lexsort((used, n))
    used, n = used[order], n[order]
    # canonical: each code is the previous one plus one, shifted to its length; as a Kraft sum
    span = np.int64(1) << (MAX_CODE_LEN - n)
    start = np.cumsum(span) - span
    return used, n, start >> (MAX_CODE_LEN - n)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (uint16[NUM_SYMBOLS]) for the given lengths, MSB-first."""
    codes = np.zeros(NUM_SYMBOLS, dtype=np.uint16)
    used, _, code = _canonical(lengths)
    codes[used] = code
    return codes


def check_lengths(lengths: np.ndarray, where: str) -> None:
    """Refuse code lengths that cannot come from a valid prefix code."""
    if lengths.shape != (NUM_SYMBOLS,) or int(lengths.max(initial=0)) > MAX_CODE_LEN:
        raise CorruptDataError(f"{where}: code lengths must be {NUM_SYMBOLS} values of at most {MAX_CODE_LEN}")
    n = lengths[lengths > 0].astype(np.int64)
    if int((np.int64(1) << (MAX_CODE_LEN - n)).sum()) > TABLE_SIZE:
        raise CorruptDataError(f"{where}: code lengths over-subscribe the code space (Kraft sum > 1)")


def describe(lengths: np.ndarray) -> bytes:
    """The code in a few bytes, as the manifest stores it: zstd of three planes over the coded symbols
    in increasing order: the low bytes of each symbol's distance from the one before (from 0), their
    high bytes, the lengths (a tensor's pairs are a few hundred close values, which zstd packs tightly)."""
    used = np.flatnonzero(lengths)
    gaps = np.diff(used, prepend=0).astype("<u2").view(np.uint8).reshape(-1, 2)
    planes = np.concatenate([gaps[:, 0], gaps[:, 1], lengths[used].astype(np.uint8)])
    return zstandard.ZstdCompressor(level=19).compress(planes.tobytes())


def lengths_from_description(data: bytes, where: str) -> np.ndarray:
    """The code lengths (uint8[NUM_SYMBOLS]) that `describe` wrote; CorruptDataError for anything else."""
    try:
        planes = zstandard.ZstdDecompressor().decompress(data, max_output_size=3 * NUM_SYMBOLS)
    except zstandard.ZstdError as e:
        raise CorruptDataError(f"{where}: its code does not decompress ({e})") from e
    if len(planes) % 3 or not planes:
        raise CorruptDataError(f"{where}: its code holds {len(planes)} bytes, not three planes of one per symbol")
    k = len(planes) // 3
    raw = np.frombuffer(planes, dtype=np.uint8)
    used = np.cumsum(raw[:k].astype(np.int64) | (raw[k : 2 * k].astype(np.int64) << 8))
    if used[-1] >= NUM_SYMBOLS or np.any(np.diff(used) <= 0) or np.any(raw[2 * k :] == 0):
        raise CorruptDataError(f"{where}: its code lists symbols out of order, twice, past {NUM_SYMBOLS - 1} "
                               f"or with length 0")
    lengths = np.zeros(NUM_SYMBOLS, dtype=np.uint8)
    lengths[used] = raw[2 * k :]
    return lengths


def decode_table(lengths: np.ndarray) -> np.ndarray:
    """Lookup table uint32[TABLE_SIZE]: entry = symbol | length << 16, indexed by the next MAX_CODE_LEN bits.

    Canonical codes cover the table in order, each a run of 2**(MAX_CODE_LEN - length) entries.
    Entries no code reaches (a code whose Kraft sum is below 1, e.g. a single symbol) repeat the
    last code's entry, so a peek at padding bits never leaves the table.
    """
    used, n, _ = _canonical(lengths)
    table = np.zeros(TABLE_SIZE, dtype=np.uint32)
    if used.size == 0:
        return table
    runs = np.repeat((used.astype(np.uint32) | (n.astype(np.uint32) << 16)), np.int64(1) << (MAX_CODE_LEN - n))
    table[: runs.size] = runs
    table[runs.size :] = runs[-1]
    return table
