"""Paged attention: the torch path against dense causal attention, and the Triton
kernels (under TRITON_INTERPRET=1, in a subprocess so the flag is set before Triton
is imported) against the torch path: attention, and the fused RMSNorm, rotary + KV
store, SiLU-and-mul and the batch-1 linear kernel of ops_backend="triton"."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from infire.engine.attention import AttentionBatch, paged_attention, paged_attention_torch

# A mixed batch: a prefill chunk after 3 cached tokens, a decode at position 9,
# a whole 5-token prompt, and a decode whose context ends exactly on a block edge.
QUERY_LENS = [4, 1, 5, 1]
SEQ_LENS = [7, 10, 5, 8]


def make_case(seed: int, num_heads=4, num_kv_heads=2, head_dim=16, block_size=4, num_blocks=20,
              dtype=torch.float32):
    """Random per-sequence K/V scattered over shuffled cache blocks, plus the dense truth."""
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen, dtype=dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen, dtype=dtype)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[free.pop() for _ in range(-(-n // block_size))] for n in SEQ_LENS]
    width = max(map(len, tables))
    starts = [0]
    for n in QUERY_LENS:
        starts.append(starts[-1] + n)
    batch = AttentionBatch(
        slot_mapping=torch.zeros(0, dtype=torch.long),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(SEQ_LENS, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        max_query_len=max(QUERY_LENS), query_lens_cpu=QUERY_LENS, seq_lens_cpu=SEQ_LENS,
    )
    q = torch.randn(sum(QUERY_LENS), num_heads, head_dim, generator=gen, dtype=dtype)
    return q, k_cache, v_cache, batch, tables


def dense_reference(q, k_cache, v_cache, tables, scale):
    """Softmax attention written out with explicit loops over sequences and heads."""
    out, start = torch.empty_like(q), 0
    group = q.shape[1] // k_cache.shape[2]
    for table, q_len, seq_len in zip(tables, QUERY_LENS, SEQ_LENS):
        k = torch.cat([k_cache[b] for b in table])[:seq_len]  # [S, KVH, D]
        v = torch.cat([v_cache[b] for b in table])[:seq_len]
        for t in range(q_len):
            pos = seq_len - q_len + t
            for h in range(q.shape[1]):
                scores = (k[: pos + 1, h // group] @ q[start + t, h]) * scale
                out[start + t, h] = scores.softmax(0) @ v[: pos + 1, h // group]
        start += q_len
    return out


def test_torch_path_matches_dense_attention():
    q, k_cache, v_cache, batch, tables = make_case(0)
    out = paged_attention_torch(q, k_cache, v_cache, batch, 0.25)
    torch.testing.assert_close(out, dense_reference(q, k_cache, v_cache, tables, 0.25), rtol=1e-5, atol=1e-5)


def test_new_kv_lands_in_its_slots():
    q, k_cache, v_cache, batch, _ = make_case(1)
    num_tokens = q.shape[0]
    batch.slot_mapping = torch.randperm(k_cache.shape[0] * k_cache.shape[1])[:num_tokens]
    k_new, v_new = torch.randn(num_tokens, 2, 16), torch.randn(num_tokens, 2, 16)
    paged_attention(q, k_new, v_new, k_cache, v_cache, batch, 0.25)
    assert torch.equal(k_cache.flatten(0, 1)[batch.slot_mapping], k_new)
    assert torch.equal(v_cache.flatten(0, 1)[batch.slot_mapping], v_new)


TRITON_SCRIPT = textwrap.dedent("""
    import torch
    from tests.infire.test_attention import make_case
    from infire.engine.attention import paged_attention_torch
    from infire.engine.triton_attention import paged_attention_triton

    for seed, shape in enumerate([dict(), dict(num_heads=6, num_kv_heads=1, head_dim=24),
                                  dict(num_heads=2, num_kv_heads=2, block_size=16)]):
        q, k_cache, v_cache, batch, _ = make_case(seed, **shape)
        expected = paged_attention_torch(q, k_cache, v_cache, batch, 0.3)
        out = paged_attention_triton(q, k_cache, v_cache, batch.block_tables, batch.seq_lens,
                                     batch.query_start_loc, batch.max_query_len, 0.3)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        # a decode-only batch takes the small-tile launch
        rows = batch.query_start_loc[1:].long() - 1
        decode_starts = torch.arange(5, dtype=torch.int32)
        out = paged_attention_triton(q[rows], k_cache, v_cache, batch.block_tables, batch.seq_lens,
                                     decode_starts, 1, 0.3)
        batch.query_start_loc, batch.max_query_len, batch.query_lens_cpu = decode_starts, 1, [1] * 4
        torch.testing.assert_close(out, paged_attention_torch(q[rows], k_cache, v_cache, batch, 0.3),
                                   rtol=1e-5, atol=1e-5)
    # half precision (the interpreter cannot run bf16 dots, so fp16 stands in for it)
    q, k_cache, v_cache, batch, _ = make_case(5, dtype=torch.float16)
    expected = paged_attention_torch(q.float(), k_cache.float(), v_cache.float(), batch, 0.3)
    out = paged_attention_triton(q, k_cache, v_cache, batch.block_tables, batch.seq_lens,
                                 batch.query_start_loc, batch.max_query_len, 0.3)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=2e-3)
    print("ok")
""")


def run_interpreted(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=root, capture_output=True,
                          text=True, timeout=timeout)


def test_triton_kernel_matches_reference_under_interpreter():
    result = run_interpreted(TRITON_SCRIPT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


OPS_SCRIPT = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from infire.engine.attention import store_kv
    from infire.model.config import parse_model_config
    from infire.model.layers import RMSNorm, RotaryEmbedding, apply_rotary
    from infire.errors import InfireError
    from infire.model.triton_ops import (GemvConfig, assert_close_dot, check_fused_ops, linear, rms_norm,
                                         rotary_store_kv, silu_and_mul)

    def same_bits(a, b):
        return a.dtype == b.dtype and torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.int32),
                                                  b.view(torch.int16 if b.element_size() == 2 else torch.int32))

    gen = torch.Generator().manual_seed(0)
    # (the interpreter rounds bfloat16 by truncation, so fp16 stands in for the half-precision case)
    for dtype in (torch.float32, torch.float16):
        num_tokens, hidden, heads, kv_heads, head_dim, block_size = 5, 96, 6, 2, 16, 4
        x, residual = (torch.randn(num_tokens, hidden, generator=gen).to(dtype) for _ in range(2))
        norm = RMSNorm(hidden, 1e-5).to(dtype)
        norm.weight.data = (1 + 0.2 * torch.randn(hidden, generator=gen)).to(dtype)
        out, h = rms_norm(x, norm.weight, norm.eps, residual)
        expected_out, expected_h = norm(x, residual)
        assert same_bits(h, expected_h)
        torch.testing.assert_close(out, expected_out)
        torch.testing.assert_close(rms_norm(x, norm.weight, norm.eps), norm(x))

        config = parse_model_config(dict(
            architectures=["LlamaForCausalLM"], vocab_size=8, hidden_size=hidden, intermediate_size=40,
            num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=64), {})
        assert check_fused_ops(config, torch.device("cpu"), dtype) is None  # the engine's start-up check
        rotary = RotaryEmbedding(head_dim, config.rope)
        rotary.reset_parameters(torch.device("cpu"))
        cos, sin = rotary(torch.tensor([0, 3, 7, 11, 2]), dtype)
        qkv = torch.randn(num_tokens, (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
        q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        expected_q = apply_rotary(q.reshape(num_tokens, heads, head_dim), cos, sin)
        expected_k = apply_rotary(k.reshape(num_tokens, kv_heads, head_dim), cos, sin)
        slots = torch.tensor([3, 7, -1, 12, 19])  # -1: nothing is stored
        k_cache, v_cache = (torch.zeros(5, block_size, kv_heads, head_dim, dtype=dtype) for _ in range(2))
        expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
        stored = slots >= 0
        store_kv(expected_k[stored], v.reshape(num_tokens, kv_heads, head_dim)[stored], expected_k_cache,
                 expected_v_cache, slots[stored])
        out_q = rotary_store_kv(qkv, cos, sin, k_cache, v_cache, slots, heads, kv_heads)
        assert same_bits(out_q, expected_q) and out_q.data_ptr() == qkv.data_ptr()
        assert same_bits(k_cache, expected_k_cache) and same_bits(v_cache, expected_v_cache)

        gate_up = 3 * torch.randn(num_tokens, 2 * 200, generator=gen).to(dtype)
        gate, up = gate_up.chunk(2, dim=-1)
        torch.testing.assert_close(silu_and_mul(gate_up), F.silu(gate) * up)

        # the batch-1 linear kernel: K a multiple of the tile or not, with and without bias, a strided
        # x (a view), and tiles smaller than K so that the loop runs several times
        for features, k, tile in ((37, 96, GemvConfig(block_k=32)), (64, 200, GemvConfig()),
                                  (5, 64, GemvConfig(block_n=8, block_k=16, num_warps=2))):
            x = torch.randn(1, 2 * k, generator=gen).to(dtype)[:, :k]
            w = (torch.randn(features, k, generator=gen) / k ** 0.5).to(dtype)
            b = torch.randn(features, generator=gen).to(dtype)
            for bias in (None, b):
                assert_close_dot(linear(x, w, bias, tile), F.linear(x, w, bias))
        for bad in (torch.randn(2, 96).to(dtype), torch.randn(1, 95).to(dtype)):  # two rows; K mismatch
            try:
                linear(bad, torch.randn(7, 96).to(dtype))
            except InfireError as e:
                assert "linear" in str(e)
            else:
                raise AssertionError("bad linear input accepted")
    print("ok")
""")


def test_fused_ops_match_torch_under_interpreter():
    result = run_interpreted(OPS_SCRIPT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


ENGINE_SCRIPT = textwrap.dedent("""
    import sys
    from infire.engine import EngineConfig, LLMEngine, SamplingParams
    from infire.engine.cuda_graph import DecodeGraphs, DecodeInputs
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    prompts = [[5, 17, 99, 3, 250, 42, 7], [11, 12, 13], [200, 100, 50]]
    tokens = {}
    for attention, ops, padded in (("torch", "torch", False), ("triton", "torch", False),
                                   ("triton", "triton", False), ("triton", "triton", True)):
        engine = LLMEngine(EngineConfig(model=sys.argv[1], device="cpu", num_kv_blocks=16, block_size=4,
                                        max_num_batched_tokens=5, max_num_seqs=3, attention_backend=attention,
                                        ops_backend=ops))
        if padded:  # decode steps through the static inputs of CUDA graphs, padded to 4 rows
            runner = engine.runner
            inputs = DecodeInputs(4, 16, 4, runner.pad_block, runner.device)
            runner.graphs = DecodeGraphs(runner.model, inputs, (4,), engine.model_config.vocab_size, "triton")
        # a lone prompt too: its decode steps have one row, which ops "triton" runs through the batch-1 linear kernel
        tokens[attention, ops, padded] = (engine.generate(prompts, params), engine.generate(prompts[1:2], params))
    assert len(set(map(str, tokens.values()))) == 1, tokens
    print("ok")
""")


@pytest.mark.slow
def test_engine_with_triton_attention_under_interpreter(llama_dir):
    result = run_interpreted(ENGINE_SCRIPT, str(llama_dir))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
