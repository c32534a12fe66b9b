"""Triton decoder for the interleaved-lane bitstream: packed streams -> bf16/fp16/fp32 weights on the GPU.

One warp decodes one block: thread j of the warp is lane j, and the whole warp advances one
step (one symbol, two weights, a lane) at a time, so the words the refilling lanes take are
neighbours in the stream. A lane holds runs of GROUP neighbouring symbols (the block layout,
codec/lanes.py): every GROUP steps the warp has decoded 2 * GROUP * 32 neighbouring weights, whose
raw bytes it reads and which it writes with one access a lane (16-bit weights, group 2: 4 raw
bytes in, 8 bytes out). A program decodes ROWS blocks as a flat tile of ROWS * LANES lanes,
row-major, one row per warp (or several per thread with the scan prefix): a 1-D tile whose size
equals the threads keeps lane j of row r on thread j of warp r, which the ballot prefix relies on.

Per lane and step (see unweight/codec/lanes.py for the encoder's side):

    buf      hi:lo, 64 bits MSB-aligned (two uint32), `held` of them buffered
    refill   at a round's first step (every other step), a lane holding fewer than ROUND_BITS = 26 bits
             takes one word, two if it holds fewer than 10 (in a lane's last EXACT_STEPS steps instead:
             one if the code looked up from the bits it holds is longer than them): the words go right
             behind the held bits. Lanes take consecutive words of the row's stream, in lane order, so
             a lane's first word is the row's next word + the words the lanes before it take (two
             votes and popcounts), read from a ring of the row's words staged in shared memory ahead of
             use (or loaded)
    decode   entry = table[hi >> 19] (uint32: symbol | length << 16, the symbol the exponent fields
             of two weights, bits 0..7 and 8..15; by default from a copy of the table in shared
             memory); hi:lo <<= length; held -= length. Between two refills the chain from one code
             to the next is this lookup and a shift.
    merge    bf16/fp16: raw = s << 7 | bits 0..6          value = (raw & 0x80) << 8 | field << 7 | raw & 0x7F
             fp32: p0 = bits 0..7, p1 = bits 8..15, p2 = s << 7 | bits 16..22
                   value = (p2 & 0x80) << 24 | field << 23 | (p2 & 0x7F) << 16 | p1 << 8 | p0

Variants (DecodeConfig) are swept by benchmarks/gpu_decode.py. Triton is imported by this
module; `unweight.kernels` itself imports nothing, so the rest of unweight works without it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ..codec import floats, lanes
from ..codec.huffman import MAX_CODE_LEN as _MAX_CODE_LEN
from ..codec.huffman import TABLE_SIZE
from ..codec.lanes import GROUPS as _GROUPS
from ..codec.lanes import LANES as _LANES
from ..codec.lanes import EXACT_STEPS as _EXACT_STEPS
from ..codec.lanes import ROUND_BITS as _ROUND_BITS
from ..codec.lanes import WORD_BITS as _WORD_BITS
from ..errors import UnweightError

logger = logging.getLogger(__name__)

LANES = tl.constexpr(_LANES)                   # lanes of a block = threads of a warp
WORD_BITS = tl.constexpr(_WORD_BITS)           # a refill brings one 16-bit word
PEEK_SHIFT = tl.constexpr(32 - _MAX_CODE_LEN)  # hi >> PEEK_SHIFT = the next 13 bits
PREFETCH_STEPS = tl.constexpr(8)               # PREFETCH: raw bytes this many steps ahead (2 lines)...
PREFETCH_WORDS = tl.constexpr(128)             # ...and lane words this many words ahead (~24 steps)

_RING_BYTES = 1024
RING_BYTES = tl.constexpr(_RING_BYTES)         # WINDOW_RING: a row's ring of staged words in shared memory (512 words)...
RING_AHEAD = tl.constexpr(768)                 # ...staged this many bytes (384 words) past the row's read position...
CHUNK_BYTES = tl.constexpr(256)                # ...by aligned copies of 128 words, 8 bytes a lane

# Word-slot prefix over the lanes of a step (which word each refilling lane takes).
PREFIX_SCAN = 0     # scan + reduction along the lane axis: portable, runs in the interpreter
PREFIX_BALLOT = 1   # vote.ballot + popc in inline PTX: CUDA only, needs lane j on hardware lane j
# Where the 8192-entry decode table is read.
TABLE_GLOBAL = 0    # every lookup from global memory (through L1)
TABLE_SHARED = 1    # the table copied into shared memory when a program starts (inline PTX, so CUDA only; it
                    # needs the ballot's tile, one lane a thread: with the scan prefix the table is read as GLOBAL)
_TABLE_BYTES = 4 * TABLE_SIZE
_STATIC_SHARED = 48 * 1024  # static shared memory a block may declare: the table and the rings share it
# Where a refilling lane's words come from.
WINDOW_LOAD = 0     # loads from the row's stream on the round's chain (portable)
WINDOW_RING = 2     # a ring of the row's words in shared memory, staged hundreds of words ahead by cp.async
                    # (inline PTX, CUDA only; needs the ballot's tile and 8-byte aligned words)
EXACT_STEPS = tl.constexpr(_EXACT_STEPS)
ROUND_BITS = tl.constexpr(_ROUND_BITS)         # a round's refill leaves at least this many bits
_WINDOW_RING = tl.constexpr(WINDOW_RING)
_PREFIX_BALLOT = tl.constexpr(PREFIX_BALLOT)
_TABLE_SHARED = tl.constexpr(TABLE_SHARED)
TABLE_BYTES = tl.constexpr(_TABLE_BYTES)
TABLE_DECL = tl.constexpr(f".shared .align 16 .b8 unweight_table[{_TABLE_BYTES}];\n\tmov.u32 $0, 0;")


@dataclass(frozen=True)
class DecodeConfig:
    """Tunables of the decode kernel; benchmarks/gpu_decode.py sweeps them on the target GPU."""

    # defaults: the fastest variant on an H100 (BENCHMARKS.md, "GPU decode")
    rows: int = 8            # blocks a program decodes at once (the shared table and the rings of 16 rows would
                             # not fit a block's 48 KiB of static shared memory)
    num_warps: int = 8       # warps a program; rows / num_warps blocks per thread (1 with the ballot prefix)
    prefix: int = PREFIX_BALLOT
    table: int = TABLE_SHARED  # the 32 KiB table in shared memory
    prefetch: bool = True    # PTX prefetch of raw bytes and lane words ahead of use (CUDA only)
    unroll: int = 4          # steps per loop iteration, whole rounds of two (the prefetch is issued once an
                             # iteration); at least the tensor's group
    window: int = WINDOW_RING  # where refill words come from (WINDOW_*): the ring keeps global loads off the
                               # round's chain
    vector: bool = True      # a run's raw bytes one load and its weights one store (fp32: a symbol's two weights)

    def __post_init__(self):
        checks = {"rows": self.rows >= self.num_warps and self.rows & (self.rows - 1) == 0
                  and (self.prefix != PREFIX_BALLOT or self.rows == self.num_warps),
                  "num_warps": self.num_warps in (1, 2, 4, 8, 16),
                  "prefix": self.prefix in (PREFIX_SCAN, PREFIX_BALLOT),
                  "table": self.table in (TABLE_GLOBAL, TABLE_SHARED),
                  "unroll": self.unroll in (2, 4),
                  "window": self.window in (WINDOW_LOAD, WINDOW_RING)
                  and (self.window != WINDOW_RING or self.table != TABLE_SHARED
                       or _TABLE_BYTES + (self.rows + 1) * _RING_BYTES <= _STATIC_SHARED)}
        for name, ok in checks.items():
            if not ok:
                raise UnweightError(f"DecodeConfig.{name}={getattr(self, name)!r} is not allowed "
                                    f"(rows: a power of two, at least num_warps, equal to it with the ballot "
                                    f"prefix; num_warps: 1..16, a power of two; "
                                    f"prefix: {PREFIX_SCAN} or {PREFIX_BALLOT}; table: {TABLE_GLOBAL} or "
                                    f"{TABLE_SHARED}; unroll: 2 or 4; window: {WINDOW_LOAD} or "
                                    f"{WINDOW_RING}, the ring with the shared table for at "
                                    f"most 8 rows: their shared memory)")

    def portable(self) -> "DecodeConfig":
        """The tile for the Triton interpreter: no inline PTX, and at least 32 rows, since the
        interpreter pays per operation and per program rather than per element."""
        return replace(self.without_ballot(), rows=max(self.rows, 32), prefetch=False)

    def without_ballot(self) -> "DecodeConfig":
        """The same with the portable prefix (and the table read from global memory where it was in
        shared memory, words loaded where they were staged in a ring: both need the ballot's
        one-lane-a-thread tile)."""
        table = TABLE_GLOBAL if self.table == TABLE_SHARED else self.table
        return replace(self, prefix=PREFIX_SCAN, table=table, window=WINDOW_LOAD)


DEFAULT_CONFIG = DecodeConfig()


# ----------------------------------------------------------------------------- kernel


# The kernels use only Triton's builtins (tl.full, tl.reduce, ...), never the @triton.jit helpers of
# triton.language (tl.zeros, tl.sum, tl.cumsum, tl.min, tl.max): the interpreter runs those only if
# TRITON_INTERPRET was set before triton.language was first imported, which a test cannot ensure.
# Reductions and scans pass triton.language's own combine functions, which the interpreter
# recognizes and runs in numpy.
_add = tl.standard._sum_combine
_min = tl.standard._elementwise_min
_max = tl.standard._elementwise_max


# _word_slots in PTX: a vote a word count gives the lanes' flags as a bit mask over hardware lanes (the tile
# layout puts lane j of every row on hardware lane j, checked at compile time); $2 is the lane's need, or
# the bits it holds at a round's first step
_SLOTS_TWO = """{{
    .reg .pred p, q;
    .reg .b32 m, n, lt, a, b;
    {};
    {};
    vote.sync.ballot.b32 m, p, 0xffffffff;
    vote.sync.ballot.b32 n, q, 0xffffffff;
    mov.u32 lt, %lanemask_lt;
    and.b32 a, lt, m;
    and.b32 b, lt, n;
    popc.b32 a, a;
    popc.b32 b, b;
    add.s32 $0, a, b;
    popc.b32 a, m;
    popc.b32 b, n;
    add.s32 $1, a, b;
    }}"""
SLOTS_ONE = tl.constexpr("""{
    .reg .pred p;
    .reg .b32 m, lt;
    setp.ne.s32 p, $2, 0;
    vote.sync.ballot.b32 m, p, 0xffffffff;
    mov.u32 lt, %lanemask_lt;
    and.b32 lt, lt, m;
    popc.b32 $0, lt;
    popc.b32 $1, m;
    }""")
SLOTS_TWO = tl.constexpr(_SLOTS_TWO.format("setp.gt.s32 p, $2, 0", "setp.gt.s32 q, $2, 1"))
SLOTS_ROUND = tl.constexpr(_SLOTS_TWO.format(f"setp.lt.s32 p, $2, {_ROUND_BITS}",
                                             f"setp.lt.s32 q, $2, {_ROUND_BITS - _WORD_BITS}"))
# what _refill's lanes take: a word or none, up to two words, a round's words (from the bits they hold)
_TAKE_ONE, _TAKE_TWO, _TAKE_ROUND = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _word_slots(x, ROWS: tl.constexpr, PREFIX: tl.constexpr, TAKE: tl.constexpr):
    """Per lane: how many words the lanes before it in its row take this step, and how many its row takes.
    x: int32 [ROWS * LANES], row-major (element r * LANES + j is lane j of row r): the words each lane
    takes (0 or 1; with _TAKE_TWO up to 2), or with _TAKE_ROUND the bits it holds at a round's first step."""
    if PREFIX == _PREFIX_BALLOT:
        if TAKE == _TAKE_ONE:
            before, total = tl.inline_asm_elementwise(asm=SLOTS_ONE, constraints="=r,=r,r", args=[x],
                                                      dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
        elif TAKE == _TAKE_TWO:
            before, total = tl.inline_asm_elementwise(asm=SLOTS_TWO, constraints="=r,=r,r", args=[x],
                                                      dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
        else:
            before, total = tl.inline_asm_elementwise(asm=SLOTS_ROUND, constraints="=r,=r,r", args=[x],
                                                      dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        need = _round_need(x) if TAKE == _TAKE_ROUND else x
        rows = tl.reshape(need, [ROWS, LANES])
        before = tl.reshape(tl.associative_scan(rows, 1, _add) - rows, [ROWS * LANES])
        total = tl.reshape(tl.reduce(rows, 1, _add)[:, None] + rows * 0, [ROWS * LANES])
    return before, total


@triton.jit
def _lookup(hi, table_ptr, TABLE: tl.constexpr):
    """Decode-table entry (symbol | length << 16, int32) for the next 13 bits of each lane's buffer, the top of
    its high word (table_ptr: *i32)."""
    peek = (hi >> PEEK_SHIFT).to(tl.int32)
    if TABLE == _TABLE_SHARED:
        entry = tl.inline_asm_elementwise(
            asm="{ .reg .u32 a; mov.u32 a, unweight_table; mad.lo.u32 a, $1, 4, a; ld.shared.u32 $0, [a]; }",
            constraints="=r,r", args=[peek], dtype=tl.int32, is_pure=True, pack=1)
    else:
        entry = tl.load(table_ptr + peek)
    return entry


@triton.jit
def _shared_table(table_ptr, ROWS: tl.constexpr):
    """Declare the shared-memory table `unweight_table` and copy the table into it with cp.async, 16 bytes
    a thread at a time, then wait and a barrier. One element a thread: the ballot tile."""
    e = tl.arange(0, ROWS * LANES)
    src = table_ptr.to(tl.pointer_type(tl.int8)) + e * 16
    done = tl.inline_asm_elementwise(asm=TABLE_DECL, constraints="=r,r", args=[e], dtype=tl.int32, is_pure=False,
                                     pack=1)
    for k in tl.static_range(TABLE_BYTES // (ROWS * LANES * 16)):
        done |= tl.inline_asm_elementwise(
            asm="{ .reg .u32 a; mov.u32 a, unweight_table; mad.lo.u32 a, $1, 16, a; "
                "cp.async.cg.shared.global [a], [$2], 16; mov.u32 $0, 0; }",
            constraints="=r,r,l", args=[k * ROWS * LANES + e, src + k * ROWS * LANES * 16], dtype=tl.int32,
            is_pure=False, pack=1)
    done |= tl.inline_asm_elementwise(asm="cp.async.commit_group;\n\tcp.async.wait_group 0;\n\tbar.sync 0;\n\t"
                                      "mov.u32 $0, 0;", constraints="=r,r", args=[done], dtype=tl.int32,
                                      is_pure=False, pack=1)
    return done


@triton.jit
def _prefetch(ptr):
    """Ask for the line holding `ptr` in L1 without waiting for it (PTX prefetch)."""
    tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n mov.u32 $0, 0;", "=r,l", [ptr],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _merge(field, raw_at, plane_stride, write, RAW_PLANES: tl.constexpr, MASKED: tl.constexpr):
    """Reassemble a weight's original bits from its symbol field (in bits 0..7) and its raw bytes."""
    # high 16 bits of the value: sign from raw bit 7, symbol in bits 7..14, raw bits 0..6 in place;
    # raw * 0x101 puts raw bit 7 at bit 15 while keeping bits 0..6: one bit-select merges them
    raw = _load(raw_at, write, MASKED).to(tl.int32)
    if RAW_PLANES == 1:
        value = (((raw * 0x101) & 0x807F) | ((field << 7) & 0x7F80)).to(tl.int16)
    else:
        p1 = _load(raw_at + plane_stride, write, MASKED).to(tl.int32)
        p2 = _load(raw_at + 2 * plane_stride, write, MASKED).to(tl.int32)
        high = ((p2 * 0x101) & 0x807F) | ((field << 7) & 0x7F80)
        value = (high << 16) | (p1 << 8) | raw
    return value


@triton.jit
def _load(ptr, mask, MASKED: tl.constexpr):
    # no eviction hints on these streaming accesses: with them the loop needs ~20% more
    # instructions (an L2 cache-policy operand on every access), and L1 keeps the table anyway
    if MASKED:
        value = tl.load(ptr, mask=mask, other=0)
    else:
        value = tl.load(ptr)
    return value


def ring_declaration(rows: int) -> str:
    """PTX declaring the shared-memory rings `unweight_ring` of a ROWS-row tile, a ring more than the rows
    need (see _ring_rows), and returning its address (the kernels' RING_DECL)."""
    return f".shared .align 16 .b8 unweight_ring[{(rows + 1) * _RING_BYTES}];\n\tmov.u32 $0, unweight_ring;"


@triton.jit
def _ring_rows(ROWS: tl.constexpr, RING_DECL: tl.constexpr):
    """Declare the rings (RING_DECL, from ring_declaration(ROWS)) and return the shared address of each
    lane's row's ring, aligned to RING_BYTES (the readers OR offsets into it): the declaration holds a
    ring more than the rows need, since PTX alignment is relative to a start that the driver may move
    (on an H100 it reserves the first KiB of a block's shared memory). Emitted once per kernel."""
    e = tl.arange(0, ROWS * LANES)
    base = tl.inline_asm_elementwise(RING_DECL, "=r,r", [e], dtype=tl.int32, is_pure=False, pack=1)
    return ((base + (RING_BYTES - 1)) & -RING_BYTES) + e // LANES * RING_BYTES


@triton.jit
def _ring_word(ring_row, at):
    """The word at byte `at` of the tensor's words, from the row's ring (staged by _ring_stage)."""
    # not pure: it must stay between the stagings around it
    return tl.inline_asm_elementwise("ld.shared.u16 $0, [$1];", "=r,r", [(at & (RING_BYTES - 2)) | ring_row],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _ring_stage(ring_row, words_bytes, staged, lane, word_end, issue):
    """Where `issue`: copy bytes [staged, staged + CHUNK_BYTES) of the tensor's words (staged: a multiple
    of CHUNK_BYTES) into the row's ring with cp.async, 8 bytes a lane, none at or past byte word_end (the
    row's end: nothing there is read, and the address stays inside the row; a copy of fewer bytes reads
    only those). Returns the new staged."""
    at = staged + 8 * lane
    size = tl.minimum(tl.maximum(word_end - at, 0), 8)
    # an address inside the row's words even where nothing is copied (past its end: size 0)
    src = words_bytes + tl.maximum(tl.minimum(at, (word_end - 1) & -8), 0)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $1, 0; @p cp.async.ca.shared.global [$2], [$3], 8, $4; mov.u32 $0, 0; }",
        "=r,r,r,l,r", [issue.to(tl.int32), (at & (RING_BYTES - 1)) | ring_row, src, size],
        dtype=tl.int32, is_pure=False, pack=1)
    return staged + tl.where(issue, CHUNK_BYTES, 0)


@triton.jit
def _ring_barrier(x):
    """Warp barrier: orders every lane's ring reads before the stagings that follow."""
    return tl.inline_asm_elementwise("bar.warp.sync -1;\n\tmov.u32 $0, 0;", "=r,r", [x], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _ring_ready(x, PENDING: tl.constexpr):
    """Close the stagings issued since the last call as one group and wait until at most PENDING groups
    are in flight, then a warp barrier so that every lane sees the words the others copied."""
    if PENDING == 0:
        done = tl.inline_asm_elementwise("cp.async.commit_group;\n\tcp.async.wait_group 0;\n\tbar.warp.sync -1;"
                                         "\n\tmov.u32 $0, 0;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)
    else:
        done = tl.inline_asm_elementwise("cp.async.commit_group;\n\tcp.async.wait_group 1;\n\tbar.warp.sync -1;"
                                         "\n\tmov.u32 $0, 0;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)
    return done


@triton.jit
def _round_need(held):
    """Words a lane takes at a round's first step: enough to hold ROUND_BITS bits (it holds `held`; the
    ballot prefix compares in PTX: 26 and 10)."""
    return (held < ROUND_BITS).to(tl.int32) + (held < ROUND_BITS - WORD_BITS).to(tl.int32)


@triton.jit
def _exact_need(hi, held, table_ptr, TABLE: tl.constexpr):
    """Words a lane takes at a step of its exact tail (codec/lanes.py): one if its next code is longer than
    the bits it holds. The code is looked up first: bits past those held are 0, and the entry's length
    exceeds them exactly when the code's does."""
    return ((_lookup(hi, table_ptr, TABLE) >> 16) > held).to(tl.int32)


@triton.jit
def _refill(hi, lo, held, x, word_at, ring, word_row, word_limit, ROWS: tl.constexpr, PREFIX: tl.constexpr,
            WINDOW: tl.constexpr, TAKE: tl.constexpr):
    """Every lane takes its next words into its buffer: with _TAKE_ROUND, a round's (_round_need of the bits
    it holds, up to 2), else x of them (an int32 a lane: 0 or 1, with _TAKE_TWO up to 2).

    State per lane: hi:lo (64 bits, MSB-aligned, `held` of them buffered; a lane that takes words holds
    fewer than ROUND_BITS, so they go below bit 32 of hi), word_at: with the ring, the byte offset in the
    tensor's words of the row's next word (`ring` the row's ring), else the words the row has taken.
    Lanes that take words take consecutive ones, in lane order. Returns the new state."""
    before, total = _word_slots(held if TAKE == _TAKE_ROUND else x, ROWS, PREFIX, TAKE)
    if TAKE == _TAKE_ROUND:
        one = held < ROUND_BITS
        two = held < ROUND_BITS - WORD_BITS
    else:
        one = x > 0
        two = x > 1
    if WINDOW == _WINDOW_RING:
        at = word_at + (before << 1)
        w0 = _ring_word(ring, at)
        if TAKE != _TAKE_ONE:
            w1 = _ring_word(ring, at + 2)
        word_at += total << 1
    else:
        slot = word_at + before                            # word index inside the row's stream
        w0 = tl.load(word_row + slot, mask=one & (slot < word_limit), other=0).to(tl.int32)
        if TAKE != _TAKE_ONE:
            w1 = tl.load(word_row + slot + 1, mask=two & (slot + 1 < word_limit), other=0).to(tl.int32)
        word_at += total
    bits = tl.where(one, w0 & 0xFFFF, 0).to(tl.uint32) << 16  # the words, MSB-aligned in 32 bits
    if TAKE != _TAKE_ONE:
        bits |= tl.where(two, w1 & 0xFFFF, 0).to(tl.uint32)
    if PREFIX == _PREFIX_BALLOT:
        # hi:lo |= bits:0 >> held, by shifts that give 0 past 32 (no mask of held, which is below 26 where
        # bits is not 0)
        hi, lo = tl.inline_asm_elementwise(
            "{ .reg .b32 t, u; shr.b32 t, $4, $5; shf.r.clamp.b32 u, 0, $4, $5; or.b32 $0, $2, t; "
            "or.b32 $1, $3, u; }", "=r,=r,r,r,r,r", [hi, lo, bits, held], dtype=(tl.uint32, tl.uint32),
            is_pure=True, pack=1)
    else:
        at_bit = (held & 31).to(tl.uint32)                # the held bits, where bits is not 0 (fewer than 26)
        hi |= bits >> at_bit
        lo |= (bits << 1) << (31 - at_bit)                 # the bits past hi (none for at_bit 0)
    held += (one.to(tl.int32) + two.to(tl.int32)) * WORD_BITS
    return hi, lo, held, word_at


@triton.jit
def _decode_symbol(hi, lo, held, table_ptr, TABLE: tl.constexpr):
    """Decode one symbol a lane: its table entry (symbol | length << 16) from the buffer's top 13 bits,
    and the buffer shifted past its code."""
    entry = _lookup(hi, table_ptr, TABLE)
    length = entry >> 16
    n = length.to(tl.uint32)
    hi = (hi << n) | (lo >> (32 - n))                      # n is 1..13
    lo <<= n
    return hi, lo, held - length, entry


@triton.jit
def _pair(entry, raw2):
    """The two 16-bit weights of a symbol as one int32 (the first in the low half), from its table
    entry (fields in bits 0..7 and 8..15) and raw2 = their two raw bytes (the first in bits 0..7):
    _merge for two at once."""
    spread = (raw2 & 0xFF) | ((raw2 & 0xFF00) << 8)       # raw bytes at bits 0..7 and 16..23
    fields = ((entry & 0xFF) << 7) | ((entry & 0xFF00) << 15)  # fields at bits 7..14 and 23..30
    return ((spread * 0x101) & -2139127681) | fields      # -2139127681: 0x807F807F


@triton.jit
def _store_run(e0, e1, raw, out_vec, write, GROUP: tl.constexpr):
    """Merge the 2 * GROUP neighbouring weights of each lane's run (raw: their raw bytes, one int16 or
    int32 a lane) and store them with one access."""
    if GROUP == 1:
        tl.store(out_vec, _pair(e0, raw.to(tl.int32) & 0xFFFF), mask=write)
    else:
        low = _pair(e0, raw & 0xFFFF).to(tl.int64) & 0xFFFFFFFF
        high = _pair(e1, (raw >> 16) & 0xFFFF).to(tl.int64)
        tl.store(out_vec, low | (high << 32), mask=write)


@triton.jit
def _store_pair32(entry, raw_at, out_at, plane_stride, write):
    """Merge and store a symbol's two fp32 weights with one access: each raw plane's two bytes one load,
    both weights one 8-byte store (aligned: DecodeItem.can_vector)."""
    p0 = tl.load(raw_at.to(tl.pointer_type(tl.int16))).to(tl.int32)
    p1 = tl.load((raw_at + plane_stride).to(tl.pointer_type(tl.int16))).to(tl.int32)
    p2 = tl.load((raw_at + 2 * plane_stride).to(tl.pointer_type(tl.int16))).to(tl.int32)
    high = _pair(entry, p2 & 0xFFFF)                       # the two weights' high halves, as for 16-bit ones
    first = ((high & 0xFFFF) << 16) | ((p1 & 0xFF) << 8) | (p0 & 0xFF)
    second = (high & -65536) | (p1 & 0xFF00) | ((p0 >> 8) & 0xFF)
    value = (first.to(tl.int64) & 0xFFFFFFFF) | (second.to(tl.int64) << 32)
    tl.store(out_at.to(tl.pointer_type(tl.int64)), value, mask=write)


@triton.jit
def _store_pair(entry, raw_at, out_at, plane_stride, write, RAW_PLANES: tl.constexpr, VECTOR: tl.constexpr):
    """Merge and store a symbol's two weights: fp32 with VECTOR in one access (_store_pair32), else one at
    a time (fp32, or 16-bit weights not aligned for one access a run)."""
    if VECTOR:
        _store_pair32(entry, raw_at, out_at, plane_stride, write)
    else:
        tl.store(out_at, _merge(entry & 0xFF, raw_at, plane_stride, True, RAW_PLANES, False), mask=write)
        tl.store(out_at + 1, _merge((entry >> 8) & 0xFF, raw_at + 1, plane_stride, True, RAW_PLANES, False),
                 mask=write)


@triton.jit
def _ring_start(ring, words_ptr, word0, word_limit, lane):
    """Stage the first RING_AHEAD bytes of each row's words (words_ptr[word0:][:word_limit]) in its ring
    and wait for them: (word_at, staged, words_bytes, word_end), byte offsets in the tensor's words
    (int32: a tensor's words stay below 2 GiB) of the row's next word, of the end of what is staged and
    of the row's end, and the words as bytes."""
    words_bytes = words_ptr.to(tl.pointer_type(tl.uint8))
    word_end = (2 * (word0 + word_limit)).to(tl.int32)
    word_at = (2 * word0).to(tl.int32) + lane * 0
    staged = word_at // CHUNK_BYTES * CHUNK_BYTES
    for _ in tl.static_range(RING_AHEAD // CHUNK_BYTES):  # RING_AHEAD - CHUNK_BYTES + 1 bytes past the start, at least
        staged = _ring_stage(ring, words_bytes, staged, lane, word_end, staged < word_end)
    _ring_ready(staged, 0)
    return word_at, staged, words_bytes, word_end


@triton.jit
def _ring_advance(ring, words_bytes, staged, word_at, word_end, lane):
    """Once a loop iteration, before its steps: stage one more chunk of each row's words if fewer than
    RING_AHEAD bytes are staged past its read position, then wait for the chunks of the iterations before.
    An iteration reads at most 4 steps * 32 words = CHUNK_BYTES (a round takes at most two words a lane), so
    waiting for all but this iteration's copy leaves at least RING_AHEAD - 2 * CHUNK_BYTES = CHUNK_BYTES
    ready; the ring's bytes it overwrites were read before this iteration, by lanes that the barrier holds
    back until then."""
    _ring_barrier(staged)
    staged = _ring_stage(ring, words_bytes, staged, lane, word_end,
                         (staged < word_at + RING_AHEAD) & (staged < word_end))
    _ring_ready(staged, 1)
    return staged


@triton.jit
def _words_start(ring, words_ptr, word0, word_limit, lane, WINDOW: tl.constexpr):
    """The rows' empty buffers (hi, lo, held) and where their words are read (see _refill): word_at, staged,
    words_bytes, word_end (the last three for the ring)."""
    if WINDOW == _WINDOW_RING:
        word_at, staged, words_bytes, word_end = _ring_start(ring, words_ptr, word0, word_limit, lane)
    else:
        word_at = lane * 0                                 # words the row has taken
        staged = word_at                                   # unused
        words_bytes = words_ptr + word0
        word_end = word_limit
    hi = (lane * 0).to(tl.uint32)
    return hi, hi, lane * 0, word_at, staged, words_bytes, word_end


@triton.jit
def _decode_whole(num_steps, lane, is_row, raw_row, out_row, raw_vec, out_vec, words_ptr, word0, word_limit, ring,
                  plane_stride, table_ptr, last, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr,
                  PREFIX: tl.constexpr, TABLE: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
                  WINDOW: tl.constexpr, GROUP: tl.constexpr, VECTOR: tl.constexpr):
    """Every row a whole block, written whole: no masks. Each lane decodes runs of GROUP neighbouring
    symbols (the block layout, codec/lanes.py), 2 * GROUP weights; raw_row and out_row point at the
    block's first weight, `last` is its last weight's offset. With VECTOR a 16-bit run's raw bytes are
    one load and its weights one store (raw_vec / out_vec point at the lane's first run in those units),
    an fp32 symbol's two weights one store. Rows that are not is_row decode a copy of another row and
    store nothing. The row's stream: words_ptr[word0:][:word_limit], staged in `ring` with the ring.
    The loop runs the steps before the lanes' exact tail, in rounds (a refill, then two steps); the
    tail's EXACT_STEPS steps (a lookup before each refill decision) follow it."""
    word_row = words_ptr + word0
    hi, lo, held, word_at, staged, words_bytes, word_end = _words_start(ring, words_ptr, word0, word_limit, lane,
                                                                        WINDOW)
    lane_at = 2 * GROUP * lane                             # the lane's first weight in the block
    raw_at = raw_row + lane_at
    out_at = out_row + lane_at
    RUNS: tl.constexpr = UNROLL // GROUP                   # runs a lane decodes an iteration
    if VECTOR and RAW_PLANES == 1:
        # the raw bytes of an iteration's runs are loaded one iteration ahead (software pipelining):
        # their latency hides behind a whole iteration's steps instead of stalling its merge
        raw_a = tl.load(raw_vec)
        raw_b = raw_a                                      # run 1: only with 2 runs an iteration
        if RUNS == 2:
            raw_b = tl.load(raw_vec + LANES)
    else:
        raw_a = word_at                                    # unused
        raw_b = word_at
    tail = num_steps - EXACT_STEPS                         # the lanes' exact tail (codec/lanes.py)
    for t in tl.range(0, tail, UNROLL, loop_unroll_factor=2):  # two copies: no register move for raw_a
        hi, lo, held, word_at, staged, raw_a, raw_b, raw_at, out_at, raw_vec, out_vec = _iteration(
            t, num_steps, hi, lo, held, word_at, ring, staged, raw_a, raw_b, raw_at, out_at, raw_vec, out_vec, lane,
            lane_at, is_row, raw_row, last, word_row, word_limit, words_bytes, word_end, plane_stride, table_ptr,
            ROWS, RAW_PLANES, PREFIX, TABLE, PREFETCH, UNROLL, WINDOW, GROUP, VECTOR, False)
    for k in tl.static_range(EXACT_STEPS // UNROLL):
        hi, lo, held, word_at, staged, raw_a, raw_b, raw_at, out_at, raw_vec, out_vec = _iteration(
            tail + k * UNROLL, num_steps, hi, lo, held, word_at, ring, staged, raw_a, raw_b, raw_at, out_at, raw_vec,
            out_vec, lane, lane_at, is_row, raw_row, last, word_row, word_limit, words_bytes, word_end, plane_stride,
            table_ptr, ROWS, RAW_PLANES, PREFIX, TABLE, PREFETCH, UNROLL, WINDOW, GROUP, VECTOR, True)


@triton.jit
def _iteration(t, num_steps, hi, lo, held, word_at, ring, staged, raw_a, raw_b, raw_at, out_at, raw_vec, out_vec,
               lane, lane_at, is_row, raw_row, last, word_row, word_limit, words_bytes, word_end, plane_stride,
               table_ptr, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr, PREFIX: tl.constexpr, TABLE: tl.constexpr,
               PREFETCH: tl.constexpr, UNROLL: tl.constexpr, WINDOW: tl.constexpr, GROUP: tl.constexpr,
               VECTOR: tl.constexpr, EXACT: tl.constexpr):
    """Steps [t, t + UNROLL) of _decode_whole's rows (t even; EXACT: steps of the lanes' exact tail); the
    new state."""
    RUNS: tl.constexpr = UNROLL // GROUP                   # runs a lane decodes an iteration
    if PREFETCH:
        # each run of the iteration its own lines (a lane's run is a line's 32nd part)
        for r in tl.static_range(RUNS):
            _prefetch_ahead(raw_row, plane_stride, 2 * (t + r * GROUP) * LANES + lane_at, last, word_row, word_at,
                            word_limit, RAW_PLANES, (r == 0) & (WINDOW != _WINDOW_RING))
    if WINDOW == _WINDOW_RING:
        staged = _ring_advance(ring, words_bytes, staged, word_at, word_end, lane)
    next_a = raw_a
    next_b = raw_b
    if VECTOR and RAW_PLANES == 1:
        more = lane * 0 + (t + UNROLL) < num_steps         # the next iteration's runs exist (a tensor mask)
        next_a = tl.load(raw_vec + RUNS * LANES, mask=more, other=0)
        next_b = next_a
        if RUNS == 2:
            next_b = tl.load(raw_vec + (RUNS + 1) * LANES, mask=more, other=0)
    e1 = held                                              # unused unless GROUP is 2
    for r in tl.static_range(RUNS):                        # run r of this iteration: weights 2 * r * GROUP * LANES + ...
        for g in tl.static_range(GROUP):
            if EXACT:
                need = _exact_need(hi, held, table_ptr, TABLE)
                hi, lo, held, word_at = _refill(hi, lo, held, need, word_at, ring, word_row, word_limit, ROWS, PREFIX,
                                                WINDOW, _TAKE_ONE)
            elif (r * GROUP + g) % 2 == 0:                 # a round's first step
                hi, lo, held, word_at = _refill(hi, lo, held, held, word_at, ring, word_row, word_limit, ROWS,
                                                PREFIX, WINDOW, _TAKE_ROUND)
            hi, lo, held, entry = _decode_symbol(hi, lo, held, table_ptr, TABLE)
            if g == 0:
                e0 = entry
            else:
                e1 = entry
        if VECTOR and RAW_PLANES == 1:
            _store_run(e0, e1, raw_a if r == 0 else raw_b, out_vec + r * LANES, is_row, GROUP)
        else:
            run = 2 * r * GROUP * LANES
            _store_pair(e0, raw_at + run, out_at + run, plane_stride, is_row, RAW_PLANES, VECTOR)
            if GROUP == 2:
                _store_pair(e1, raw_at + run + 2, out_at + run + 2, plane_stride, is_row, RAW_PLANES, VECTOR)
    return (hi, lo, held, word_at, staged, next_a, next_b, raw_at + 2 * UNROLL * LANES,
            out_at + 2 * UNROLL * LANES, raw_vec + RUNS * LANES, out_vec + RUNS * LANES)


@triton.jit
def _decode_partial(num_steps, lane, group_shift, run_mask, count, lo_w, span, raw_row, out_row, words_ptr, word0,
                    word_limit, ring, plane_stride, table_ptr, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr,
                    PREFIX: tl.constexpr, TABLE: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr,
                    WINDOW: tl.constexpr):
    """Rows with a partial block or range: every step finds its symbol from the block layout (the
    row's group is 1 << group_shift = run_mask + 1; `count` symbols), refills under masks (a round's
    refill, or the exact tail's, lane by lane), decodes and stores its two weights (those at offsets
    [lo_w, lo_w + span) of the block)."""
    word_row = words_ptr + word0
    hi, lo, held, word_at, staged, words_bytes, word_end = _words_start(ring, words_ptr, word0, word_limit, lane,
                                                                        WINDOW)
    lane_at = lane << group_shift
    last = tl.maximum(2 * count - 1, 0)
    tail = (count - lane + LANES - 1) // LANES - EXACT_STEPS  # the lane's exact tail: its last steps
    for t0 in range(0, num_steps, UNROLL):                 # UNROLL is even: t0 is a round's first step
        if PREFETCH:
            _prefetch_ahead(raw_row, plane_stride, 2 * (t0 * LANES + lane_at), last, word_row, word_at, word_limit,
                            RAW_PLANES, WINDOW != _WINDOW_RING)
        if WINDOW == _WINDOW_RING:
            staged = _ring_advance(ring, words_bytes, staged, word_at, word_end, lane)
        for u in tl.static_range(UNROLL):
            t = t0 + u
            at = ((t >> group_shift) << (group_shift + 5)) + lane_at + (t & run_mask)  # symbol offset in the block
            exact = _exact_need(hi, held, table_ptr, TABLE)
            if u % 2 == 0:
                need = tl.where(t >= tail, exact, _round_need(held))
            else:
                need = tl.where(t >= tail, exact, 0)
            need = tl.where(at < count, need, 0)           # lanes past the end of a partial block
            if u % 2 == 0:
                hi, lo, held, word_at = _refill(hi, lo, held, need, word_at, ring, word_row, word_limit, ROWS,
                                                PREFIX, WINDOW, _TAKE_TWO)
            else:
                hi, lo, held, word_at = _refill(hi, lo, held, need, word_at, ring, word_row, word_limit, ROWS,
                                                PREFIX, WINDOW, _TAKE_ONE)
            hi, lo, held, entry = _decode_symbol(hi, lo, held, table_ptr, TABLE)
            for h in tl.static_range(2):
                w = 2 * at + h                                     # weight offset in the block
                write = (w - lo_w).to(tl.uint32, bitcast=True) < span  # lo_w <= w < lo_w + span
                value = _merge((entry >> (8 * h)) & 0xFF, raw_row + w, plane_stride, write, RAW_PLANES, True)
                tl.store(out_row + w, value, mask=write)


@triton.jit
def _prefetch_ahead(raw_row, plane_stride, at, last, word_row, word_at, word_limit, RAW_PLANES: tl.constexpr,
                    WORDS: tl.constexpr = True):
    """Prefetch the raw bytes PREFETCH_STEPS steps after weight offset `at` and (WORDS) the words
    PREFETCH_WORDS ahead, clamped to the block (raw) and the row's stream (words): never an address
    outside the tensors."""
    ahead = tl.minimum(at + 2 * PREFETCH_STEPS * LANES, last)
    for p in tl.static_range(RAW_PLANES):
        _prefetch(raw_row + p * plane_stride + ahead)
    if WORDS:
        _prefetch(word_row + tl.maximum(tl.minimum(word_at + PREFETCH_WORDS, word_limit - 1), 0))


@triton.jit
def _decode_rows(words_ptr, index_ptr, table_ptr, raw_ptr, out_ptr, numel_total, start, stop, first_block,
                 num_blocks, steps, tile, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr, PREFIX: tl.constexpr,
                 TABLE: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr, WINDOW: tl.constexpr,
                 GROUP: tl.constexpr, VECTOR: tl.constexpr, RING_DECL: tl.constexpr):
    """Decode blocks first_block + tile * ROWS + [0, ROWS), writing elements [start, stop).

    words_ptr: *u16; table_ptr: *i32; raw_ptr: *u8; out_ptr: *i16 (16-bit weights) or *i32 (fp32).
    """
    # one element per lane of every row, row-major: thread j of warp r is lane j of row r
    e = tl.arange(0, ROWS * LANES)
    lane = e % LANES
    rows = tile * ROWS + e // LANES                        # block, relative to first_block
    is_row = rows < num_blocks                             # rows past the last block write nothing:
    # they follow the tile's first block (in step with the other rows) but write nothing
    block = (first_block + tl.where(is_row, rows, tile * ROWS)).to(tl.int64)
    block_size = steps * LANES                             # symbols a block
    sym0 = block * block_size                              # int64: first symbol of the block...
    elem0 = 2 * sym0                                       # ...and its first weight
    full = tl.minimum((numel_total + 1) // 2 - sym0, block_size)  # symbols of the block (a tensor's last: fewer)
    count = tl.where(is_row, full, 0)
    weights = tl.where(is_row, tl.minimum(numel_total - elem0, 2 * block_size), 0)
    lo = tl.minimum(tl.maximum(start - elem0, 0), weights)  # weights [lo, hi) of the block are written
    hi = tl.minimum(tl.maximum(stop - elem0, 0), weights)
    span = (hi - lo).to(tl.int32)
    word0 = tl.load(index_ptr + block)
    word_limit = (tl.load(index_ptr + block + 1) - word0).to(tl.int32)
    raw_row = raw_ptr + elem0
    out_row = out_ptr + (elem0 - start)                    # may point outside out: writes are masked
    plane_stride = numel_total.to(tl.int64)
    if TABLE == _TABLE_SHARED:
        _shared_table(table_ptr, ROWS)
    if WINDOW == _WINDOW_RING:
        ring = _ring_rows(ROWS, RING_DECL)                 # declared once, for either path
    else:
        ring = lane                                        # unused
    # every row's block written whole, of the same whole runs of GROUP in every lane (a whole block, or a
    # tensor's last block of a multiple of GROUP * LANES symbols and an even number of weights: that group,
    # codec/lanes.py), in whole loop iterations: no masks needed. Rows past the last block follow the
    # tile's first block.
    whole = ~is_row | ((span == weights) & (weights == 2 * full) & (full % (GROUP * LANES) == 0))
    row_steps = (full // LANES).to(tl.int32)
    whole_steps = tl.reduce(tl.where(whole, row_steps, -1), 0, _min)
    if ((whole_steps == tl.reduce(row_steps, 0, _max)) & (whole_steps % UNROLL == 0)
            & (whole_steps >= EXACT_STEPS)):
        if VECTOR and RAW_PLANES == 1:
            # a run of GROUP symbols, 2 * GROUP 16-bit weights: 2 * GROUP raw bytes and 4 * GROUP output bytes,
            # aligned (DecodeItem.can_vector)
            if GROUP == 1:
                raw_vec = raw_ptr.to(tl.pointer_type(tl.int16)) + sym0 + lane
                out_vec = out_ptr.to(tl.pointer_type(tl.int32)) + (elem0 - start) // 2 + lane
            else:
                raw_vec = raw_ptr.to(tl.pointer_type(tl.int32)) + sym0 // 2 + lane
                out_vec = out_ptr.to(tl.pointer_type(tl.int64)) + (elem0 - start) // 4 + lane
        else:
            raw_vec = raw_row   # unused
            out_vec = out_row   # unused
        _decode_whole(whole_steps, lane, is_row, raw_row, out_row, raw_vec, out_vec, words_ptr, word0, word_limit,
                      ring, plane_stride, table_ptr, 2 * whole_steps * LANES - 1, ROWS, RAW_PLANES, PREFIX, TABLE, PREFETCH,
                      UNROLL, WINDOW, GROUP, VECTOR)
    else:
        # a block whose length is not a multiple of GROUP * LANES has group 1 (codec/lanes.py)
        grouped = count % (GROUP * LANES) == 0
        group_shift = tl.where(grouped, GROUP.bit_length() - 1, 0).to(tl.int32)
        group = tl.where(grouped, GROUP, 1).to(tl.int64)
        # steps until every written weight is decoded: whole runs of the rows' groups
        needed = ((hi + 1) // 2 + group * LANES - 1) // (group * LANES) * group
        num_steps = tl.reduce(needed, 0, _max).to(tl.int32)
        _decode_partial(num_steps, lane, group_shift, group.to(tl.int32) - 1, count.to(tl.int32), lo.to(tl.int32),
                        span.to(tl.uint32), raw_row, out_row, words_ptr, word0, word_limit, ring, plane_stride,
                        table_ptr, ROWS, RAW_PLANES, PREFIX, TABLE, PREFETCH, UNROLL, WINDOW)


@triton.jit
def _decode_lanes_kernel(words_ptr, index_ptr, table_ptr, raw_ptr, out_ptr, numel_total, start, stop,
                         first_block, num_blocks, steps, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr,
                         PREFIX: tl.constexpr, TABLE: tl.constexpr, PREFETCH: tl.constexpr,
                         UNROLL: tl.constexpr, WINDOW: tl.constexpr, GROUP: tl.constexpr, VECTOR: tl.constexpr,
                         RING_DECL: tl.constexpr):
    # words_ptr int16 [W] lane words; index_ptr int64 [blocks + 1] word offset of each block;
    # table_ptr int32 [8192] decode table; raw_ptr uint8 [RAW_PLANES, numel_total]; out_ptr int16/int32 [stop - start]
    _decode_rows(words_ptr.to(tl.pointer_type(tl.uint16)), index_ptr, table_ptr,
                 raw_ptr, out_ptr, numel_total, start, stop, first_block, num_blocks, steps, tl.program_id(0),
                 ROWS, RAW_PLANES, PREFIX, TABLE, PREFETCH, UNROLL, WINDOW, GROUP, VECTOR, RING_DECL)


# One row of the int64 descriptor table of a batched launch (see DecodePlan).
_F_WORDS, _F_INDEX, _F_TABLE, _F_RAW, _F_OUT = 0, 1, 2, 3, 4          # data pointers
_F_NUMEL, _F_START, _F_STOP, _F_FIRST_BLOCK, _F_NUM_BLOCKS, _F_STEPS, _F_FIRST_TILE = 5, 6, 7, 8, 9, 10, 11
_FIELDS = 12
F_WORDS, F_INDEX, F_TABLE, F_RAW, F_OUT = (tl.constexpr(f) for f in (_F_WORDS, _F_INDEX, _F_TABLE, _F_RAW, _F_OUT))
F_NUMEL, F_START, F_STOP = tl.constexpr(_F_NUMEL), tl.constexpr(_F_START), tl.constexpr(_F_STOP)
F_FIRST_BLOCK, F_NUM_BLOCKS = tl.constexpr(_F_FIRST_BLOCK), tl.constexpr(_F_NUM_BLOCKS)
F_STEPS, F_FIRST_TILE, FIELDS = tl.constexpr(_F_STEPS), tl.constexpr(_F_FIRST_TILE), tl.constexpr(_FIELDS)


@triton.jit
def _decode_many_kernel(desc_ptr, num_items, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr, PREFIX: tl.constexpr,
                        TABLE: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr, WINDOW: tl.constexpr,
                        GROUP: tl.constexpr, VECTOR: tl.constexpr, RING_DECL: tl.constexpr):
    # desc_ptr int64 [num_items, FIELDS]: one packed tensor (or row range of one) per row, then
    # [number of programs]: the item each program decodes (programs [first_tile, next item's
    # first_tile) decode that item, ROWS blocks each)
    pid = tl.program_id(0)
    item = tl.load(desc_ptr + num_items * FIELDS + pid)
    d = desc_ptr + item * FIELDS
    if RAW_PLANES == 1:
        out_ptr = tl.load(d + F_OUT).to(tl.pointer_type(tl.int16))
    else:
        out_ptr = tl.load(d + F_OUT).to(tl.pointer_type(tl.int32))
    _decode_rows(tl.load(d + F_WORDS).to(tl.pointer_type(tl.uint16)),
                 tl.load(d + F_INDEX).to(tl.pointer_type(tl.int64)),
                 tl.load(d + F_TABLE).to(tl.pointer_type(tl.int32)), tl.load(d + F_RAW).to(tl.pointer_type(tl.uint8)),
                 out_ptr, tl.load(d + F_NUMEL), tl.load(d + F_START),
                 tl.load(d + F_STOP), tl.load(d + F_FIRST_BLOCK).to(tl.int32),
                 tl.load(d + F_NUM_BLOCKS).to(tl.int32), tl.load(d + F_STEPS).to(tl.int32),
                 pid - tl.load(d + F_FIRST_TILE).to(tl.int32), ROWS, RAW_PLANES, PREFIX, TABLE, PREFETCH,
                 UNROLL, WINDOW, GROUP, VECTOR, RING_DECL)


# ----------------------------------------------------------------------------- launchers

OUT_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}  # output of each coded dtype
_INT_VIEWS = {2: torch.int16, 4: torch.int32}


def decode_lanes(words: torch.Tensor, index: torch.Tensor, table: torch.Tensor, raw: torch.Tensor, out: torch.Tensor, *,
                 numel_total: int, steps: int, dtype: str, start: int = 0, group: int = 1) -> None:
    """Decode elements [start, start + out.numel()) of a packed tensor into `out` (contiguous, dtype bf16/f16/f32
    matching `dtype` "BF16"/"F16"/"F32"), on the current CUDA stream, with no allocation and no host
    synchronization. `group` is the tensor's (PackedTensor.group)."""
    launch_decode(DecodeItem(words, index, table, raw, out, numel_total, steps, dtype, start, group))


@dataclass(frozen=True)
class DecodeItem:
    """The arguments of one `decode_lanes` call: a packed tensor, or a range of its elements, and its output."""

    words: torch.Tensor      # uint8 bytes of the uint16 lane words
    index: torch.Tensor      # uint8 bytes of the int64 block offsets
    table: torch.Tensor      # int32[8192] decode table (PackedTensor.decode_table)
    raw: torch.Tensor        # uint8 [planes * numel_total]
    out: torch.Tensor        # contiguous bf16/f16/f32 of the decoded range
    numel_total: int
    steps: int
    dtype: str               # "BF16", "F16" or "F32"
    start: int = 0
    group: int = 1           # neighbouring weights a lane holds in a run (codec/lanes.py)

    @classmethod
    def from_packed(cls, packed, out: torch.Tensor, start: int = 0) -> "DecodeItem":
        """Item for a PackedTensor with `lanes` encoding, decoding elements [start, start + out.numel())."""
        return cls(packed.streams["words"], packed.streams["index"], packed.decode_table(out.device),
                   packed.streams["raw"], out, packed.numel, packed.steps, packed.dtype, start, packed.group)

    def check(self) -> floats.FloatLayout:
        return _check_args(self.words, self.index, self.table, self.raw, self.out, self.numel_total, self.steps,
                           self.dtype, self.start, self.group)

    def can_vector(self) -> bool:
        """Whether the kernel may read a run's raw bytes and write its weights with one access each:
        16-bit weights, the runs (2 * group weights) aligned in `raw` and `out` (a view at an odd offset
        is not); fp32, a symbol's two weights (each raw plane's two bytes one load, both weights one store)."""
        if floats.LAYOUTS[self.dtype].raw_planes == 3:
            return (self.raw.data_ptr() % 2 == 0 and self.numel_total % 2 == 0
                    and (self.out.data_ptr() - 4 * self.start) % 8 == 0)
        run = 2 * self.group
        return self.raw.data_ptr() % run == 0 and (self.out.data_ptr() - 2 * self.start) % (2 * run) == 0

    def can_ring(self) -> bool:
        """Whether the kernel may stage the words in shared memory (WINDOW_RING): it copies them 8 bytes
        at a time from 8-byte aligned addresses."""
        return self.words.data_ptr() % 8 == 0

    def pieces(self) -> list["DecodeItem"]:
        """The item as up to three items: a partial first block, the whole blocks, a partial last block
        (the whole blocks then decode without masks, in tiles of their own)."""
        block_size = 2 * _LANES * self.steps                # weights a block
        start, stop = self.start, self.start + self.out.numel()
        whole_start = min(-(-start // block_size) * block_size, stop)
        whole_stop = max(stop // block_size * block_size, whole_start)
        cuts = sorted({start, whole_start, whole_stop, stop})
        flat = self.out.reshape(-1)
        return [replace(self, out=flat[a - start : b - start], start=a) for a, b in zip(cuts, cuts[1:])]

    def blocks(self) -> tuple[int, int]:
        """(first block, number of blocks) that hold the decoded range."""
        return lanes.blocks_of(self.start, self.start + self.out.numel(), self.steps)


def launch_decode(item: DecodeItem, config: DecodeConfig | None = None) -> None:
    """Decode one item with an explicit kernel configuration (DEFAULT_CONFIG when None)."""
    layout = item.check()
    if item.out.numel() == 0:
        return
    config = _effective_config(config or DEFAULT_CONFIG, item.out.device, batched=False)
    first_block, num_blocks = item.blocks()
    args = (item.words.view(torch.int16), item.index.view(torch.int64), item.table, item.raw,
            item.out.view(_INT_VIEWS[layout.width]), item.numel_total, item.start, item.start + item.out.numel(),
            first_block, num_blocks, item.steps)
    shape = _KernelShape(layout.raw_planes, item.group, item.can_vector(), item.can_ring())

    def launch(cfg: DecodeConfig):
        return _decode_lanes_kernel[(triton.cdiv(num_blocks, cfg.rows),)](*args, **shape.constexprs(cfg))

    _launch_checked(launch, config, batched=False)


def decode_lanes_many(items: list[DecodeItem], config: DecodeConfig | None = None) -> None:
    """Decode several items with one launch per kind of item (builds a throw-away DecodePlan).

    This allocates the plan's descriptor table; to decode the same items repeatedly without
    allocating, build a DecodePlan once and call its `launch()`.
    """
    DecodePlan(items, config).launch()


@dataclass(frozen=True, order=True)
class _KernelShape:
    """What a compiled kernel is specialized for, beside its DecodeConfig."""

    raw_planes: int    # 1: 16-bit weights, 3: fp32
    group: int         # the tensors' group
    vector: bool       # runs read and written with one access (DecodeConfig.vector and DecodeItem.can_vector)
    ring: bool         # the words may be staged in a ring (DecodeItem.can_ring)

    def constexprs(self, config: DecodeConfig) -> dict:
        # the shared table and the ring need the ballot's tile (one lane a thread)
        table = config.table if config.table != TABLE_SHARED or config.prefix == PREFIX_BALLOT else TABLE_GLOBAL
        ring_ok = self.ring and config.prefix == PREFIX_BALLOT
        window = config.window if config.window != WINDOW_RING or ring_ok else WINDOW_LOAD
        vector = self.vector and config.vector
        # steps an iteration: whole runs, at most two of them with runs read a loop iteration ahead
        unroll = min(max(config.unroll, self.group), 2 * self.group if vector else 4)
        return dict(ROWS=config.rows, RAW_PLANES=self.raw_planes, PREFIX=config.prefix, TABLE=table,
                    PREFETCH=config.prefetch, UNROLL=unroll, WINDOW=window,
                    GROUP=self.group, VECTOR=vector, num_warps=config.num_warps,
                    RING_DECL=ring_declaration(config.rows) if window == WINDOW_RING else "")


class DecodePlan:
    """Several items (e.g. the seven matrices of a layer) decoded by one launch per kind of item (output
    width and group: one launch for a layer of bf16 weights).

    Built once: it checks every item and copies a small int64 descriptor table (pointers and
    sizes, one row per item) to the device. `launch()` then runs on the current stream with no
    allocation and no host synchronization. The plan keeps every tensor it points to alive.
    Without a `config`, each launch takes the default one with the widest tile (rows) that leaves at
    most 1/8 of its rows past the end of their items (fill_rows): many small tensors, like a
    MiniLM's, decode faster in narrow tiles, large ones in the default 8-row tiles.
    """

    def __init__(self, items: list[DecodeItem], config: DecodeConfig | None = None):
        for item in items:
            item.check()
        items = [item for item in items if item.out.numel() > 0]
        devices = {str(item.out.device) for item in items}
        if len(devices) > 1:
            raise UnweightError(f"DecodePlan: items are on several devices ({', '.join(sorted(devices))}); "
                                f"build one plan per device")
        self.items = items
        self._launches = []   # (kernel shape, config, descriptor table, number of items, number of programs)
        kinds: dict[tuple[int, int], list[DecodeItem]] = {}
        for item in items:
            kinds.setdefault((floats.LAYOUTS[item.dtype].raw_planes, item.group), []).extend(item.pieces())
        for (planes, group), kind in sorted(kinds.items()):
            shape = _KernelShape(planes, group, all(item.can_vector() for item in kind),
                                 all(item.can_ring() for item in kind))
            if config is None:
                rows = fill_rows(kind, DEFAULT_CONFIG.rows)
                config_of_kind = replace(DEFAULT_CONFIG, rows=rows, num_warps=rows)
            else:
                config_of_kind = config
            cfg = _effective_config(config_of_kind, kind[0].out.device, batched=True)
            table, num_tiles = _descriptor_table(kind, cfg.rows)
            self._launches.append((shape, cfg, table.to(kind[0].out.device), len(kind), num_tiles))

    def launch(self) -> None:
        for shape, cfg, table, num_items, num_tiles in self._launches:
            def launch(c: DecodeConfig, table=table, num_items=num_items, num_tiles=num_tiles, shape=shape):
                return _decode_many_kernel[(num_tiles,)](table, num_items, **shape.constexprs(c))

            _launch_checked(launch, _effective_config(cfg, table.device, batched=True), batched=True)

    def configs(self) -> list[DecodeConfig]:
        """The configuration each launch uses now (one per kind of item)."""
        return [_effective_config(cfg, table.device, batched=True) for _, cfg, table, _, _ in self._launches]


def fill_rows(items: list[DecodeItem], widest: int) -> int:
    """The widest tile, in rows (blocks), up to `widest`, that leaves at most 1/8 of the rows of a
    launch over `items` past the end of their item (those rows decode a copy or nothing)."""
    blocks = [item.blocks()[1] for item in items]
    rows = widest
    while rows > 1 and sum(-(-b // rows) * rows for b in blocks) * 7 > sum(blocks) * 8:
        rows //= 2
    return rows


def _descriptor_table(items: list[DecodeItem], rows: int) -> tuple[torch.Tensor, int]:
    """The int64 descriptor table of _decode_many_kernel: [items, FIELDS] rows, then the item of each
    program (one load a program finds its item, however many items a launch has), and the number
    of programs in all."""
    table = torch.zeros(len(items), _FIELDS, dtype=torch.int64)
    tiles = [triton.cdiv(item.blocks()[1], rows) for item in items]
    first_tile = 0
    for k, item in enumerate(items):
        first_block, num_blocks = item.blocks()
        fields = {_F_WORDS: item.words.data_ptr(), _F_INDEX: item.index.data_ptr(), _F_TABLE: item.table.data_ptr(),
                  _F_RAW: item.raw.data_ptr(), _F_OUT: item.out.data_ptr(), _F_NUMEL: item.numel_total,
                  _F_START: item.start, _F_STOP: item.start + item.out.numel(), _F_FIRST_BLOCK: first_block,
                  _F_NUM_BLOCKS: num_blocks, _F_STEPS: item.steps, _F_FIRST_TILE: first_tile}
        for field, value in fields.items():
            table[k, field] = value
        first_tile += tiles[k]
    item_of_tile = torch.repeat_interleave(torch.arange(len(items), dtype=torch.int64), torch.tensor(tiles))
    return torch.cat([table.reshape(-1), item_of_tile]), first_tile


def _launch_checked(launch, config: DecodeConfig, batched: bool) -> None:
    """Launch; if the ballot prefix turns out unsafe for the compiled layout, decode again without it."""
    compiled = launch(config)
    if config.prefix == PREFIX_BALLOT and not _ballot_layout_ok(compiled):
        # the same outputs are decoded again, in stream order, with the portable prefix
        logger.warning("decode kernel: ballot prefix unsafe for %s; using the scan prefix", config)
        _BALLOT_UNSAFE.add((config, batched))
        launch(config.without_ballot())


def _check_args(words, index, table, raw, out, numel_total, steps, dtype, start, group) -> floats.FloatLayout:
    """Refuse inputs the kernel would misread; every check is on metadata (no device sync)."""
    if dtype not in OUT_DTYPES:
        raise UnweightError(f"decode_lanes: dtype {dtype!r} is not coded with lanes; expected one of "
                            f"{', '.join(OUT_DTYPES)}")
    layout = floats.LAYOUTS[dtype]
    if out.dtype != OUT_DTYPES[dtype] or not out.is_contiguous():
        raise UnweightError(f"decode_lanes: output must be a contiguous {OUT_DTYPES[dtype]} tensor, got "
                            f"{out.dtype} with strides {tuple(out.stride())}")
    if group not in _GROUPS or steps % group:
        raise UnweightError(f"decode_lanes: group {group!r} with steps {steps}: the group must be one of "
                            f"{_GROUPS} and divide steps")
    if steps < 1 or numel_total < 0 or not 0 <= start <= start + out.numel() <= numel_total:
        raise UnweightError(f"decode_lanes: elements [{start}, {start + out.numel()}) are not inside a tensor of "
                            f"{numel_total} elements (steps={steps})")
    num_blocks = lanes.num_blocks(numel_total, steps)
    expected = {"words": (words, torch.uint8, None), "index": (index, torch.uint8, 8 * (num_blocks + 1)),
                "raw": (raw, torch.uint8, layout.raw_planes * numel_total),
                "table": (table, torch.int32, TABLE_SIZE)}
    for name, (t, want_dtype, want_numel) in expected.items():
        if t.dtype != want_dtype or t.dim() != 1 or not t.is_contiguous():
            raise UnweightError(f"decode_lanes: {name} must be a contiguous 1-D {want_dtype} tensor, got "
                                f"{t.dtype} of shape {tuple(t.shape)}")
        if want_numel is not None and t.numel() != want_numel:
            raise UnweightError(f"decode_lanes: {name} holds {t.numel()} elements, expected {want_numel} "
                                f"for {numel_total} {dtype} elements with steps={steps}")
        if t.device != out.device:
            raise UnweightError(f"decode_lanes: {name} is on {t.device} but the output is on {out.device}; "
                                f"move the packed tensor with .to({str(out.device)!r})")
    if words.numel() % 2 or words.data_ptr() % 2 or index.data_ptr() % 8:
        raise UnweightError("decode_lanes: words must be whole, 2-byte aligned uint16 values and index 8-byte "
                            "aligned int64 values (copy the streams into fresh tensors)")
    if out.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UnweightError(f"decode_lanes: tensors are on {out.device}; the kernel needs a CUDA device "
                            f"(or TRITON_INTERPRET=1 to run it on the CPU)")
    return layout


def effective_config(config: DecodeConfig | None, device: torch.device, batched: bool = False) -> DecodeConfig:
    """The configuration a launch with `config` runs on `device`, after the fallbacks known so far
    (interpreter: no inline PTX; ballot prefix found unsafe for the compiled layout)."""
    return _effective_config(config or DEFAULT_CONFIG, torch.device(device), batched)


def _effective_config(config: DecodeConfig, device: torch.device, batched: bool) -> DecodeConfig:
    """Drop inline PTX where it cannot run (interpreter) or where it proved unsafe."""
    if device.type != "cuda":
        return config if config.prefix == PREFIX_SCAN and not config.prefetch else config.portable()
    if config.prefix == PREFIX_BALLOT and (config, batched) in _BALLOT_UNSAFE:
        return config.without_ballot()
    return config


_BALLOT_CHECKED: dict = {}     # id(compiled kernel) -> (kernel, whether its ballot operands are lane-major)
_BALLOT_UNSAFE: set = set()    # (config, batched) whose compiled layout failed the check


def _ballot_layout_ok(compiled) -> bool:
    """Whether a compiled kernel keeps lane j of every row on hardware lane j (checked once per kernel).

    The ballot prefix counts need flags over hardware lanes, so it is only correct when the
    flat tile tensors it sees use the plain blocked layout: one element per thread along
    the lanes, the 32 threads of a warp across them. The compiled TTGIR says which layout
    Triton chose; anything unexpected (including a TTGIR we cannot read) counts as unsafe.
    """
    key = id(compiled)  # the kernel is kept in the entry, so its id is not reused
    if key not in _BALLOT_CHECKED:
        try:
            ok = ballot_layout_is_lane_major(compiled.asm["ttgir"])
        except Exception as e:  # noqa: BLE001 - any failure means: do not trust the ballot path
            logger.warning("decode kernel: cannot inspect the compiled layout (%s)", e)
            ok = False
        _BALLOT_CHECKED[key] = (compiled, ok)
    return _BALLOT_CHECKED[key][1]


def ballot_layout_is_lane_major(ttgir: str) -> bool:
    """True when every inline-asm ballot operand has layout sizePerThread=[1], threadsPerWarp=[32]."""
    aliases = dict(re.findall(r"^(#\w+) = #(?:ttg|triton_gpu)\.blocked<\{([^}]*)\}>", ttgir, flags=re.M))
    ballots = [line for line in ttgir.splitlines()
               if "elementwise_inline_asm" in line and ("vote.sync" in line or "shfl.sync" in line)]
    if not ballots:
        return False
    for line in ballots:
        encodings = set(re.findall(r"tensor<\d+xi32, (#\w+)>", line))
        if not encodings:
            return False
        for enc in encodings:
            spec = aliases.get(enc, "").replace(" ", "")
            if "sizePerThread=[1]" not in spec or "threadsPerWarp=[32]" not in spec:
                return False
    return True
