"""Paged attention: write a step's new K/V into cache slots, then attend over each
sequence's blocks.

One op serves prefill, chunked prefill and decode: sequence i contributes the
query tokens [query_start_loc[i], query_start_loc[i+1]) that sit at the end of
its `seq_lens[i]` cached tokens, and attends causally. On CPU (and as the
reference) it runs torch SDPA per sequence; on CUDA a Triton kernel reads K/V
through the block table (see triton_attention.py, imported lazily).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("torch", "triton")


@dataclass
class AttentionBatch:
    """Where a step's tokens live in the KV cache and what each one may attend to."""

    slot_mapping: torch.Tensor  # [T] int64, flat cache slot (block * block_size + offset) of each new token
    query_start_loc: torch.Tensor  # [B + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [B] int32, cached tokens of each sequence after this step
    block_tables: torch.Tensor  # [B, max_blocks] int32, physical blocks of each sequence (padded with 0)
    max_query_len: int
    query_lens_cpu: list[int] | None  # the same facts as host lists, for the per-sequence torch path
    seq_lens_cpu: list[int] | None  # (None in a batch built for CUDA graph capture, which needs "triton")
    backend: str = "torch"

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v [T, KVH, D] written to the cache slots named by slot_mapping [T]."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    k_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, batch: AttentionBatch, scale: float) -> torch.Tensor:
    """q [T, H, D], new k/v [T, KVH, D] -> out [T, H, D] after storing k/v into the cache."""
    store_kv(k, v, k_cache, v_cache, batch.slot_mapping)
    return attend_paged(q, k_cache, v_cache, batch, scale)


def attend_paged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: AttentionBatch,
                 scale: float) -> torch.Tensor:
    """q [T, H, D] -> out [T, H, D], attending over K/V already in the cache."""
    if batch.backend == "triton":
        from infire.engine.triton_attention import paged_attention_triton

        return paged_attention_triton(q, k_cache, v_cache, batch.block_tables, batch.seq_lens,
                                      batch.query_start_loc, batch.max_query_len, scale)
    return paged_attention_torch(q, k_cache, v_cache, batch, scale)


def paged_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          batch: AttentionBatch, scale: float) -> torch.Tensor:
    """Reference path: gather each sequence's K/V from its blocks and run SDPA."""
    if batch.max_query_len == 1:
        return _decode_torch(q, k_cache, v_cache, batch, scale)
    out = torch.empty_like(q)
    block_size = k_cache.shape[1]
    start = 0
    for i, (query_len, seq_len) in enumerate(zip(batch.query_lens_cpu, batch.seq_lens_cpu)):
        blocks = batch.block_tables[i, : -(-seq_len // block_size)]
        k = k_cache.index_select(0, blocks).flatten(0, 1)[:seq_len]  # [S, KVH, D]
        v = v_cache.index_select(0, blocks).flatten(0, 1)[:seq_len]  # [S, KVH, D]
        out[start:start + query_len] = _attend(q[start:start + query_len], k, v, scale)
        start += query_len
    return out


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [Q, H, D] are the last Q of the S positions of k, v [S, KVH, D]; causal."""
    num_queries, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    q = q.transpose(0, 1)  # [H, Q, D]
    k = k.transpose(0, 1).repeat_interleave(group, dim=0)  # [H, S, D]
    v = v.transpose(0, 1).repeat_interleave(group, dim=0)  # [H, S, D]
    mask = None
    if num_queries > 1:
        # query t sits at position S - Q + t and sees keys 0 .. S - Q + t
        query_pos = torch.arange(seq_len - num_queries, seq_len, device=q.device)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= query_pos[:, None]  # [Q, S]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # [H, Q, D]
    return out.transpose(0, 1)


def _decode_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  batch: AttentionBatch, scale: float) -> torch.Tensor:
    """One query per sequence: a single SDPA call over the batch, keys padded to the longest."""
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_blocks = -(-max(batch.seq_lens_cpu) // block_size)
    tables = batch.block_tables[:, :num_blocks].flatten()  # padding entries point at block 0, masked below
    k = k_cache.index_select(0, tables).view(num_seqs, num_blocks * block_size, num_kv_heads, head_dim)
    v = v_cache.index_select(0, tables).view(num_seqs, num_blocks * block_size, num_kv_heads, head_dim)
    group = num_heads // num_kv_heads
    k = k.transpose(1, 2).repeat_interleave(group, dim=1)  # [B, H, S, D]
    v = v.transpose(1, 2).repeat_interleave(group, dim=1)  # [B, H, S, D]
    visible = torch.arange(k.shape[2], device=q.device)[None, :] < batch.seq_lens[:, None]  # [B, S]
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=visible[:, None, None, :], scale=scale)
    return out[:, :, 0, :]  # [B, H, D]
