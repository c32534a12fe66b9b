"""The Triton decoder, run by the Triton interpreter on the CPU: bit-exact against the CPU decoder.

TRITON_INTERPRET must be set when `@triton.jit` decorates the kernels (the decorator picks
the interpreter at that moment), so this module sets it, imports unweight.kernels.decode
(reloading it if an earlier import compiled it for a GPU) and checks that the kernel objects
are the interpreter's. The kernels call only Triton builtins, so it does not matter when
triton.language itself was first imported. The variable is restored right after the import
and set again only while these tests run, so other modules see the environment they expect.
This is more reliable than a subprocess per case and keeps failures per test. Inputs are
small (steps of 4 to 16 symbols) because the interpreter is slow.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from unweight.errors import UnweightError
from unweight.packed import PackedTensor

from ..triton_interpreter import interpreted
from .synthetic import bits, pack

decode = interpreted("unweight.kernels.decode", "_decode_lanes_kernel")

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
POISON = {2: 0x5A5A, 4: 0x5A5A5A5A}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert type(decode._decode_lanes_kernel).__name__ == "InterpretedFunction"
    assert type(decode._decode_many_kernel).__name__ == "InterpretedFunction"


def poisoned(count: int, dtype: torch.dtype, margin: int = 0) -> torch.Tensor:
    """A buffer of count + 2 * margin elements filled with a marker bit pattern."""
    width = torch.empty(0, dtype=dtype).element_size()
    int_dtype = {2: torch.int16, 4: torch.int32}[width]
    return torch.full((count + 2 * margin,), POISON[width], dtype=int_dtype).view(dtype)


def item(p: PackedTensor, out: torch.Tensor, start: int = 0) -> "decode.DecodeItem":
    return decode.DecodeItem.from_packed(p, out, start)


def decode_range(p: PackedTensor, start: int, stop: int, config=None, margin: int = 3) -> torch.Tensor:
    """Decode [start, stop) into the middle of a poisoned buffer; check the margins stay untouched."""
    buf = poisoned(stop - start, p.torch_dtype, margin)
    out = buf[margin : margin + stop - start]
    if config is None:
        decode.decode_lanes(p.streams["words"], p.streams["index"], p.decode_table(out.device), p.streams["raw"],
                            out, numel_total=p.numel, steps=p.steps, dtype=p.dtype, start=start, group=p.group)
    else:
        decode.launch_decode(item(p, out, start), config)
    edge = poisoned(margin, p.torch_dtype)
    assert torch.equal(bits(buf[:margin]), bits(edge)) and torch.equal(bits(buf[margin + stop - start :]), bits(edge))
    return out


def assert_matches_cpu(p: PackedTensor, start: int = 0, stop: int | None = None, config=None) -> None:
    stop = p.numel if stop is None else stop
    expected = p.decode(backend="cpu").reshape(-1)[start:stop]
    assert torch.equal(bits(decode_range(p, start, stop, config)), bits(expected))


def with_symbols(symbols: torch.Tensor, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Values whose coded symbol (exponent field) is `symbols`, with random sign and raw bits."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.float32:
        low = torch.randint(0, 1 << 23, symbols.shape, generator=g, dtype=torch.int64)
        sign = torch.randint(0, 2, symbols.shape, generator=g, dtype=torch.int64) << 31
        value = sign | symbols.to(torch.int64) << 23 | low
        return torch.where(value >= 1 << 31, value - (1 << 32), value).to(torch.int32).view(dtype)
    low = torch.randint(0, 1 << 7, symbols.shape, generator=g, dtype=torch.int32)
    sign = torch.randint(0, 2, symbols.shape, generator=g, dtype=torch.int32) << 15
    return (sign | symbols.to(torch.int32) << 7 | low).to(torch.int16).view(dtype)


def edge_cases(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    width = torch.empty(0, dtype=dtype).element_size()
    int_dtype = {2: torch.int16, 4: torch.int32}[width]
    g = torch.Generator().manual_seed(1)
    return {
        "zeros": torch.zeros(200, dtype=dtype),
        "negative zeros": torch.full((77,), -0.0, dtype=dtype),
        "nan and inf payloads": torch.tensor([float("nan"), float("inf"), -float("inf")] * 50, dtype=dtype)
        .view(int_dtype).bitwise_or(torch.arange(150, dtype=int_dtype) % 7).view(dtype),
        "subnormals": (torch.rand(300, generator=g) * torch.finfo(dtype).tiny).to(dtype),
        "one repeated value": torch.full((1000,), 0.0123, dtype=dtype),
        "all 256 symbols": with_symbols(torch.arange(256).repeat(4)[torch.randperm(1024, generator=g)], dtype),
        "one element": torch.tensor([1.5], dtype=dtype),
        "less than one step": (torch.randn(19, generator=g) * 0.02).to(dtype),
        "odd size, partial last block": (torch.randn(1031, generator=g) * 0.02).to(dtype),
    }


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_random_normal_matches_cpu_decoder(dtype):
    t = (torch.randn(48, 64, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    p = pack(t, steps=8)
    assert_matches_cpu(p)
    assert torch.equal(bits(decode_range(p, 0, p.numel)), bits(t.reshape(-1)))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_edge_cases_match_cpu_decoder(dtype):
    for name, t in edge_cases(dtype).items():
        try:
            assert_matches_cpu(pack(t, steps=4))
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


@pytest.mark.parametrize("start, stop", [(0, 1), (100, 1000), (255, 257), (511, 512), (300, 2000), (2047, 2048)])
def test_element_ranges_write_only_their_elements(start, stop):
    p = pack((torch.randn(2048, generator=torch.Generator().manual_seed(2)) * 0.05).to(torch.bfloat16), steps=8)
    assert_matches_cpu(p, start, stop)


def test_fp32_range_reads_every_plane_at_its_offset():
    p = pack(torch.randn(1500, generator=torch.Generator().manual_seed(3)), steps=8)
    assert_matches_cpu(p, 333, 1234)


@pytest.mark.parametrize("rows", [(0, 1), (3, 17), (39, 40), (0, 40)])
def test_decode_into_row_ranges_through_packed_tensor(rows):
    t = (torch.randn(40, 48, generator=torch.Generator().manual_seed(4)) * 0.02).to(torch.bfloat16)
    p = pack(t, steps=8)
    buf = poisoned((rows[1] - rows[0]) * 48, t.dtype, margin=5)
    out = buf[5:-5].view(rows[1] - rows[0], 48)
    p.decode_into(out, rows=rows, backend="triton")
    assert torch.equal(bits(out), bits(t[rows[0] : rows[1]]))
    edge = bits(poisoned(5, t.dtype))
    assert torch.equal(bits(buf[:5]), edge) and torch.equal(bits(buf[-5:]), edge)


@pytest.mark.parametrize("config", [
    dict(rows=1, num_warps=1, unroll=2),
    dict(rows=8, num_warps=4, unroll=4),
    dict(rows=4, num_warps=4, unroll=2),
    dict(rows=1, num_warps=1, table=decode.TABLE_GLOBAL, unroll=4),
    dict(rows=4, num_warps=4, unroll=2, window=decode.WINDOW_LOAD),
    dict(rows=2, num_warps=2, unroll=2, vector=False),
], ids=["rows1-unroll2", "rows8-unroll4", "rows4-unroll2", "global-unroll4", "loads-rows4", "scalar-runs"])
def test_kernel_variants_agree(config):
    # the interpreter runs a configuration as given only without inline PTX (scan prefix, no prefetch)
    config = decode.DecodeConfig(prefix=decode.PREFIX_SCAN, prefetch=False, **config)
    # steps=6 with unroll 4 leaves a partial loop iteration: the masked path must stop at the block end;
    # steps=2 is shorter than the lanes' exact tail, which then covers every step
    for steps in (8, 6, 2):
        p = pack((torch.randn(700, generator=torch.Generator().manual_seed(5)) * 0.02).to(torch.float16), steps)
        assert_matches_cpu(p, config=config)
        assert_matches_cpu(p, 90, 500, config=config)


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("dtype", ["BF16", "F32"])
def test_every_group_decodes_whole_blocks_and_ranges(group, dtype):
    """Lanes holding runs of `group` neighbouring symbols (2 * group weights): whole blocks in aligned
    buffers take the vector path (16-bit weights: one raw load and one store a run; fp32: one load a
    raw plane and one store a symbol), the rest the per-weight stores; a last, partial block (group 1 in
    the format) and ranges inside blocks the masked path."""
    block = 2 * 32 * 8                                     # weights a block at steps 8
    t = (torch.randn(block * 3 + 40, generator=torch.Generator().manual_seed(9)) * 0.02).to(DTYPES[dtype])
    p = pack(t, steps=8, group=group)
    assert p.group == group
    config = decode.DecodeConfig(rows=2, num_warps=2, prefix=decode.PREFIX_SCAN, prefetch=False)
    for start, stop, margin in ((0, t.numel(), 0), (0, block * 2, 8), (128, block * 2, 8), (37, 601, 3)):
        # 16-bit runs: 2 * group weights an access; fp32: a symbol's two weights (8 bytes) a store
        aligned = (margin - start) % (2 * group if dtype == "BF16" else 2) == 0
        buf = poisoned(stop - start, t.dtype, margin)
        assert item(p, buf[margin : margin + stop - start], start).can_vector() == aligned
        assert torch.equal(bits(decode_range(p, start, stop, config, margin)), bits(t[start:stop]))


@pytest.mark.parametrize("dtype", ["BF16", "F32"])
@pytest.mark.parametrize("last_weights", [256, 128, 254])
def test_a_last_block_of_whole_runs_decodes_like_a_whole_one(dtype, last_weights):
    """A tensor's last block holding whole runs in every lane, an even number of weights and whole loop
    iterations (256 weights: 4 steps) takes the unmasked path of whole blocks, for as many steps as it has;
    128 weights (2 steps, half an iteration) and 254 (an odd count of symbols: group 1 there) take the
    masked path."""
    block = 2 * 32 * 8                                     # weights a block at steps 8
    t = (torch.randn(block * 3 + last_weights, generator=torch.Generator().manual_seed(4)) * 0.02)
    p = pack(t.to(DTYPES[dtype]), steps=8, group=2 if dtype == "BF16" else 1)
    config = decode.DecodeConfig(rows=2, num_warps=2, prefix=decode.PREFIX_SCAN, prefetch=False)
    for start, stop in ((0, p.numel), (block * 3, p.numel), (block * 2, p.numel), (block * 3 + 2, p.numel)):
        assert_matches_cpu(p, start, stop, config=config)
    plan_out = poisoned(p.numel, p.torch_dtype)
    decode.DecodePlan([item(p, plan_out)]).launch()
    assert torch.equal(bits(plan_out), bits(t.to(DTYPES[dtype])))


def test_codes_of_the_longest_length_decode():
    """A skewed histogram over many pairs gives codes of MAX_CODE_LEN bits: lanes refill before them and,
    in the exact tail, for them."""
    # pair k (fields 100 + k, 90) 2**(12 - k) times, k = 0..12, and one more: lengths 1, 2, .., 13, 13
    counts = [2 ** (12 - k) for k in range(13)] + [1]
    pairs = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    pairs = pairs[torch.randperm(pairs.numel(), generator=torch.Generator().manual_seed(6))]
    symbols = torch.stack([100 + pairs, torch.full_like(pairs, 90)], dim=1).reshape(-1)
    p = pack(with_symbols(symbols, torch.bfloat16), steps=8)
    assert int(p.code_lengths.max()) == 13
    assert_matches_cpu(p, config=decode.DecodeConfig(rows=2, num_warps=2, prefix=decode.PREFIX_SCAN, prefetch=False))


def test_plan_decodes_many_items_in_one_launch_per_width():
    g = torch.Generator().manual_seed(7)
    tensors = [(torch.randn(1200, generator=g) * 0.02).to(torch.bfloat16), (torch.randn(700, generator=g)).half(),
               torch.randn(900, generator=g), (torch.randn(5, generator=g)).to(torch.bfloat16)]
    ranges = [(0, 1200), (33, 650), (100, 900), (1, 4)]
    packed = [pack(t, steps) for t, steps in zip(tensors, (8, 16, 4, 8))]
    outs = [poisoned(b - a, t.dtype) for t, (a, b) in zip(tensors, ranges)]
    plan = decode.DecodePlan([item(p, out, a) for p, out, (a, _) in zip(packed, outs, ranges)],
                             decode.DecodeConfig(rows=2, num_warps=2, prefix=decode.PREFIX_SCAN, prefetch=False))
    for _ in range(2):  # a plan is reusable: the second launch rewrites the same outputs
        plan.launch()
        for t, out, (a, b) in zip(tensors, outs, ranges):
            assert torch.equal(bits(out), bits(t[a:b]))
    assert len(plan.configs()) == 2  # one launch for 16-bit outputs, one for fp32


def test_plan_splits_partial_blocks_from_whole_ones_and_writes_only_the_range():
    """A plan decodes an item's whole blocks in tiles of their own (no masks; a tile's rows past the
    last block follow its first row and store nothing) and its partial first and last blocks apart."""
    t = (torch.randn(32 * 8 * 5 + 100, generator=torch.Generator().manual_seed(8)) * 0.02).to(torch.bfloat16)
    p = pack(t, steps=8)
    config = decode.DecodeConfig(rows=4, num_warps=4, prefix=decode.PREFIX_SCAN, prefetch=False)
    for start, stop in ((0, t.numel()), (100, 32 * 8 * 4 + 3), (256, 32 * 8 * 4)):
        whole = [piece for piece in item(p, t[start:stop].clone(), start).pieces()
                 if piece.start % 512 == 0 and piece.out.numel() % 512 == 0]
        assert len(whole) == 1  # one piece of whole blocks between the partial ones
        buf = poisoned(stop - start, t.dtype, margin=4)
        plan = decode.DecodePlan([item(p, buf[4:-4], start)], config)
        plan.launch()
        assert torch.equal(bits(buf[4:-4]), bits(t[start:stop]))
        assert torch.equal(bits(buf[:4]), bits(poisoned(4, t.dtype))) and torch.equal(bits(buf[-4:]),
                                                                                        bits(poisoned(4, t.dtype)))


def test_decode_lanes_many_skips_empty_items():
    p = pack((torch.randn(600) * 0.02).to(torch.bfloat16), steps=8)
    out, empty = torch.empty(600, dtype=torch.bfloat16), torch.empty(0, dtype=torch.bfloat16)
    decode.decode_lanes_many([item(p, empty, 17), item(p, out)])
    assert torch.equal(bits(out), bits(p.decode(backend="cpu")))


@pytest.fixture(scope="module")
def small() -> PackedTensor:
    return pack((torch.randn(300) * 0.02).to(torch.bfloat16), steps=8)


def call(p: PackedTensor, out: torch.Tensor, **overrides) -> None:
    args = dict(words=p.streams["words"], index=p.streams["index"], table=p.decode_table("cpu"),
                raw=p.streams["raw"], out=out)
    kwargs = dict(numel_total=p.numel, steps=p.steps, dtype=p.dtype, start=0, group=p.group)
    for key, value in overrides.items():
        (args if key in args else kwargs)[key] = value
    decode.decode_lanes(*args.values(), **kwargs)


@pytest.mark.parametrize("overrides, message", [
    (dict(out=torch.empty(300, dtype=torch.float16)), "contiguous torch.bfloat16"),
    (dict(out=torch.empty(600, dtype=torch.bfloat16)[::2]), "contiguous torch.bfloat16"),
    (dict(out=torch.empty(301, dtype=torch.bfloat16)), "not inside a tensor of 300"),
    (dict(start=250, out=torch.empty(100, dtype=torch.bfloat16)), "not inside a tensor of 300"),
    (dict(start=-1), "not inside"),
    (dict(dtype="I32"), "not coded with lanes"),
    (dict(steps=2), "index holds"),
    (dict(group=3), "group 3 with steps 8"),
    (dict(steps=9, group=2), "group 2 with steps 9"),
    (dict(table=torch.zeros(8192, dtype=torch.int16)), "table must be a contiguous 1-D torch.int32"),
    (dict(table=torch.zeros(4096, dtype=torch.int32)), "table holds 4096"),
    (dict(raw=torch.zeros(299, dtype=torch.uint8)), "raw holds 299"),
    (dict(words=torch.zeros(7, dtype=torch.uint8)), "whole, 2-byte aligned"),
    (dict(index=torch.zeros(8 * 3, dtype=torch.int64)), "index must be a contiguous 1-D torch.uint8"),
    (dict(raw=torch.zeros(300, dtype=torch.uint8, device="meta")), "raw is on meta"),
], ids=["out-dtype", "out-strided", "too-long", "past-end", "negative-start", "dtype", "steps", "table-dtype",
        "table-size", "raw-size", "odd-words", "index-dtype", "device", "group", "group-steps"])
def test_launcher_refuses_bad_arguments(small, overrides, message):
    out = overrides.pop("out", torch.empty(300 - max(0, overrides.get("start", 0)), dtype=torch.bfloat16))
    with pytest.raises(UnweightError, match=message):
        call(small, out, **overrides)


def test_launcher_needs_cuda_or_the_interpreter(small, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(UnweightError, match="needs a CUDA device"):
        call(small, torch.empty(300, dtype=torch.bfloat16))


def test_empty_output_launches_nothing(small):
    call(small, torch.empty(0, dtype=torch.bfloat16), start=300)


@pytest.mark.parametrize("kwargs", [dict(rows=3), dict(rows=2, num_warps=4), dict(rows=8, num_warps=4),
                                    dict(unroll=1), dict(unroll=3), dict(prefix=7), dict(table=2), dict(window=3),
                                    dict(num_warps=32, rows=32), dict(rows=16, num_warps=16)])
def test_config_refuses_bad_values(kwargs):
    with pytest.raises(UnweightError, match="DecodeConfig"):
        decode.DecodeConfig(**kwargs)


TTGIR_LANE_MAJOR = (  # the shape of Triton's TTGIR for the ballot (one line per op in the real text)
    "#blocked = #ttg.blocked<{sizePerThread = [1], threadsPerWarp = [32], warpsPerCTA = [4], order = [0]}>\n"
    '    %7:2 = tt.elementwise_inline_asm "{ vote.sync.ballot.b32 m, p, 0xffffffff; }" {constraints = "=r,=r,r"} '
    "%need : tensor<128xi32, #blocked> -> tensor<128xi32, #blocked>, tensor<128xi32, #blocked>\n")


def test_ballot_layout_check_accepts_only_lane_major_tiles():
    assert decode.ballot_layout_is_lane_major(TTGIR_LANE_MAJOR)
    split_warp = TTGIR_LANE_MAJOR.replace("sizePerThread = [1], threadsPerWarp = [32]",
                                          "sizePerThread = [2], threadsPerWarp = [32]")
    assert not decode.ballot_layout_is_lane_major(split_warp)
    assert not decode.ballot_layout_is_lane_major(TTGIR_LANE_MAJOR.replace("#blocked>", "#linear>"))
    assert not decode.ballot_layout_is_lane_major("")


def test_interpreter_runs_the_portable_tile():
    used = decode.effective_config(decode.DEFAULT_CONFIG, "cpu")
    assert used.prefix == decode.PREFIX_SCAN and not used.prefetch and used.rows >= decode.DEFAULT_CONFIG.rows
    assert decode.DEFAULT_CONFIG.table == decode.TABLE_SHARED and used.table == decode.TABLE_GLOBAL  # no PTX here
    as_given = decode.DecodeConfig(rows=2, num_warps=2, prefix=decode.PREFIX_SCAN, prefetch=False)
    assert decode.effective_config(as_given, "cpu") == as_given


def test_words_ring_is_used_only_with_the_ballot_tile_and_aligned_words(small):
    """The ring stages words with 8-byte cp.async copies from one lane a thread: elsewhere the kernel loads
    its words (the interpreter never runs the ring)."""
    out = torch.empty(small.numel, dtype=torch.bfloat16)
    aligned = item(small, out)
    assert aligned.can_ring() and decode.DEFAULT_CONFIG.window == decode.WINDOW_RING
    padded = torch.zeros(aligned.words.numel() + 2, dtype=torch.uint8)
    padded[2:] = aligned.words
    shifted = dataclasses.replace(aligned, words=padded[2:])  # the same words at an address 2 bytes off
    assert not shifted.can_ring()
    window = {(ring, ballot, vector): decode._KernelShape(1, small.group, vector, ring).constexprs(
        decode.DEFAULT_CONFIG if ballot else decode.DEFAULT_CONFIG.without_ballot())["WINDOW"]
        for ring in (True, False) for ballot in (True, False) for vector in (True, False)}
    assert {key for key, used in window.items() if used == decode.WINDOW_RING} == {(True, True, True),
                                                                                   (True, True, False)}
    assert set(window.values()) == {decode.WINDOW_RING, decode.WINDOW_LOAD}
    decode.launch_decode(shifted, decode.DEFAULT_CONFIG)  # decodes (here with the portable tile) bit for bit
    assert torch.equal(out.view(torch.int16), small.decode(backend="cpu").reshape(-1).view(torch.int16))


def test_importing_unweight_does_not_import_triton():
    code = "import sys, unweight, unweight.kernels, unweight.packed; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)



def test_plans_pick_the_widest_tile_that_wastes_at_most_an_eighth_of_its_rows():
    """fill_rows: large tensors keep 16-row tiles; many small ones (a MiniLM) get narrow tiles."""
    g = torch.Generator().manual_seed(11)
    block = 2 * 32 * 8

    def pieces(*numels):
        return [piece for n in numels
                for piece in item(pack((torch.randn(n, generator=g) * 0.02).to(torch.bfloat16), steps=8),
                                  torch.empty(n, dtype=torch.bfloat16)).pieces()]

    assert decode.fill_rows(pieces(64 * block), 16) == 16
    assert decode.fill_rows(pieces(64 * block, 4 * block), 16) == 8     # 68 blocks: 80 rows at 16, 72 at 8
    assert decode.fill_rows(pieces(4 * block + 7, 4 * block + 7), 16) == 1  # whole blocks and a partial one each
    assert decode.fill_rows(pieces(64 * block), 2) == 2                 # never wider than asked
