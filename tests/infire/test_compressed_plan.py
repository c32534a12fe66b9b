"""Compressed weights decoded by the Triton decoder's batched plan (one launch per layer),
run by the Triton interpreter on the CPU: logits bit-identical to dense weights.

TRITON_INTERPRET must be set when `@triton.jit` decorates the kernels, so this module
imports unweight.kernels.decode with it set (reloading the module if an earlier import
compiled it for a GPU), as tests/unweight/test_kernels.py does, and restores the variable.
"""

from __future__ import annotations


import pytest
import torch

from ..triton_interpreter import interpreted
from .conftest import build_packed_tiny_model, make_engine

PROMPT = [5, 17, 99, 3, 250, 42, 7]

decode = interpreted("unweight.kernels.decode", "_decode_many_kernel")


@pytest.fixture(scope="module")
def packed_bf16(tmp_path_factory):
    """A 2-layer bf16 tiny Llama (one layer per buffer set) and its packed form."""
    return build_packed_tiny_model(tmp_path_factory, 2)


@pytest.mark.slow  # the interpreter takes most of a minute
def test_planned_decode_matches_dense_bit_for_bit(packed_bf16, monkeypatch):
    plain, packed = packed_bf16
    dense = make_engine(plain, dtype="checkpoint")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("UNWEIGHT_BACKEND", "triton")
    assert type(decode._decode_many_kernel).__name__ == "InterpretedFunction"
    compressed = make_engine(packed, weights="compressed")
    streamer = compressed.runner.loaded.streamer
    assert len(streamer.plans) == 2 and all(len(plan.items) == 7 for plan in streamer.plans)
    for buffers in streamer.buffers:  # nothing decoded yet: poison both sets
        for weight in buffers.values():
            weight.view(torch.int16).fill_(0x5A5A)
    expected = dense.compute_logits(PROMPT)
    logits = compressed.compute_logits(PROMPT)
    assert torch.equal(logits.view(torch.int32), expected.view(torch.int32))


def test_cpu_backend_builds_no_plans(packed_bf16, monkeypatch):
    _, packed = packed_bf16
    monkeypatch.delenv("UNWEIGHT_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    compressed = make_engine(packed, weights="compressed")
    assert compressed.runner.loaded.streamer.plans == []
