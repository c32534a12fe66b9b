"""Real trained weights: the demo model (bf16) and all-MiniLM-L6-v2 (fp32 and bf16) round-trip bit for bit."""

from __future__ import annotations

import hashlib

import pytest

import unweight
from unweight.decompress import decompress
from unweight.verify import verify

from .synthetic import bits

BF16_TARGET = 0.668  # of the original bytes; the per-tensor entropy bound is ~0.663


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fixture, target", [
    ("smollm2_dir", BF16_TARGET), ("minilm_bf16_dir", BF16_TARGET), ("minilm_dir", 0.90),
])
def test_real_checkpoint_round_trip(request, tmp_path, fixture, target):
    src = request.getfixturevalue(fixture)
    report = unweight.compress(src, tmp_path / "packed")
    assert report.ratio <= target, f"packed to {report.ratio:.2%} of the original, target {target:.1%}"
    assert report.ratio >= report.bound_ratio - 1e-9  # no codec of this family beats the entropy bound
    verify(tmp_path / "packed", against=src)
    decompress(tmp_path / "packed", tmp_path / "restored")
    for name in ["model.safetensors", *report.skipped]:
        assert sha256(tmp_path / "restored" / name) == sha256(src / name)


def test_demo_model_loads_identically(smollm2_dir, tmp_path):
    unweight.compress(smollm2_dir, tmp_path / "packed")
    packed = unweight.load(tmp_path / "packed")
    plain = unweight.load(smollm2_dir)
    assert packed.keys() == plain.keys()
    for name, t in plain.items():
        assert torch_equal_bits(packed[name], t), name


def torch_equal_bits(a, b) -> bool:
    import torch
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))
