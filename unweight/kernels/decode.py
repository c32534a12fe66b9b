"""Triton decoder for the interleaved-lane bitstream: packed streams -> bf16/fp16/fp32 weights on the GPU.

One warp decodes one block: thread j of the warp is lane j, and the whole warp advances
one step (one symbol per lane) at a time, so a step's 32 outputs are neighbours in memory.
A program holds ROWS blocks as a [ROWS, LANES] tile; rows are independent dependency
chains, so a thread with several rows overlaps their memory latencies.

Bit layouts (see unweight/codec/lanes.py and floats.py):

    lane buffer  uint32, MSB-aligned: bit 31 is the next unread bit; `nbits` are valid.
                 refill (nbits < 12):  buf |= word << (16 - nbits); nbits += 16
                 decode:               entry = table[buf >> 20]; buf <<= entry >> 8
    table entry  int16: symbol | length << 8            (length 1..12)
    bf16 / fp16  raw = s << 7 | bits 0..6               value = (raw & 0x80) << 8 | sym << 7 | raw & 0x7F
    fp32         planes p0 = bits 0..7, p1 = bits 8..15, p2 = s << 7 | bits 16..22
                 value = (p2 & 0x80) << 24 | sym << 23 | (p2 & 0x7F) << 16 | p1 << 8 | p0

Triton is imported by this module; `unweight.kernels` itself imports nothing, so the
rest of unweight works without it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ..codec import floats
from ..codec.huffman import MAX_CODE_LEN as _MAX_CODE_LEN
from ..codec.huffman import TABLE_SIZE
from ..codec.lanes import LANES as _LANES
from ..codec.lanes import WORD_BITS as _WORD_BITS
from ..errors import UnweightError

logger = logging.getLogger(__name__)

LANES = tl.constexpr(_LANES)                   # lanes of a block = threads of a warp
WORD_BITS = tl.constexpr(_WORD_BITS)           # a refill brings one 16-bit word
MAX_CODE_LEN = tl.constexpr(_MAX_CODE_LEN)     # refill below this many buffered bits
PEEK_SHIFT = tl.constexpr(32 - _MAX_CODE_LEN)  # buf >> PEEK_SHIFT = the next 12 bits
SMALL_BITS = tl.constexpr(6)                   # TABLE_SHUFFLE: codes up to 6 bits come from registers
SMALL_STRIDE = tl.constexpr(1 << (_MAX_CODE_LEN - 6))  # table entries per 6-bit prefix
PREFETCH_STEPS = tl.constexpr(8)               # PREFETCH: raw bytes this many steps ahead...
PREFETCH_WORDS = tl.constexpr(128)             # ...and lane words this many words ahead

# Word-slot prefix over the lanes of a step (which word each refilling lane takes).
PREFIX_SCAN = 0     # tl.cumsum + tl.sum along the lane axis: portable, runs in the interpreter
PREFIX_BALLOT = 1   # vote.ballot + popc in inline PTX: CUDA only, needs lane j on hardware lane j
# Where the 4096-entry decode table is read.
TABLE_GLOBAL = 0    # every lookup from global memory (the 8 KiB table stays in L1)
TABLE_SHUFFLE = 1   # codes <= 6 bits from a 64-entry copy in registers (warp shuffle), longer from global
_PREFIX_BALLOT = tl.constexpr(PREFIX_BALLOT)
_TABLE_SHUFFLE = tl.constexpr(TABLE_SHUFFLE)


@dataclass(frozen=True)
class DecodeConfig:
    """Tunables of the decode kernel; benchmarks/gpu_decode.py sweeps them on the target GPU."""

    rows: int = 4            # blocks a program decodes at once
    num_warps: int = 4       # warps a program; rows / num_warps blocks per thread
    prefix: int = PREFIX_BALLOT
    table: int = TABLE_GLOBAL
    prefetch: bool = True    # PTX prefetch of raw bytes and lane words ahead of use (CUDA only)
    unroll: int = 2          # steps per loop iteration

    def __post_init__(self):
        checks = {"rows": self.rows >= 1 and self.rows & (self.rows - 1) == 0,
                  "num_warps": self.num_warps in (1, 2, 4, 8, 16),
                  "prefix": self.prefix in (PREFIX_SCAN, PREFIX_BALLOT),
                  "table": self.table in (TABLE_GLOBAL, TABLE_SHUFFLE),
                  "unroll": self.unroll in (1, 2, 4)}
        for name, ok in checks.items():
            if not ok:
                raise UnweightError(f"DecodeConfig.{name}={getattr(self, name)!r} is not allowed "
                                    f"(rows: a power of two; num_warps: 1..16, a power of two; "
                                    f"prefix: {PREFIX_SCAN} or {PREFIX_BALLOT}; table: {TABLE_GLOBAL} or "
                                    f"{TABLE_SHUFFLE}; unroll: 1, 2 or 4)")

    def portable(self) -> "DecodeConfig":
        """The same tile without inline PTX, for the Triton interpreter."""
        return replace(self, prefix=PREFIX_SCAN, prefetch=False)


DEFAULT_CONFIG = DecodeConfig()


# ----------------------------------------------------------------------------- kernel


@triton.jit
def _word_slots(need, PREFIX: tl.constexpr):
    """Per lane: how many lanes before it take a word this step; per row: how many in all."""
    # need: int32 [ROWS, LANES], 0 or 1
    if PREFIX == _PREFIX_BALLOT:
        # One vote gives the step's need flags as a bit mask over hardware lanes; the
        # tile layout puts lane j of every row on hardware lane j (checked at compile time).
        before, total = tl.inline_asm_elementwise(
            asm="""{
            .reg .pred p;
            .reg .b32 m, lt;
            setp.ne.s32 p, $2, 0;
            vote.sync.ballot.b32 m, p, 0xffffffff;
            mov.u32 lt, %lanemask_lt;
            and.b32 lt, lt, m;
            popc.b32 $0, lt;
            popc.b32 $1, m;
            }""",
            constraints="=r,=r,r", args=[need], dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        before = tl.cumsum(need, axis=1) - need
        total = tl.sum(need, axis=1)[:, None]
    return before, total


@triton.jit
def _lookup(buf, table_ptr, small, TABLE: tl.constexpr):
    """Decode-table entry (symbol | length << 8, int32) for the next 12 bits of each buffer."""
    peek = (buf >> PEEK_SHIFT).to(tl.int32)
    if TABLE == _TABLE_SHUFFLE:
        # small: int32 [ROWS, LANES], lane k holds the entries of 6-bit prefixes 2k and 2k+1
        top = peek >> (MAX_CODE_LEN - SMALL_BITS)
        pair = tl.gather(small, top >> 1, axis=1)
        entry = (pair >> ((top & 1) * 16)) & 0xFFFF
        long_code = (entry >> 8) > SMALL_BITS
        full = tl.load(table_ptr + peek, mask=long_code, other=0).to(tl.int32)
        entry = tl.where(long_code, full, entry)
    else:
        entry = tl.load(table_ptr + peek).to(tl.int32)
    return entry


@triton.jit
def _small_table(table_ptr, ROWS: tl.constexpr):
    """Entries of every 6-bit prefix, two per lane: int32 [ROWS, LANES] (same for every row)."""
    k = tl.arange(0, LANES)[None, :] + tl.zeros([ROWS, 1], tl.int32)
    lo = tl.load(table_ptr + (2 * k) * SMALL_STRIDE).to(tl.int32) & 0xFFFF
    hi = tl.load(table_ptr + (2 * k + 1) * SMALL_STRIDE).to(tl.int32) & 0xFFFF
    return lo | (hi << 16)


@triton.jit
def _prefetch(ptr):
    """Ask for the line holding `ptr` in L1 without waiting for it (PTX prefetch)."""
    tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n mov.u32 $0, 0;", "=r,l", [ptr],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _merge(sym, raw_at, plane_stride, write, RAW_PLANES: tl.constexpr):
    """Reassemble the original bits from the exponent symbol and the raw plane bytes."""
    if RAW_PLANES == 1:
        raw = tl.load(raw_at, mask=write, other=0).to(tl.int32)
        value = (((raw & 0x80) << 8) | (sym << 7) | (raw & 0x7F)).to(tl.int16)
    else:
        p0 = tl.load(raw_at, mask=write, other=0).to(tl.uint32)
        p1 = tl.load(raw_at + plane_stride, mask=write, other=0).to(tl.uint32)
        p2 = tl.load(raw_at + 2 * plane_stride, mask=write, other=0).to(tl.uint32)
        bits = ((p2 & 0x80) << 24) | (sym.to(tl.uint32) << 23) | ((p2 & 0x7F) << 16) | (p1 << 8) | p0
        value = bits.to(tl.int32, bitcast=True)
    return value


@triton.jit
def _decode_step(t, buf, nbits, wpos, word_row, word_limit, raw_row, out_row, count, lo, hi,
                 plane_stride, table_ptr, small, RAW_PLANES: tl.constexpr, PREFIX: tl.constexpr,
                 TABLE: tl.constexpr, PREFETCH: tl.constexpr):
    """Step t of every row: refill the lanes that run low, decode one symbol a lane, store it."""
    off = t * LANES + tl.arange(0, LANES)[None, :]         # [1, LANES] element offset in the block
    active = off < count                                   # [ROWS, LANES]; false past a partial block
    need = (active & (nbits < MAX_CODE_LEN)).to(tl.int32)
    before, total = _word_slots(need, PREFIX)
    slot = wpos + before                                   # word index inside the row's stream
    fetch = (need != 0) & (slot < word_limit)              # never read past the block's words
    word = tl.load(word_row + slot, mask=fetch, other=0).to(tl.uint32) & 0xFFFF
    # word is 0 where no refill happens, so the shift amount only matters for refills
    shift = (nbits * -1 + WORD_BITS) & 31               # in 5..16 for a refilling lane
    buf |= word << shift.to(tl.uint32)
    nbits += need * WORD_BITS
    entry = _lookup(buf, table_ptr, small, TABLE)
    length = entry >> 8
    buf <<= length.to(tl.uint32)
    nbits -= length
    wpos += total
    if PREFETCH:
        for p in tl.static_range(RAW_PLANES):
            _prefetch(raw_row + p * plane_stride + (t + PREFETCH_STEPS) * LANES)
        _prefetch(word_row + wpos + PREFETCH_WORDS)
    write = (off >= lo) & (off < hi)
    tl.store(out_row + off, _merge(entry & 0xFF, raw_row + off, plane_stride, write, RAW_PLANES), mask=write)
    return buf, nbits, wpos


@triton.jit
def _decode_rows(words_ptr, index_ptr, table_ptr, raw_ptr, out_ptr, numel_total, start, stop, first_block,
                 num_blocks, steps, tile, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr, PREFIX: tl.constexpr,
                 TABLE: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr):
    """Decode blocks first_block + tile * ROWS + [0, ROWS), writing elements [start, stop) to out."""
    rel = tile * ROWS + tl.arange(0, ROWS)                 # [ROWS] block, relative to first_block
    is_row = rel < num_blocks
    block = (first_block + rel).to(tl.int64)
    block_size = steps * LANES
    elem0 = block * block_size                             # int64 [ROWS] first element of the block
    count = tl.where(is_row, tl.minimum(numel_total - elem0, block_size), 0)
    lo = tl.minimum(tl.maximum(start - elem0, 0), count).to(tl.int32)[:, None]   # in-range offsets
    hi = tl.minimum(tl.maximum(stop - elem0, 0), count).to(tl.int32)[:, None]    # [lo, hi) of the block
    count = count.to(tl.int32)[:, None]
    word0 = tl.load(index_ptr + block, mask=is_row, other=0)
    word_limit = (tl.load(index_ptr + block + 1, mask=is_row, other=0) - word0).to(tl.int32)[:, None]
    word_row = words_ptr + word0[:, None]                  # [ROWS, 1] start of each row's stream
    raw_row = raw_ptr + elem0[:, None]
    out_row = out_ptr + (elem0 - start)[:, None]           # may point before out: writes are masked
    plane_stride = numel_total.to(tl.int64)
    if TABLE == _TABLE_SHUFFLE:
        small = _small_table(table_ptr, ROWS)
    else:
        small = 0  # unused
    buf = tl.zeros([ROWS, LANES], tl.uint32)
    nbits = tl.zeros([ROWS, LANES], tl.int32)
    wpos = tl.zeros([ROWS, LANES], tl.int32)             # words the row has taken (same in every lane)
    num_steps = tl.cdiv(tl.max(hi), LANES)                 # later steps hold no element in range
    for t0 in range(0, num_steps, UNROLL):
        for u in tl.static_range(UNROLL):
            buf, nbits, wpos = _decode_step(t0 + u, buf, nbits, wpos, word_row, word_limit, raw_row, out_row,
                                            count, lo, hi, plane_stride, table_ptr, small, RAW_PLANES,
                                            PREFIX, TABLE, PREFETCH)


@triton.jit
def _decode_lanes_kernel(words_ptr, index_ptr, table_ptr, raw_ptr, out_ptr, numel_total, start, stop,
                         first_block, num_blocks, steps, ROWS: tl.constexpr, RAW_PLANES: tl.constexpr,
                         PREFIX: tl.constexpr, TABLE: tl.constexpr, PREFETCH: tl.constexpr,
                         UNROLL: tl.constexpr):
    # words_ptr int16 [W] lane words; index_ptr int64 [blocks + 1] word offset of each block;
    # table_ptr int16 [4096]; raw_ptr uint8 [RAW_PLANES, numel_total]; out_ptr int16/int32 [stop - start]
    _decode_rows(words_ptr, index_ptr, table_ptr, raw_ptr, out_ptr, numel_total, start, stop, first_block,
                 num_blocks, steps, tl.program_id(0), ROWS, RAW_PLANES, PREFIX, TABLE, PREFETCH, UNROLL)


# ----------------------------------------------------------------------------- launcher

_OUT_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_INT_VIEWS = {2: torch.int16, 4: torch.int32}


def decode_lanes(words: torch.Tensor, index: torch.Tensor, table: torch.Tensor, raw: torch.Tensor, out: torch.Tensor, *,
                 numel_total: int, steps: int, dtype: str, start: int = 0) -> None:
    """Decode elements [start, start + out.numel()) of a packed tensor into `out` (contiguous, dtype bf16/f16/f32 matching `dtype` "BF16"/"F16"/"F32"), on the current CUDA stream, with no allocation and no host synchronization."""
    launch_decode(words, index, table, raw, out, numel_total=numel_total, steps=steps, dtype=dtype, start=start)


def launch_decode(words: torch.Tensor, index: torch.Tensor, table: torch.Tensor, raw: torch.Tensor,
                  out: torch.Tensor, *, numel_total: int, steps: int, dtype: str, start: int = 0,
                  config: DecodeConfig | None = None) -> None:
    """`decode_lanes` with an explicit kernel configuration (DEFAULT_CONFIG when None)."""
    layout = _check_args(words, index, table, raw, out, numel_total, steps, dtype, start)
    count = out.numel()
    if count == 0:
        return
    config = _effective_config(config or DEFAULT_CONFIG, out.device, layout.raw_planes)
    block_size = _LANES * steps
    first_block = start // block_size
    num_blocks = -(-(start + count) // block_size) - first_block
    args = (words.view(torch.int16), index.view(torch.int64), table, raw, out.view(_INT_VIEWS[layout.width]),
            numel_total, start, start + count, first_block, num_blocks, steps)
    compiled = _launch(args, config, layout.raw_planes, num_blocks)
    if config.prefix == PREFIX_BALLOT and not _ballot_layout_ok(compiled):
        # decode again over the same output, in stream order, with the portable prefix
        logger.warning("decode kernel: ballot prefix unsafe for %s; using the scan prefix", config)
        _BALLOT_UNSAFE.add((config, layout.raw_planes))
        _launch(args, replace(config, prefix=PREFIX_SCAN), layout.raw_planes, num_blocks)


def _launch(args: tuple, config: DecodeConfig, raw_planes: int, num_blocks: int):
    grid = (triton.cdiv(num_blocks, config.rows),)
    return _decode_lanes_kernel[grid](*args, ROWS=config.rows, RAW_PLANES=raw_planes, PREFIX=config.prefix,
                                      TABLE=config.table, PREFETCH=config.prefetch, UNROLL=config.unroll,
                                      num_warps=config.num_warps)


def _check_args(words, index, table, raw, out, numel_total, steps, dtype, start) -> floats.FloatLayout:
    """Refuse inputs the kernel would misread; every check is on metadata (no device sync)."""
    if dtype not in _OUT_DTYPES:
        raise UnweightError(f"decode_lanes: dtype {dtype!r} is not coded with lanes; expected one of "
                            f"{', '.join(_OUT_DTYPES)}")
    layout = floats.LAYOUTS[dtype]
    if out.dtype != _OUT_DTYPES[dtype] or not out.is_contiguous():
        raise UnweightError(f"decode_lanes: output must be a contiguous {_OUT_DTYPES[dtype]} tensor, got "
                            f"{out.dtype} with strides {tuple(out.stride())}")
    if steps < 1 or numel_total < 0 or not 0 <= start <= start + out.numel() <= numel_total:
        raise UnweightError(f"decode_lanes: elements [{start}, {start + out.numel()}) are not inside a tensor of "
                            f"{numel_total} elements (steps={steps})")
    num_blocks = -(-numel_total // (_LANES * steps))
    expected = {"words": (words, torch.uint8, None), "index": (index, torch.uint8, 8 * (num_blocks + 1)),
                "raw": (raw, torch.uint8, layout.raw_planes * numel_total),
                "table": (table, torch.int16, TABLE_SIZE)}
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


def _effective_config(config: DecodeConfig, device: torch.device, raw_planes: int) -> DecodeConfig:
    """Drop inline PTX where it cannot run (interpreter) or where it proved unsafe."""
    if device.type != "cuda":
        return config.portable()
    if config.prefix == PREFIX_BALLOT and (config, raw_planes) in _BALLOT_UNSAFE:
        return replace(config, prefix=PREFIX_SCAN)
    return config


_BALLOT_CHECKED: dict = {}     # compiled kernel -> whether its ballot operands are lane-major
_BALLOT_UNSAFE: set = set()    # (config, raw_planes) whose compiled layout failed the check


def _ballot_layout_ok(compiled) -> bool:
    """Whether a compiled kernel keeps lane j of every row on hardware lane j (checked once per kernel).

    The ballot prefix counts need flags over hardware lanes, so it is only correct when the
    [ROWS, LANES] tensors it sees use the plain blocked layout: one element per thread along
    the lanes, the 32 threads of a warp across them. The compiled TTGIR says which layout
    Triton chose; anything unexpected (including a TTGIR we cannot read) counts as unsafe.
    """
    if compiled not in _BALLOT_CHECKED:
        try:
            _BALLOT_CHECKED[compiled] = ballot_layout_is_lane_major(compiled.asm["ttgir"])
        except Exception as e:  # noqa: BLE001 - any failure means: do not trust the ballot path
            logger.warning("decode kernel: cannot inspect the compiled layout (%s)", e)
            _BALLOT_CHECKED[compiled] = False
    return _BALLOT_CHECKED[compiled]


def ballot_layout_is_lane_major(ttgir: str) -> bool:
    """True when every inline-asm ballot operand has layout sizePerThread=[1, 1], threadsPerWarp=[1, 32]."""
    aliases = dict(re.findall(r"^(#[\w]+) = #ttg\.blocked<\{([^}]*)\}>", ttgir, flags=re.M))
    ballots = [line for line in ttgir.splitlines() if "elementwise_inline_asm" in line and "vote.sync" in line]
    if not ballots:
        return False
    for line in ballots:
        encodings = set(re.findall(r"tensor<\d+x\d+xi32, (#[\w]+)>", line))
        if not encodings:
            return False
        for enc in encodings:
            spec = aliases.get(enc, "").replace(" ", "")
            if "sizePerThread=[1,1]" not in spec or "threadsPerWarp=[1,32]" not in spec:
                return False
    return True
