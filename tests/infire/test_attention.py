"""Paged attention: the torch path against dense causal attention, and the Triton
kernel (under TRITON_INTERPRET=1, in a subprocess so the flag is set before Triton
is imported) against the torch path."""

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


ENGINE_SCRIPT = textwrap.dedent("""
    import sys
    from infire.engine import EngineConfig, LLMEngine, SamplingParams
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    prompts = [[5, 17, 99, 3, 250, 42, 7], [11, 12, 13]]
    tokens = {}
    for backend in ("torch", "triton"):
        engine = LLMEngine(EngineConfig(model=sys.argv[1], device="cpu", num_kv_blocks=16, block_size=4,
                                        max_num_batched_tokens=5, max_num_seqs=2, attention_backend=backend))
        tokens[backend] = engine.generate(prompts, params)
    assert tokens["torch"] == tokens["triton"], tokens
    print("ok")
""")


@pytest.mark.slow
def test_engine_with_triton_attention_under_interpreter(llama_dir):
    result = run_interpreted(ENGINE_SCRIPT, str(llama_dir))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
