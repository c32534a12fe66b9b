"""The interleaved-lane bitstream: encoder and CPU reference decoder (numba).

Layout of one coded tensor (all the GPU decoder needs, see kernels/decode.py):

    symbols   s[0..n) are cut into blocks of LANES * steps symbols; inside a block,
              symbol i belongs to lane i % LANES and is that lane's (i // LANES)-th.
    lane      a lane's codes are concatenated MSB-first into 16-bit words.
    stream    the words of a block, in the order a lockstep decoder asks for them:
              at step t every active lane j with fewer than MAX_CODE_LEN bits buffered
              takes one word; lanes that do so at the same step take consecutive words,
              in lane order. So a lane's read position is base + exclusive prefix sum
              of the "needs a word" flags, and the block stream has no padding beyond
              each lane's last, partly used word.
    index     int64[num_blocks + 1]: word offset of each block's stream.

The decoder keeps a 32-bit buffer per lane, MSB-aligned: peek the top 12 bits, look
up (symbol, length) in the decode table, shift the buffer left by the length.
"""

from __future__ import annotations

import numba
import numpy as np

from ..errors import CorruptDataError, VerificationError
from .huffman import MAX_CODE_LEN

LANES = 32  # lanes a block decodes in lockstep; a warp of threads on the GPU
WORD_BITS = 16


@numba.njit(cache=True, nogil=True)
def _encode_block(sym, start, count, codes, lengths, scratch, slots, out, out_pos):
    """Encode one block in a single pass; return the number of words written at out[out_pos:].

    While packing each lane's codes MSB-first into scratch[lane, word], it replays the
    decoder's refill rule (a lane with fewer than MAX_CODE_LEN bits buffered takes its next
    word) to give each lane word its slot in the stream; the words are then scattered there.
    """
    nbits = np.zeros(LANES, dtype=np.int64)   # bits of codes written to each lane so far
    taken = np.zeros(LANES, dtype=np.int64)   # words the decoder has taken by then
    scratch[:, :] = 0
    written = 0
    for base in range(0, count, LANES):
        for lane in range(min(LANES, count - base)):
            pos = nbits[lane]
            if taken[lane] * WORD_BITS - pos < MAX_CODE_LEN:
                slots[lane, taken[lane]] = written
                taken[lane] += 1
                written += 1
            s = sym[start + base + lane]
            n = lengths[s]
            # place the code in a 32-bit window that covers words `word` and `word + 1`
            window = np.uint32(codes[s]) << np.uint32(32 - (pos & 15) - n)
            word = pos >> 4
            scratch[lane, word] |= np.uint16(window >> np.uint32(16))
            scratch[lane, word + 1] |= np.uint16(window & np.uint32(0xFFFF))
            nbits[lane] = pos + n
    for lane in range(LANES):
        for w in range(taken[lane]):
            out[out_pos + slots[lane, w]] = scratch[lane, w]
    return written


@numba.njit(cache=True, nogil=True, parallel=True)
def _encode(sym, codes, lengths, steps, num_blocks, block_capacity, staging, counts):
    block_size = LANES * steps
    max_words = (MAX_CODE_LEN * steps + MAX_CODE_LEN) // WORD_BITS + 2
    for b in numba.prange(num_blocks):
        start = b * block_size
        count = min(block_size, sym.size - start)
        scratch = np.empty((LANES, max_words), dtype=np.uint16)
        slots = np.empty((LANES, max_words), dtype=np.int64)
        counts[b] = _encode_block(sym, start, count, codes, lengths, scratch, slots, staging, b * block_capacity)


def block_capacity(steps: int) -> int:
    """Most words one block can need (every code at the maximum length)."""
    return LANES * ((MAX_CODE_LEN * steps + MAX_CODE_LEN) // WORD_BITS + 1)


def encode(sym: np.ndarray, codes: np.ndarray, lengths: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode uint8 symbols; returns (words uint16[W], index int64[num_blocks + 1])."""
    num_blocks = -(-sym.size // (LANES * steps))
    capacity = block_capacity(steps)
    staging = np.empty(num_blocks * capacity, dtype=np.uint16)
    counts = np.zeros(num_blocks, dtype=np.int64)
    _encode(sym, codes.astype(np.uint16), lengths.astype(np.int64), steps, num_blocks, capacity, staging, counts)
    index = np.zeros(num_blocks + 1, dtype=np.int64)
    np.cumsum(counts, out=index[1:])
    words = np.empty(int(index[-1]), dtype=np.uint16)
    _compact(staging, counts, index, capacity, words)
    return words, index


@numba.njit(cache=True, nogil=True, parallel=True)
def _compact(staging, counts, index, capacity, words):
    for b in numba.prange(counts.size):
        words[index[b] : index[b + 1]] = staging[b * capacity : b * capacity + counts[b]]


@numba.njit(cache=True, nogil=True, inline="always")
def _merge_value(sym, raw, n_total, i, wide):
    """The original bits of weight i from its symbol and raw planes (see floats.py)."""
    if wide:
        hi = np.uint32(raw[2 * n_total + i])
        return (((hi & 0x80) << 24) | (np.uint32(sym) << 23) | ((hi & 0x7F) << 16)
                | (np.uint32(raw[n_total + i]) << 8) | np.uint32(raw[i]))
    r = np.uint32(raw[i])
    return ((r & 0x80) << 8) | (np.uint32(sym) << 7) | (r & 0x7F)


@numba.njit(cache=True, nogil=True)
def _decode_block_into(words, begin, end, table, raw, n_total, block_start, count, lo, hi, wide, out, check):
    """Decode one block; weights [lo, hi) of it are written into `out` (indexed from lo), or, with
    `check`, compared with it. Returns 0, 1 for a stream that does not decode, 2 for a mismatch."""
    buf = np.zeros(LANES, dtype=np.uint32)
    nbits = np.zeros(LANES, dtype=np.int64)
    pos = begin
    for base in range(0, count, LANES):
        for lane in range(min(LANES, count - base)):
            if nbits[lane] < MAX_CODE_LEN:
                if pos >= end:
                    return 1
                buf[lane] |= np.uint32(words[pos]) << np.uint32(16 - nbits[lane])
                nbits[lane] += 16
                pos += 1
            entry = table[buf[lane] >> np.uint32(32 - MAX_CODE_LEN)]
            n = entry >> 8
            buf[lane] <<= np.uint32(n)
            nbits[lane] -= n
            i = block_start + base + lane
            if lo <= i < hi:
                value = _merge_value(entry & 0xFF, raw, n_total, i, wide)
                if not check:
                    out[i - lo] = value
                elif out[i - lo] != value:
                    return 2
    return 0 if pos == end else 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _decode_into(words, index, table, raw, n_total, steps, lo, hi, wide, out, status, check):
    block_size = LANES * steps
    first = lo // block_size
    for k in numba.prange(status.size):
        b = first + k
        start = b * block_size
        status[k] = _decode_block_into(words, index[b], index[b + 1], table, raw, n_total, start,
                                       min(block_size, n_total - start), lo, hi, wide, out, check)


def decode_into(words: np.ndarray, index: np.ndarray, table: np.ndarray, raw: np.ndarray, n_total: int,
                steps: int, out: np.ndarray, lo: int = 0, where: str = "tensor", check: bool = False) -> None:
    """Decode weights [lo, lo + out.size) into `out` (uint16 for 16-bit floats, uint32 for fp32).

    With `check`, `out` holds the expected bits and is compared instead of written: a
    difference raises VerificationError naming the block.
    """
    hi = lo + out.size
    if hi <= lo:
        return
    block_size = LANES * steps
    status = np.zeros(-(-hi // block_size) - lo // block_size, dtype=np.int64)
    _decode_into(words, index, table.astype(np.int64), raw, n_total, steps, lo, hi, out.itemsize == 4, out,
                 status, check)
    if (status == 1).any():
        block = lo // block_size + int(np.flatnonzero(status == 1)[0])
        raise CorruptDataError(f"{where}: coded stream of block {block} does not decode (truncated or corrupted data)")
    if (status == 2).any():
        block = lo // block_size + int(np.flatnonzero(status == 2)[0])
        raise VerificationError(f"{where}: block {block} (weights from {block * block_size}) does not decode "
                                f"back to its original bits")
