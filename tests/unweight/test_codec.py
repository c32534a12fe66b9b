"""Bit-exact round trips of the lane codec on random and edge-case tensors, and its golden bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unweight.codec import floats, huffman, lanes, lanes_torch
from unweight.errors import CorruptDataError, VerificationError
from unweight.packed import PackedTensor

from .synthetic import bits, pack

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def roundtrip(t: torch.Tensor, steps: int = 8) -> None:
    out = pack(t, steps).decode(backend="cpu")
    assert out.dtype == t.dtype and out.shape == t.shape
    assert torch.equal(bits(out), bits(t))


def edge_cases(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    width = torch.empty(0, dtype=dtype).element_size()
    int_dtype = {2: torch.int16, 4: torch.int32}[width]
    # fp32: every exponent and sign with random mantissas (random 32-bit patterns pair exponents into more
    # symbols than a code holds: test_floats_with_too_many_pairs_are_stored_as_they_are)
    all_bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16) if width == 2 else \
        (torch.arange(0, 1 << 16, dtype=torch.int64) << 16 | torch.randint(0, 1 << 16, (1 << 16,))).to(torch.int32)
    return {
        "zeros": torch.zeros(1000, dtype=dtype),
        "negative zeros": torch.full((333,), -0.0, dtype=dtype),
        "nan and inf payloads": torch.tensor([float("nan"), float("inf"), -float("inf")] * 50, dtype=dtype)
        .view(int_dtype).bitwise_or(torch.arange(150, dtype=int_dtype) % 7).view(dtype),
        "subnormals": (torch.rand(2048) * torch.finfo(dtype).tiny).to(dtype),
        "one repeated value": torch.full((4097,), 0.0123, dtype=dtype),
        "every bit pattern": all_bits.view(dtype),
        "one element": torch.tensor([1.5], dtype=dtype),
        "odd 2-d": torch.randn(37, 53).to(dtype),
    }


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("steps", [1, 8, 1024])
def test_random_normal_roundtrip(dtype, steps):
    roundtrip((torch.randn(50_000) * 0.02).to(dtype), steps)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_edge_case_roundtrips(dtype):
    for name, t in edge_cases(dtype).items():
        try:
            roundtrip(t, steps=4)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


def test_all_exponents_and_longest_code():
    # geometric exponent frequencies over all 256 values give rare pairs the longest codes
    counts = np.maximum(1, (2.0 ** (-np.arange(256) / 6)) * 1e4).astype(np.int64)
    fields = np.repeat(np.arange(256, dtype=np.int16), counts)
    np.random.default_rng(0).shuffle(fields)
    t = torch.from_numpy(fields << 7).view(torch.bfloat16)  # raw bits 0
    data = t.view(torch.uint8).numpy()
    lengths = huffman.code_lengths(floats.symbol_histogram(floats.LAYOUTS["BF16"], data))
    assert lengths.max() == huffman.MAX_CODE_LEN
    roundtrip(t, steps=64)


def test_code_lengths_are_optimal_when_unconstrained():
    hist = np.zeros(huffman.NUM_SYMBOLS, dtype=np.int64)
    hist[[3, 7, 9, 40000]] = [8, 4, 2, 2]
    assert huffman.code_lengths(hist)[[3, 7, 9, 40000]].tolist() == [1, 2, 3, 3]
    codes = huffman.canonical_codes(huffman.code_lengths(hist))
    assert codes[[3, 7, 9, 40000]].tolist() == [0b0, 0b10, 0b110, 0b111]


def test_code_lengths_are_optimal_under_the_limit():
    """Package-merge against brute force over small alphabets: no shorter code fits the limit."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        hist = np.zeros(huffman.NUM_SYMBOLS, dtype=np.int64)
        used = rng.choice(huffman.NUM_SYMBOLS, 5, replace=False)
        hist[used] = rng.integers(1, 1000, 5) ** 2
        lengths = huffman.code_lengths(hist, max_len=3)
        best = min(sum(int(hist[s]) * n for s, n in zip(used, combo))
                   for combo in np.ndindex(*(4,) * 5) if 0 not in combo and sum(2.0 ** -n for n in combo) <= 1)
        assert int((lengths.astype(np.int64) * hist).sum()) == best and lengths.max() <= 3


def test_too_many_symbols_for_a_code_are_refused():
    hist = np.ones(huffman.NUM_SYMBOLS, dtype=np.int64)
    with pytest.raises(huffman.TooManySymbolsError):
        huffman.code_lengths(hist)


def test_golden_bytes():
    """Pins the stream layout: changing it must come with a format version bump."""
    sym = np.array([3, 7, 3, 9, 3, 40000, 3, 3] * 8 + [7], dtype=np.uint16)  # 65 symbols: 3 blocks of 32 at steps=1
    hist = np.bincount(sym, minlength=huffman.NUM_SYMBOLS)
    lengths = huffman.code_lengths(hist)
    words, index = lanes.encode(sym, huffman.canonical_codes(lengths), lengths, steps=1)
    assert index.tolist() == [0, 32, 64, 65]
    # lane j of block 0 holds one code, MSB-aligned in its own word: 3 -> 0, 7 -> 10, 9 -> 110, 40000 -> 111
    assert words[:8].tolist() == [0x0000, 0x8000, 0x0000, 0xC000, 0x0000, 0xE000, 0x0000, 0x0000]
    assert words[64] == 0x8000
    # rounds and the exact tail, with the code 3 -> 0, 7 -> 10, 9 -> 110, 40000 -> 111: every lane of a block of
    # 8 steps decodes 9, 9, 9, 9, then 3, 3, 3, 3 (16 bits: 0xDB60). At step 0 each lane holds no bits, fewer
    # than ROUND_BITS - 16, and takes two words, in lane order; at step 4 it holds 20 bits: the rule before the
    # tail would take a third word, the exact tail takes none (each code there is shorter than the bits held)
    lengths = np.zeros(huffman.NUM_SYMBOLS, dtype=np.uint8)
    lengths[[3, 7, 9, 40000]] = [1, 2, 3, 3]
    sym = np.array([9] * 128 + [3] * 128, dtype=np.uint16)
    words, index = lanes.encode(sym, huffman.canonical_codes(lengths), lengths, steps=8)
    assert index.tolist() == [0, 64]
    assert words.tolist() == [0xDB60, 0x0000] * 32


def test_pair_symbols_and_raw_planes_layouts():
    v = torch.tensor([-1.75, 2.0, 0.5], dtype=torch.bfloat16)  # 0xBFE0, 0x4000, 0x3F00: fields 0x7F, 0x80, 0x7E
    data = v.view(torch.uint8).numpy()
    layout = floats.LAYOUTS["BF16"]
    # an odd count: the last weight pairs with itself
    assert floats.pair_symbols(layout, data).tolist() == [0x7F | 0x80 << 8, 0x7E | 0x7E << 8]
    assert floats.raw_planes(layout, data).tolist() == [0x80 | 0x60, 0x00, 0x00]
    assert np.array_equal(floats.symbol_histogram(layout, data),
                          np.bincount(floats.pair_symbols(layout, data), minlength=huffman.NUM_SYMBOLS))
    f = torch.tensor([-1.75, 3.0], dtype=torch.float32)  # 0xBFE00000, 0x40400000
    layout = floats.LAYOUTS["F32"]
    assert floats.pair_symbols(layout, f.view(torch.uint8).numpy()).tolist() == [0x7F | 0x80 << 8]
    assert floats.raw_planes(layout, f.view(torch.uint8).numpy()).tolist() == [0, 0, 0, 0, 0x80 | 0x60, 0x40]


def test_code_description_round_trips_and_refuses_corruption():
    hist = np.zeros(huffman.NUM_SYMBOLS, dtype=np.int64)
    hist[[5, 300, 301, 65535]] = [10, 3, 3, 1]
    lengths = huffman.code_lengths(hist)
    described = huffman.describe(lengths)
    assert np.array_equal(huffman.lengths_from_description(described, "t"), lengths)
    for bad in (b"", described[:-3], b"\x28\xb5\x2f\xfd" + b"\x00" * 10):
        with pytest.raises(CorruptDataError, match="t: its code"):
            huffman.lengths_from_description(bad, "t")
    import zstandard
    twice = zstandard.ZstdCompressor().compress(bytes([5, 0, 0, 0, 1, 1]))  # symbol 5 twice
    with pytest.raises(CorruptDataError, match="out of order, twice"):
        huffman.lengths_from_description(twice, "t")


def test_floats_with_too_many_pairs_are_stored_as_they_are():
    """Random bit patterns pair their exponents into more symbols than a 13-bit code holds: the tensor
    is stored as it is, and still restored bit for bit."""
    from unweight.codec.tensor import TensorEncoder, TensorSource

    data = torch.randint(-(2**31), 2**31 - 1, (70_000,), dtype=torch.int32).view(torch.uint8).numpy()
    with TensorEncoder(threads=1) as encoder:
        [plan] = encoder.plan([TensorSource("F32", 70_000, data.size, lambda a, b: data[a:b])]).result()
    assert plan.encoding == "raw" and plan.sizes == {"data": data.size}


def test_row_ranges_decode_only_their_rows():
    t = (torch.randn(200, 300) * 0.02).to(torch.bfloat16)
    p = pack(t, steps=16)
    for r0, r1 in [(0, 1), (7, 93), (199, 200), (50, 50), (0, 200)]:
        assert torch.equal(bits(p.decode(rows=(r0, r1))), bits(t[r0:r1]))


def test_truncated_stream_is_detected():
    t = (torch.randn(5000) * 0.02).to(torch.bfloat16)
    p = pack(t, steps=16)
    cut = p.streams["words"][:-2].clone()
    index = p.streams["index"].numpy().view(np.int64).copy()
    index[-1] -= 1
    broken = PackedTensor("t", "BF16", p.shape, "lanes",
                          {**p.streams, "words": cut, "index": torch.from_numpy(index.view(np.uint8))},
                          p.steps, p.code_lengths, group=p.group)
    with pytest.raises(CorruptDataError, match="block"):
        broken.decode(backend="cpu")


def test_invalid_code_lengths_are_refused():
    lengths = np.zeros(huffman.NUM_SYMBOLS, dtype=np.uint8)
    lengths[:3] = 1  # three one-bit codes cannot exist
    with pytest.raises(CorruptDataError, match="Kraft"):
        huffman.check_lengths(lengths, "t")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("cached", [True, False], ids=["read-once", "read-per-chunk"])
def test_tensors_larger_than_a_chunk(monkeypatch, dtype, cached):
    """Large tensors are coded in tasks of a few blocks, huge ones read chunk by chunk (bounded
    memory); the streams must join seamlessly."""
    from unweight.codec import tensor

    monkeypatch.setattr(tensor, "TASK_BYTES", 2048)  # a task of 1 or 2 blocks of 2 x 32 x 8 weights
    monkeypatch.setattr(tensor, "CHUNK_BLOCKS", 3)
    if not cached:
        monkeypatch.setattr(tensor, "MAX_CACHED_BYTES", 0)
    t = (torch.randn(5000) * 0.02).to(dtype)
    roundtrip(t, steps=8)
    assert torch.equal(bits(pack(t, steps=8).decode(rows=(1234, 4321))), bits(t[1234:4321]))


@pytest.mark.parametrize("steps", [1, 3, 8, 1024])
def test_block_index_is_the_encoders(steps):
    """The planned size of the word stream (counted from the code lengths alone) is exact."""
    rng = np.random.default_rng(steps)
    for n, skew in [(1, 0.5), (31, 0.5), (5000, 0.3), (70_001, 0.9), (40_000, 0.02)]:
        sym = rng.geometric(skew, n).clip(0, 3000).astype(np.uint16)
        lengths = huffman.code_lengths(np.bincount(sym, minlength=huffman.NUM_SYMBOLS))
        _, index = lanes.encode(sym, huffman.canonical_codes(lengths), lengths, steps)
        assert np.array_equal(lanes.block_index(sym, lengths, steps), index), (n, skew)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_pair_symbols_and_histogram_from_the_bits(dtype):
    """The symbols and their histogram come straight from the float bits: each pair of weights' fields."""
    layout = floats.LAYOUTS[{torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[dtype]]
    data = (torch.randn(12_345) * 0.02).to(dtype).view(torch.uint8).numpy()
    values = data.view(np.uint16 if layout.width == 2 else np.uint32).astype(np.int64)
    fields = (values >> layout.symbol_shift) & 0xFF
    fields = np.append(fields, fields[-1])  # 12,345 weights: the last pairs with itself
    sym = floats.pair_symbols(layout, data)
    assert np.array_equal(sym, fields[0::2] | fields[1::2] << 8)
    assert np.array_equal(floats.symbol_histogram(layout, data), np.bincount(sym, minlength=huffman.NUM_SYMBOLS))


def test_a_symbol_without_a_code_is_refused():
    sym = np.array([1, 2, 3, 2, 1] * 20, dtype=np.uint16)
    lengths = huffman.code_lengths(np.bincount(sym[sym != 3], minlength=huffman.NUM_SYMBOLS))
    with pytest.raises(ValueError, match="no code"):
        lanes.encode(sym, huffman.canonical_codes(lengths), lengths, steps=2)


def test_check_finds_a_wrong_weight():
    """decode_into(check=True) compares every weight, on the fast path (whole blocks) and the
    general one (a partial last block)."""
    block = 2 * 32 * 8                                     # weights a block at steps 8
    t = (torch.randn(block * 3 + 17) * 0.02).to(torch.bfloat16)
    p = pack(t, steps=8)
    expected = bits(t).numpy().view(np.uint16)
    args = (p.streams["words"].numpy().view(np.uint16), p.streams["index"].numpy().view(np.int64),
            huffman.decode_table(p.code_lengths), p.streams["raw"].numpy(), t.numel(), 8)
    lanes.decode_into(*args, expected.copy(), check=True, group=p.group)
    for at in (5, block + 100, t.numel() - 1):
        wrong = expected.copy()
        wrong[at] ^= 1
        with pytest.raises(VerificationError, match=f"block {at // block} "):
            lanes.decode_into(*args, wrong, check=True, parallel=at % 2 == 0, group=p.group)


@pytest.mark.parametrize("group", [2])
def test_runs_of_neighbours_are_the_group_1_layout_of_reordered_symbols(group):
    """Group g: lane j's k-th symbol is symbol (k // g) * 32g + j * g + k % g of the block, i.e. the
    group-1 layout of the symbols reordered so; a last block that is not whole runs keeps group 1."""
    rng = np.random.default_rng(group)
    steps, blocks = 8, 3
    sym = rng.geometric(0.4, 32 * steps * blocks + 40).clip(1, 3000).astype(np.uint16)
    lengths = huffman.code_lengths(np.bincount(sym, minlength=huffman.NUM_SYMBOLS))
    codes = huffman.canonical_codes(lengths)
    whole = 32 * steps * blocks
    order = np.arange(whole).reshape(-1, 32, group).transpose(0, 2, 1).reshape(-1)
    reordered = np.concatenate([sym[:whole][order], sym[whole:]])
    words, index = lanes.encode(sym, codes, lengths, steps, group=group)
    expected_words, expected_index = lanes.encode(reordered, codes, lengths, steps, group=1)
    assert np.array_equal(words, expected_words) and np.array_equal(index, expected_index)
    assert np.array_equal(lanes.block_index(sym, lengths, steps, group=group), index)
    out = np.zeros(2 * sym.size, dtype=np.uint16)          # two weights a symbol, raw bytes 0
    raw = np.zeros(2 * sym.size, dtype=np.uint8)
    lanes.decode_into(words, index, huffman.decode_table(lengths), raw, out.size, steps, out, group=group)
    assert np.array_equal(out[0::2] >> 7, sym & 0xFF) and np.array_equal(out[1::2] >> 7, sym >> 8)


def test_group_must_divide_steps():
    lengths = huffman.code_lengths(np.bincount(np.arange(64), minlength=huffman.NUM_SYMBOLS))
    with pytest.raises(ValueError, match="group 2 with steps 7"):
        lanes.encode(np.arange(64, dtype=np.uint16), huffman.canonical_codes(lengths), lengths, 7, group=2)


@pytest.mark.parametrize("group, steps", [(1, 16), (2, 8), (2, 16), (2, 4), (1, 1), (1, 6)])
@pytest.mark.parametrize("wide", [False, True], ids=["16-bit", "fp32"])
def test_torch_encoder_writes_the_numba_encoders_streams(group, steps, wide, monkeypatch):
    """lanes_torch.encode (the device coder of `compress --device`) against lanes.encode, bit for bit:
    whole and partial blocks, lanes shorter and longer than the exact tail, several passes (a small
    CHUNK_SYMBOLS), 16-bit and fp32 weights, odd counts."""
    monkeypatch.setattr(lanes_torch, "CHUNK_SYMBOLS", 32 * steps * 3)
    rng = np.random.default_rng(group * 100 + steps)
    for n in (1, 33, 2 * 32 * steps * 7 + 5, 2 * 32 * steps * 8):
        floats32 = rng.normal(0, 0.02, n).astype(np.float32)
        values = floats32.view(np.uint32) if wide else (floats32.view(np.uint32) >> 16).astype(np.uint16)
        layout = floats.LAYOUTS["F32" if wide else "BF16"]
        sym = floats.pair_symbols(layout, values.view(np.uint8))
        lengths = huffman.code_lengths(np.bincount(sym, minlength=huffman.NUM_SYMBOLS))
        codes = huffman.canonical_codes(lengths)
        words, index = lanes.encode(sym, codes, lengths, steps, group=group)
        on_torch = lanes_torch.pair_symbols(torch.from_numpy(values.view(np.int32 if wide else np.int16).copy()),
                                            layout.symbol_shift)
        assert np.array_equal(on_torch.numpy(), sym)
        t_words, t_index = lanes_torch.encode(on_torch, torch.from_numpy(codes.astype(np.int64)),
                                              torch.from_numpy(lengths.astype(np.int64)), steps, group)
        assert np.array_equal(t_index.numpy(), index) and np.array_equal(t_words.numpy().view(np.uint16), words), n
        assert np.array_equal(lanes_torch.block_index(on_torch, torch.from_numpy(lengths.astype(np.int64)), steps,
                                                      group).numpy(), index)


def test_torch_encoder_refuses_symbols_without_code():
    lengths = huffman.code_lengths(np.bincount(np.full(100, 120), minlength=huffman.NUM_SYMBOLS))
    values = torch.full((64,), 121, dtype=torch.int64)
    with pytest.raises(lanes.UncodedSymbolError):
        lanes_torch.encode(values, torch.from_numpy(huffman.canonical_codes(lengths).astype(np.int64)),
                           torch.from_numpy(lengths.astype(np.int64)), 8, 2)
