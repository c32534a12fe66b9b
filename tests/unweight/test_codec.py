"""Bit-exact round trips of the lane codec on random and edge-case tensors, and its golden bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unweight.codec import floats, huffman, lanes
from unweight.errors import CorruptDataError
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
    all_bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16) if width == 2 else \
        torch.randint(-(2**31), 2**31 - 1, (70000,), dtype=torch.int32)
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


def test_all_256_exponents_and_longest_code():
    # geometric frequencies force the length limit: the rarest symbols get 12-bit codes
    counts = np.maximum(1, (2.0 ** (-np.arange(256) / 6)) * 1e6).astype(np.int64)
    sym = np.repeat(np.arange(256, dtype=np.uint8), counts)
    np.random.default_rng(0).shuffle(sym)
    lengths = huffman.code_lengths(np.bincount(sym, minlength=256))
    assert lengths.max() == huffman.MAX_CODE_LEN and (lengths > 0).all()
    roundtrip(torch.from_numpy(sym.astype(np.int16) << 7).view(torch.bfloat16), steps=64)  # raw bits 0


def test_code_lengths_are_optimal_when_unconstrained():
    hist = np.zeros(256, dtype=np.int64)
    hist[[3, 7, 9, 200]] = [8, 4, 2, 2]
    assert huffman.code_lengths(hist)[[3, 7, 9, 200]].tolist() == [1, 2, 3, 3]
    codes = huffman.canonical_codes(huffman.code_lengths(hist))
    assert codes[[3, 7, 9, 200]].tolist() == [0b0, 0b10, 0b110, 0b111]


def test_golden_bytes():
    """Pins the stream layout: changing it must come with a format version bump."""
    sym = np.array([3, 7, 3, 9, 3, 200, 3, 3] * 8 + [7], dtype=np.uint8)  # 65 symbols: 3 blocks of 32 at steps=1
    hist = np.bincount(sym, minlength=256)
    lengths = huffman.code_lengths(hist)
    words, index = lanes.encode(sym, huffman.canonical_codes(lengths), lengths, steps=1)
    assert index.tolist() == [0, 32, 64, 65]
    # lane j of block 0 holds one code, MSB-aligned in its own word: 3 -> 0, 7 -> 10, 9 -> 110, 200 -> 111
    assert words[:8].tolist() == [0x0000, 0x8000, 0x0000, 0xC000, 0x0000, 0xE000, 0x0000, 0x0000]
    assert words[64] == 0x8000


def test_split_merge_layouts():
    v = torch.tensor([-1.75], dtype=torch.bfloat16)  # 0xBFE0: s=1 e=0x7F m=0x60
    sym, raw = floats.split(floats.LAYOUTS["BF16"], v.view(torch.uint8).numpy())
    assert (sym[0], raw[0]) == (0x7F, 0x80 | 0x60)
    f = torch.tensor([-1.75], dtype=torch.float32)  # 0xBFE00000
    sym, raw = floats.split(floats.LAYOUTS["F32"], f.view(torch.uint8).numpy())
    assert (sym[0], raw.tolist()) == (0x7F, [0x00, 0x00, 0x80 | 0x60])


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
                          p.steps, p.code_lengths)
    with pytest.raises(CorruptDataError, match="block"):
        broken.decode(backend="cpu")


def test_invalid_code_lengths_are_refused():
    lengths = np.zeros(256, dtype=np.uint8)
    lengths[:3] = 1  # three one-bit codes cannot exist
    with pytest.raises(CorruptDataError, match="Kraft"):
        huffman.check_lengths(lengths, "t")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("cached", [True, False], ids=["read-once", "read-per-chunk"])
def test_tensors_larger_than_a_chunk(monkeypatch, dtype, cached):
    """Huge tensors are encoded chunk by chunk (bounded memory); the streams must join seamlessly."""
    from unweight.codec import tensor

    monkeypatch.setattr(tensor, "CHUNK_BLOCKS", 2)  # 2 blocks of 32 x 8 weights a chunk
    if not cached:
        monkeypatch.setattr(tensor, "MAX_CACHED_BYTES", 0)
    t = (torch.randn(5000) * 0.02).to(dtype)
    roundtrip(t, steps=8)
    assert torch.equal(bits(pack(t, steps=8).decode(rows=(1234, 4321))), bits(t[1234:4321]))
