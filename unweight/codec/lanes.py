"""The interleaved-lane bitstream: encoder and CPU reference decoder (numba).

Layout of one coded tensor of n weights (all the GPU decoder needs, see kernels/decode.py):

    symbols   s[0..m), m = ceil(n / 2): symbol k is the pair of weights 2k, 2k + 1 (floats.py);
              they are cut into blocks of LANES * steps symbols; inside a block, lane j
              holds runs of `group` neighbours (group 1 or 2, per tensor): its k-th symbol
              is symbol (k // group) * group * LANES + j * group + k % group of the block, so
              that over `group` steps a lane decodes 2 * group neighbouring weights (the GPU
              decoder reads their raw bytes and writes them with one access). A block whose
              length is not a multiple of group * LANES (only a tensor's last block can be one)
              uses group 1: symbol i of it belongs to lane i % LANES and is that lane's (i // LANES)-th.
    lane      a lane's codes are concatenated MSB-first into 16-bit words.
    stream    the words of a block, in the order a lockstep decoder asks for them. A lane's steps
              go in rounds of ROUND_STEPS = 2: at the first step of a round, a lane holding fewer
              than ROUND_BITS = 2 * MAX_CODE_LEN bits takes words until it holds that many (one
              word, or two if it holds fewer than ROUND_BITS - 16), so that it decodes the round's
              two codes without another refill; at a round's second step it takes none. In the
              lane's last EXACT_STEPS steps (its exact tail) it instead takes one word at a step
              only if its next code is longer than the bits it holds (the decoder looks the code
              up before it refills there): a lane then ends in its last, partly used word instead
              of words taken ahead for codes that never come. Lanes that take words at the same
              step take consecutive words, in lane order (a lane's two words in its own order).
              So a lane's read position is base + exclusive prefix sum of the words each lane
              takes at the step.
    index     int64[num_blocks + 1]: word offset of each block's stream.

The decoder keeps a 64-bit buffer per lane, MSB-aligned (at most ROUND_BITS - 1 + 16 bits): peek
the top 13 bits, look up (symbol, length) in the decode table, shift the buffer left by the
length. A round costs one refill (the lanes' word counts summed by the GPU decoder's votes, and one
read of their words) for two codes: its dependent chain from one code to the next is a table lookup
and a shift.
"""

from __future__ import annotations

import numba
import numpy as np

from ..errors import CorruptDataError, VerificationError
from .huffman import MAX_CODE_LEN

LANES = 32  # lanes a block decodes in lockstep; a warp of threads on the GPU
WORD_BITS = 16
GROUPS = (1, 2)  # neighbouring symbols a lane holds in a run (see the layout above)
MAX_STEPS = 1 << 16  # longest lanes written and read (bounds the coders' per-block scratch)
EXACT_STEPS = 4      # a lane's last steps, where it takes a word only for a code it does not hold
ROUND_STEPS = 2      # steps a refill serves (before the exact tail)
ROUND_BITS = ROUND_STEPS * MAX_CODE_LEN  # bits a lane holds after a round's refill, at least


class UncodedSymbolError(ValueError):
    """`encode` met a symbol whose code length is 0: the code was built for other data."""


# The kernels below index with unsigned integers: numba adds negative-index wraparound code to
# every signed index, which costs the inner loops about a quarter of their time.
U32, U64 = np.uint32, np.uint64


def block_group(count: int, group: int) -> int:
    """The group a block of `count` symbols uses in a tensor coded with `group` (see the layout above)."""
    return group if count % (group * LANES) == 0 else 1


_block_group = numba.njit(cache=True, nogil=True, inline="always")(block_group)


@numba.njit(cache=True, nogil=True, inline="always")
def _append(acc, fill, done, words, code, n):
    """Append a code (MSB-aligned in 32 bits, n bits) to a lane's bits: (acc, fill, done) after it."""
    acc |= code >> fill
    fill += n
    words[done] = np.uint16(acc >> U32(16))
    full = U32(fill >= U32(WORD_BITS))
    return acc << (full << U32(4)), fill - (full << U32(4)), done + U64(full)


@numba.njit(cache=True, nogil=True, inline="always")
def _append_symbol(values, i, aligned, lengths, words, acc, fill, done, missing):
    """_append the code of symbol values[i]; `missing` notes a symbol without a code."""
    s = U64(values[i])
    n = lengths[s]
    acc, fill, done = _append(acc, fill, done, words, aligned[s], n)
    return acc, fill, done, missing | U32(n == U32(0))


@numba.njit(cache=True, nogil=True)
def _pack_lane(values, first, num, stride, aligned, lengths, words, steps_of, base, uncoded):
    """Pack one lane's codes (of values[first], values[first + stride], ...) MSB-first into words[base:].

    Follows the decoder's refill rule on the way (at the first step of a round, a lane holding fewer
    than ROUND_BITS bits takes words until it holds that many; in its last EXACT_STEPS steps, one
    holding fewer bits than its next code takes one) and records in steps_of[base + w] the step at
    which the decoder takes word w (the index, in the lane, of the symbol it takes it for). Returns
    the number of words taken: words past the last code bits are zero.
    By this step the decoder has taken ceil((bits before this symbol + want) / 16) words, or as many as
    before: want is ROUND_BITS at a round's first step, 0 at its second, the code's length in the tail;
    words `taken` and `taken + 1` are taken at a step if that count grows by one or two (else their
    steps_of entries are written again later). Branch-free inside a round, so that the lane's state
    stays in registers.
    """
    acc = U32(0)        # bits not yet written out, MSB-aligned (at most 15 + MAX_CODE_LEN)
    fill = U32(0)       # how many
    done = U64(base)    # words written
    taken = U64(base)   # words the decoder has taken
    missing = U32(0)
    i = U64(first)
    stride = U64(stride)
    exact = max(num - EXACT_STEPS, 0)   # the first step of the lane's exact tail
    k = 0
    while k < exact:    # a round: its first step may take words, its second (if before the tail) none
        steps_of[taken] = U32(k)
        steps_of[taken + U64(1)] = U32(k)
        taken = max(taken, done + U64((fill + U32(ROUND_BITS + WORD_BITS - 1)) >> U32(4)))
        acc, fill, done, missing = _append_symbol(values, i, aligned, lengths, words, acc, fill, done, missing)
        i += stride
        k += 1
        if k < exact:
            acc, fill, done, missing = _append_symbol(values, i, aligned, lengths, words, acc, fill, done, missing)
            i += stride
            k += 1
    while k < num:      # the exact tail: a word only for a code longer than the bits held
        s = U64(values[i])
        n = lengths[s]
        steps_of[taken] = U32(k)
        taken = max(taken, done + U64((fill + n + U32(WORD_BITS - 1)) >> U32(4)))
        missing |= U32(n == U32(0))
        acc, fill, done = _append(acc, fill, done, words, aligned[s], n)
        i += stride
        k += 1
    if fill > U32(0):
        words[done] = np.uint16(acc >> U32(16))
        done += U64(1)
    while done < taken:
        words[done] = 0
        done += U64(1)
    uncoded[0] |= missing
    return taken - U64(base)


@numba.njit(cache=True, nogil=True)
def _encode_block(values, start, count, group, aligned, lengths, words, steps_of, taken, slot, uncoded, out,
                  out_pos, by_lane):
    """Encode one block into out[out_pos:]; returns the number of words written.

    Each lane is packed on its own (_pack_lane, into words), then the lanes' words are placed in the
    stream in the order the lockstep decoder takes them: by step, then by lane (a counting sort on
    the step, in slot). With runs (group > 1) the block's symbols are first copied lane after lane
    into by_lane, so that a lane reads them in order (a stride the CPU's prefetcher follows).
    """
    steps = -(-count // LANES)
    max_words = words.size // LANES
    g = _block_group(count, group)
    if g > 1:
        _gather_lanes(values, start, count, g, by_lane)
    for lane in range(LANES):
        num = (count - lane + LANES - 1) // LANES
        if g > 1:
            taken[lane] = _pack_lane(by_lane, lane * num, num, 1, aligned, lengths, words, steps_of,
                                     lane * max_words, uncoded)
        else:
            taken[lane] = _pack_lane(values, start + lane, num, LANES, aligned, lengths, words, steps_of,
                                     lane * max_words, uncoded)
    slot[: steps + 1] = 0  # slot[t + 1]: words taken at step t, then where step t's words go
    for lane in range(LANES):
        base = U64(lane * max_words)
        for w in range(taken[lane]):
            slot[U64(steps_of[base + U64(w)]) + U64(1)] += U64(1)
    for t in range(steps):
        slot[t + 1] += slot[t]
    for lane in range(LANES):
        base = U64(lane * max_words)
        for w in range(taken[lane]):
            t = U64(steps_of[base + U64(w)])
            out[U64(out_pos) + slot[t]] = words[base + U64(w)]
            slot[t] += U64(1)
    return slot[steps - 1]


@numba.njit(cache=True, nogil=True, inline="always")
def _gather_lanes(values, start, count, g, by_lane):
    """by_lane[j * per_lane + k] = lane j's k-th symbol of the block (runs of g = 2 neighbours)."""
    per_lane = U64(count // LANES)
    src = U64(start)
    for r in range(count // LANES // g):
        dst = U64(r * g)
        for lane in range(LANES):
            by_lane[dst] = values[src]
            by_lane[dst + U64(1)] = values[src + U64(1)]
            src += U64(g)
            dst += per_lane


@numba.njit(cache=True, nogil=True)
def _encode(values, aligned, lengths, steps, group, out, index, uncoded):
    block_size = LANES * steps
    max_words = _lane_capacity(steps) + 1                   # a lane's words, and steps_of one past them
    words = np.empty(LANES * max_words, dtype=np.uint16)     # each lane's words, lane after lane
    steps_of = np.empty(LANES * max_words, dtype=np.uint32)  # the symbol each word is taken for
    taken = np.empty(LANES, dtype=np.uint64)
    slot = np.empty(steps + 1, dtype=np.uint64)
    by_lane = np.empty(block_size if group > 1 else 0, dtype=values.dtype)
    for b in range(index.size - 1):
        start = b * block_size
        count = min(block_size, values.size - start)
        index[b + 1] = index[b] + _encode_block(values, start, count, group, aligned, lengths, words,
                                                steps_of, taken, slot, uncoded, out, index[b], by_lane)


def num_blocks(numel: int, steps: int) -> int:
    """Blocks of a tensor of `numel` weights (ceil(numel / 2) symbols)."""
    return -(-((numel + 1) // 2) // (LANES * steps))


def check_group(group: int, steps: int) -> None:
    if group not in GROUPS or steps % group:
        raise ValueError(f"group {group} with steps {steps}: the group must be one of {GROUPS} and divide steps")


def lane_capacity(steps: int) -> int:
    """Most words one lane can need (every code at the maximum length, and a round's refill past them)."""
    return (MAX_CODE_LEN * steps + ROUND_BITS) // WORD_BITS + 1


_lane_capacity = numba.njit(cache=True, nogil=True, inline="always")(lane_capacity)


def block_capacity(steps: int) -> int:
    """Most words one block can need."""
    return LANES * lane_capacity(steps)


def encode(values: np.ndarray, codes: np.ndarray, lengths: np.ndarray, steps: int,
           group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Encode the symbols `values` (uint16, floats.pair_symbols). Returns (words uint16[W],
    index int64[num_blocks + 1]).

    Runs on the calling thread: callers encode several chunks at once (see tensor.py).
    """
    if values.size >= 1 << 32:
        raise ValueError(f"{values.size} symbols to encode at once; encode at most 2**32 - 1")
    check_group(group, steps)
    num_blocks = -(-values.size // (LANES * steps))
    # room for the longest codes; the words are written back to back, so the pages past them are
    # never touched (and never become resident)
    out = np.empty(num_blocks * block_capacity(steps), dtype=np.uint16)
    index = np.zeros(num_blocks + 1, dtype=np.int64)
    lengths32 = lengths.astype(np.uint32)
    # each code MSB-aligned in 32 bits, so that packing it is one shift and one or
    aligned = np.where(lengths32 > 0, codes.astype(np.uint32) << ((32 - lengths32) % 32), 0).astype(np.uint32)
    uncoded = np.zeros(1, dtype=np.uint32)
    _encode(values, aligned, lengths32, steps, group, out, index, uncoded)
    if uncoded[0]:
        raise UncodedSymbolError("a symbol to encode has no code (code lengths from other data?)")
    return out[: index[-1]], index


@numba.njit(cache=True, nogil=True)
def _count_words(values, lengths, steps, group, counts):
    """counts[b] = the words block b encodes to (what _encode_block returns), from the code lengths
    alone. Before its exact tail, the decoder has taken ceil((bits before symbol k + ROUND_BITS) / 16)
    words of a lane by a round's first step k (see _pack_lane), and in the tail no more than its codes
    need, so a lane of m codes of n_0 .. n_(m-1) bits takes the larger of ceil((n_0 + ... + n_(m-1)) / 16)
    and, with t >= 0 the last even step before the tail (m - EXACT_STEPS - 1 or the one before),
    ceil((n_0 + ... + n_(t-1) + ROUND_BITS) / 16) words."""
    block_size = LANES * steps
    coded = np.empty(LANES, dtype=np.uint64)  # bits of each lane's codes
    for b in range(counts.size):
        start = b * block_size
        count = min(block_size, values.size - start)
        g = _block_group(count, group)
        row = LANES * g                                    # symbols of one run of every lane
        coded[:] = 0
        if g == 1:
            tail = start + count // LANES * LANES
            for lane in range(0, LANES, 8):  # 8 lanes at a time, their sums in registers
                _sum8(values, U64(start + lane), U64(tail + lane), lengths, coded, lane)
            for i in range(tail, start + count):               # a last, partial step
                coded[i - tail] += lengths[U64(values[U64(i)])]
        else:
            for r in range(start, start + count, row):         # runs: one pass in order, 8 symbols at a time
                i = U64(r)
                for lane in range(0, LANES, 8 // g):
                    c0 = U64(lengths[U64(values[i])])
                    c1 = U64(lengths[U64(values[i + U64(1)])])
                    c2 = U64(lengths[U64(values[i + U64(2)])])
                    c3 = U64(lengths[U64(values[i + U64(3)])])
                    c4 = U64(lengths[U64(values[i + U64(4)])])
                    c5 = U64(lengths[U64(values[i + U64(5)])])
                    c6 = U64(lengths[U64(values[i + U64(6)])])
                    c7 = U64(lengths[U64(values[i + U64(7)])])
                    coded[lane] += c0 + c1
                    coded[lane + 1] += c2 + c3
                    coded[lane + 2] += c4 + c5
                    coded[lane + 3] += c6 + c7
                    i += U64(8)
        words = U64(0)
        for lane in range(min(LANES, count)):
            bits = coded[lane]
            num = (count - lane + LANES - 1) // LANES             # the lane's symbols
            lane_words = (bits + U64(WORD_BITS - 1)) >> U64(4)
            if num > EXACT_STEPS:
                last_round = (num - EXACT_STEPS - 1) & ~1         # the lane's last round before its tail
                tail = U64(0)                                     # bits of its codes from there on
                for k in range(last_round, num):
                    tail += U64(lengths[U64(values[U64(start + _lane_symbol(k, lane, g))])])
                lane_words = max(lane_words, (bits - tail + U64(ROUND_BITS + WORD_BITS - 1)) >> U64(4))
            words += lane_words
        counts[b] = words


@numba.njit(cache=True, nogil=True, inline="always")
def _lane_symbol(k, lane, g):
    """Where in its block lane `lane`'s k-th symbol is (the block's group g, see the layout above)."""
    return k // g * g * LANES + lane * g + k % g


@numba.njit(cache=True, nogil=True, inline="always")
def _sum8(values, i, stop, lengths, coded, lane):
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = U64(0)
    while i < stop:
        c0 += U64(lengths[U64(values[i])])
        c1 += U64(lengths[U64(values[i + U64(1)])])
        c2 += U64(lengths[U64(values[i + U64(2)])])
        c3 += U64(lengths[U64(values[i + U64(3)])])
        c4 += U64(lengths[U64(values[i + U64(4)])])
        c5 += U64(lengths[U64(values[i + U64(5)])])
        c6 += U64(lengths[U64(values[i + U64(6)])])
        c7 += U64(lengths[U64(values[i + U64(7)])])
        i += U64(LANES)
    coded[lane] += c0
    coded[lane + 1] += c1
    coded[lane + 2] += c2
    coded[lane + 3] += c3
    coded[lane + 4] += c4
    coded[lane + 5] += c5
    coded[lane + 6] += c6
    coded[lane + 7] += c7


def block_index(values: np.ndarray, lengths: np.ndarray, steps: int, group: int = 1) -> np.ndarray:
    """The index `encode` would return (int64[num_blocks + 1]), without encoding: the exact size of
    the words stream is known before it is written. Runs on the calling thread."""
    check_group(group, steps)
    num_blocks = -(-values.size // (LANES * steps))
    index = np.zeros(num_blocks + 1, dtype=np.int64)
    _count_words(values, lengths.astype(np.uint32), steps, group, index[1:])
    np.cumsum(index, out=index)
    return index


@numba.njit(cache=True, nogil=True)
def _decode_block_into(words, begin, end, table, raw, plane, block_start, count, group, lo, hi, wide, out, check):
    """Decode one block (symbols [block_start, block_start + count)); weights [lo, hi) of it are written
    into `out` (indexed from lo), or, with `check`, compared with it. `plane` is the length of a raw
    plane (the tensor's weights). Returns 0, 1 for a stream that does not decode, 2 for a mismatch."""
    buf = np.zeros(LANES, dtype=np.uint64)
    nbits = np.zeros(LANES, dtype=np.int64)
    pos = begin
    g = _block_group(count, group)
    for step in range(-(-count // LANES)):
        row = block_start + step // g * g * LANES + step % g   # lane 0's symbol of this step
        for lane in range(min(LANES, count - step * LANES)):
            if step >= (count - lane + LANES - 1) // LANES - EXACT_STEPS:  # the exact tail: the code's length
                want = np.int64(table[buf[lane] >> U64(64 - MAX_CODE_LEN)] >> 16)
            else:
                want = ROUND_BITS if step % ROUND_STEPS == 0 else 0
            while nbits[lane] < want:
                if pos >= end:
                    return 1
                buf[lane] |= U64(words[pos]) << U64(48 - nbits[lane])
                nbits[lane] += 16
                pos += 1
            entry = table[buf[lane] >> U64(64 - MAX_CODE_LEN)]
            n = entry >> 16
            buf[lane] <<= U64(n)
            nbits[lane] -= n
            first = 2 * (row + lane * g)                     # the symbol's two weights
            for i in range(first, first + 2):
                if lo <= i < hi:
                    value = _merged_bits((entry >> U32(8 * (i - first))) & U32(0xFF), raw, U64(plane), U64(i), wide)
                    if not check:
                        out[i - lo] = value
                    elif out[i - lo] != value:
                        return 2
    return 0 if pos == end else 1


@numba.njit(cache=True, nogil=True, inline="always")
def _merged_bits(field, raw, plane, i, wide):
    """The original bits of weight i (unsigned) from its symbol field and raw planes of `plane` bytes
    (see floats.py)."""
    if wide:
        hi = U32(raw[U64(2) * plane + i])
        return (((hi & U32(0x80)) << U32(24)) | (U32(field) << U32(23)) | ((hi & U32(0x7F)) << U32(16))
                | (U32(raw[plane + i]) << U32(8)) | U32(raw[i]))
    return _RAW16[U64(raw[i])] | (U32(field) << U32(7))


@numba.njit(cache=True, nogil=True)
def _decode_whole_block(words, begin, end, table, raw, plane, block_start, steps, g, wide, out, out_start, check):
    """_decode_block_into for a block of `steps` full steps whose weights all fall in `out`: no range
    tests, unsigned indices, and a mismatch or a read past the block's words reported at the end."""
    if end <= begin:
        return 1
    buf = np.zeros(LANES, dtype=np.uint64)
    nbits = np.zeros(LANES, dtype=np.uint32)
    pos, last = U64(begin), U64(end - 1)
    plane = U64(plane)
    g = U64(g)
    bad = U32(0)
    for step in range(steps):
        i = U64(2) * (U64(block_start) + U64(step) // g * g * U64(LANES) + U64(step) % g)  # lane 0's first weight
        exact = step >= steps - EXACT_STEPS
        refill = exact or step % ROUND_STEPS == 0
        for lane in range(LANES):
            j = U64(lane)
            b, nb = buf[j], nbits[j]
            if refill:
                # a round's first step: up to two words, to ROUND_BITS; the exact tail: one, for a code
                # longer than the bits held (a truncated stream reads its last word)
                if exact:
                    take1 = U32(nb < (table[b >> U64(64 - MAX_CODE_LEN)] >> U32(16)))
                    take2 = U32(0)
                else:
                    take1 = U32(nb < U32(ROUND_BITS))
                    take2 = U32(nb < U32(ROUND_BITS - WORD_BITS))
                w0 = U64(words[min(pos, last)]) * U64(take1)
                w1 = U64(words[min(pos + U64(1), last)]) * U64(take2)
                # (shift counts masked to 63: a word not taken is 0, wherever it is shifted)
                b |= (w0 << U64((U32(48) - nb) & U32(63))) | (w1 << U64((U32(32) - nb) & U32(63)))
                nb += (take1 + take2) << U32(4)
                pos += U64(take1 + take2)
            entry = table[b >> U64(64 - MAX_CODE_LEN)]
            n = entry >> U32(16)
            buf[j] = b << U64(n)
            nbits[j] = nb - n
            v0 = _merged_bits(entry & U32(0xFF), raw, plane, i, wide)
            v1 = _merged_bits((entry >> U32(8)) & U32(0xFF), raw, plane, i + U64(1), wide)
            o = i - U64(out_start)
            if check:
                bad |= (v0 ^ U32(out[o])) | (v1 ^ U32(out[o + U64(1)]))
            else:
                out[o] = v0
                out[o + U64(1)] = v1
            i += U64(2) * g
    if pos != U64(end):
        return 1
    return 2 if bad else 0


# the bits of a 16-bit float that its raw byte holds: sign (bit 7 -> 15) and mantissa (bits 0..6)
_RAW16 = np.array([((r & 0x80) << 8) | (r & 0x7F) for r in range(256)], dtype=np.uint32)


@numba.njit(cache=True, nogil=True)
def _decode_block(words, index, table, raw, n_total, steps, group, lo, hi, wide, out, check, b):
    """Decode (or check) block b with the fastest decoder that applies; its status."""
    block_size = LANES * steps
    start = b * block_size
    count = min(block_size, (n_total + 1) // 2 - start)
    if count % LANES or 2 * start < lo or 2 * (start + count) > hi:
        return _decode_block_into(words, index[b], index[b + 1], table, raw, n_total, start, count, group, lo, hi,
                                  wide, out, check)
    return _decode_whole_block(words, index[b], index[b + 1], table, raw, n_total, start, count // LANES,
                               _block_group(count, group), wide, out, lo, check)


# Two loops rather than one function compiled twice: numba's disk cache keys a compiled function by
# its name, so a parallel and a serial compilation of the same function would share one entry.
@numba.njit(cache=True, nogil=True, parallel=True)
def _decode_into(words, index, table, raw, n_total, steps, group, lo, hi, wide, out, status, check):
    first = lo // 2 // (LANES * steps)
    for k in numba.prange(status.size):
        status[k] = _decode_block(words, index, table, raw, n_total, steps, group, lo, hi, wide, out, check, first + k)


@numba.njit(cache=True, nogil=True)
def _decode_into_serial(words, index, table, raw, n_total, steps, group, lo, hi, wide, out, status, check):
    first = lo // 2 // (LANES * steps)
    for k in range(status.size):
        status[k] = _decode_block(words, index, table, raw, n_total, steps, group, lo, hi, wide, out, check, first + k)


def blocks_of(lo: int, hi: int, steps: int) -> tuple[int, int]:
    """(first block, number of blocks) holding weights [lo, hi) (hi > lo)."""
    block_size = LANES * steps
    first = lo // 2 // block_size
    return first, ((hi + 1) // 2 - 1) // block_size + 1 - first


def decode_into(words: np.ndarray, index: np.ndarray, table: np.ndarray, raw: np.ndarray, n_total: int,
                steps: int, out: np.ndarray, lo: int = 0, where: str = "tensor", check: bool = False,
                parallel: bool = True, group: int = 1) -> None:
    """Decode weights [lo, lo + out.size) into `out` (uint16 for 16-bit floats, uint32 for fp32);
    `table` is huffman.decode_table's.

    With `check`, `out` holds the expected bits and is compared instead of written: a
    difference raises VerificationError naming the block. Without `parallel`, it runs on the
    calling thread only.
    """
    hi = lo + out.size
    if hi <= lo:
        return
    first, count = blocks_of(lo, hi, steps)
    status = np.zeros(count, dtype=np.int64)
    wide = out.itemsize == 4
    run = _decode_into if parallel and status.size > 1 else _decode_into_serial
    run(words, index, table.astype(np.uint32), raw, n_total, steps, group, lo, hi, wide, out, status, check)
    weights = 2 * LANES * steps
    if (status == 1).any():
        block = first + int(np.flatnonzero(status == 1)[0])
        raise CorruptDataError(f"{where}: coded stream of block {block} does not decode (truncated or corrupted data)")
    if (status == 2).any():
        block = first + int(np.flatnonzero(status == 2)[0])
        raise VerificationError(f"{where}: block {block} (weights from {block * weights}) does not decode "
                                f"back to its original bits")
