"""Triton kernels for the per-layer ops of a decoder layer (imports triton): fused small
ops, and the linear layer of decode steps (a few rows against all the weights).

Each kernel repeats the rounding steps of the torch ops it replaces (layers.py):
rotary + KV store gives the same bits as the torch path; SiLU-and-mul calls the
same expf and IEEE division as torch's CUDA kernel; RMSNorm differs only in the
order of its float32 sum of squares, the linear kernel in the order of its float32
dot products (cuBLAS sums in another order too). Launches are CUDA-graph safe: no host
synchronization, no allocation beyond the outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from infire.errors import InfireError

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# float32 products are rounded before they are added, as the torch ops do: no fused multiply-add
_NO_FMA = {"enable_fp_fusion": False}


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------- RMSNorm


@triton.jit
def rms_norm_kernel(out_ptr, residual_out_ptr, x_ptr, residual_ptr, weight_ptr,
                    stride_out, stride_residual_out, stride_x, stride_residual,
                    num_cols, inv_num_cols, eps,
                    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    """One row: h = x (+ residual), rounded to the input dtype; out = w * (h / rms(h))."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < num_cols
    h = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(h.dtype)
        tl.store(residual_out_ptr + row * stride_residual_out + cols, h, mask=mask)
    h32 = h.to(tl.float32)
    mean_sq = tl.sum(h32 * h32, axis=0) * inv_num_cols  # torch's mean scales the sum likewise
    normed = (h32 * tl.math.rsqrt(mean_sq + eps)).to(h.dtype)  # [BLOCK], rounded like x32.to(x.dtype)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = (w.to(tl.float32) * normed.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_out + cols, out, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [T, N] -> norm(x); with residual [T, N]: h = x + residual -> (norm(h), h)."""
    _check_rows("rms_norm x", x)
    if residual is not None:
        _check_rows("rms_norm residual", residual)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise InfireError(f"rms_norm: residual {residual.dtype} {tuple(residual.shape)} does not match "
                              f"x {x.dtype} {tuple(x.shape)}")
    if weight.shape != (x.shape[1],) or weight.dtype != x.dtype:
        raise InfireError(f"rms_norm: weight {weight.dtype} {tuple(weight.shape)} does not match x {x.dtype} "
                          f"{tuple(x.shape)}")
    num_rows, num_cols = x.shape
    out = torch.empty_like(x)
    residual_out = torch.empty_like(x) if residual is not None else out
    block = triton.next_power_of_2(num_cols)
    rms_norm_kernel[(num_rows,)](
        out, residual_out, x, residual if residual is not None else x, weight,
        out.stride(0), residual_out.stride(0), x.stride(0), (residual if residual is not None else x).stride(0),
        num_cols, 1.0 / num_cols, eps, HAS_RESIDUAL=residual is not None, BLOCK=block,
        num_warps=min(16, max(1, block // 256)), **_NO_FMA,
    )
    return (out, residual_out) if residual is not None else out


# ---------------------------------------------------------------------------- rotary + KV store


@triton.jit
def rotary_store_kv_kernel(
    qkv_ptr, cos_ptr, sin_ptr, slot_mapping_ptr, k_cache_ptr, v_cache_ptr,
    stride_qkv, stride_cos, stride_sin,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEADS_BLOCK: tl.constexpr, HALF_BLOCK: tl.constexpr, KV_HEADS_BLOCK: tl.constexpr, DIM_BLOCK: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
):
    """One token: rotate its q and k heads in place in the qkv row, then write k and v to the
    token's cache slot (a negative slot writes nothing).

    qkv row: [q heads (NUM_HEADS * HEAD_DIM) | k heads | v heads]; rotation by halves:
    out[:D/2] = x1*cos1 - x2*sin1, out[D/2:] = x2*cos2 + x1*sin2, each product rounded to
    the model dtype before the sum, as `x * cos + rotate_half(x) * sin` in torch.
    """
    token = tl.program_id(0).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    heads = tl.arange(0, HEADS_BLOCK)  # q heads, then k heads
    half = tl.arange(0, HALF_BLOCK)
    head_mask = heads < NUM_HEADS + NUM_KV_HEADS
    half_mask = half < HALF
    mask = head_mask[:, None] & half_mask[None, :]
    cos1 = tl.load(cos_ptr + token * stride_cos + half, mask=half_mask, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + token * stride_cos + HALF + half, mask=half_mask, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + token * stride_sin + half, mask=half_mask, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + token * stride_sin + HALF + half, mask=half_mask, other=0.0).to(tl.float32)
    first = qkv_ptr + token * stride_qkv + heads[:, None] * HEAD_DIM + half[None, :]  # [HEADS, HALF]
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(first + HALF, mask=mask, other=0.0)
    a1 = x1.to(tl.float32)
    a2 = x2.to(tl.float32)
    out1 = ((a1 * cos1[None, :]).to(x1.dtype).to(tl.float32)
            + (-(a2 * sin1[None, :])).to(x1.dtype).to(tl.float32)).to(x1.dtype)
    out2 = ((a2 * cos2[None, :]).to(x1.dtype).to(tl.float32)
            + (a1 * sin2[None, :]).to(x1.dtype).to(tl.float32)).to(x1.dtype)
    tl.store(first, out1, mask=mask)
    tl.store(first + HALF, out2, mask=mask)

    slot = tl.load(slot_mapping_ptr + token)
    if slot >= 0:
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        kv_head = heads - NUM_HEADS  # negative for q heads, which the mask leaves out
        k_mask = mask & (heads >= NUM_HEADS)[:, None]
        k_at = k_cache_ptr + block * stride_kb + offset * stride_ks + kv_head[:, None] * stride_kh + half[None, :]
        tl.store(k_at, out1, mask=k_mask)
        tl.store(k_at + HALF, out2, mask=k_mask)
        kv_heads = tl.arange(0, KV_HEADS_BLOCK)
        dims = tl.arange(0, DIM_BLOCK)
        v_mask = (kv_heads < NUM_KV_HEADS)[:, None] & (dims < HEAD_DIM)[None, :]
        v_from = (qkv_ptr + token * stride_qkv + (NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM
                  + kv_heads[:, None] * HEAD_DIM + dims[None, :])
        v = tl.load(v_from, mask=v_mask, other=0.0)
        v_at = v_cache_ptr + block * stride_vb + offset * stride_vs + kv_heads[:, None] * stride_vh + dims[None, :]
        tl.store(v_at, v, mask=v_mask)


def rotary_store_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int,
                    num_kv_heads: int) -> torch.Tensor:
    """qkv [T, (H + 2 KVH) * D] (rotated in place), cos/sin [T, D], caches [blocks, block_size, KVH, D],
    slot_mapping [T] int64 -> q [T, H, D], a view of qkv."""
    _check_rows("rotary qkv", qkv)
    num_tokens = qkv.shape[0]
    _, page_size, cache_kv_heads, head_dim = k_cache.shape
    if qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim or cache_kv_heads != num_kv_heads:
        raise InfireError(f"rotary_store_kv: qkv {tuple(qkv.shape)} does not hold {num_heads} q and {num_kv_heads} "
                          f"k/v heads of the cache's {tuple(k_cache.shape)}")
    if head_dim % 2 or cos.shape != (num_tokens, head_dim) or sin.shape != cos.shape:
        raise InfireError(f"rotary_store_kv: cos/sin must be [T, D] = [{num_tokens}, {head_dim}] (D even), "
                          f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if len({qkv.dtype, cos.dtype, sin.dtype, k_cache.dtype, v_cache.dtype}) != 1 or qkv.dtype not in _DTYPES:
        raise InfireError(f"rotary_store_kv: dtypes differ or are unsupported: qkv {qkv.dtype}, cos {cos.dtype}, "
                          f"sin {sin.dtype}, caches {k_cache.dtype}/{v_cache.dtype}")
    if slot_mapping.shape != (num_tokens,) or slot_mapping.dtype != torch.int64 or not slot_mapping.is_contiguous():
        raise InfireError(f"rotary_store_kv: slot_mapping must be contiguous int64 [{num_tokens}], got "
                          f"{slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    if cos.stride(1) != 1 or sin.stride(1) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise InfireError("rotary_store_kv: cos/sin and the caches must be contiguous in head_dim")
    _check_device("rotary_store_kv", qkv, k_cache)
    if num_tokens:
        rotary_store_kv_kernel[(num_tokens,)](
            qkv, cos, sin, slot_mapping, k_cache, v_cache,
            qkv.stride(0), cos.stride(0), sin.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
            HEADS_BLOCK=triton.next_power_of_2(num_heads + num_kv_heads),
            HALF_BLOCK=triton.next_power_of_2(head_dim // 2), KV_HEADS_BLOCK=triton.next_power_of_2(num_kv_heads),
            DIM_BLOCK=triton.next_power_of_2(head_dim), PAGE_SIZE=page_size, num_warps=8, **_NO_FMA,
        )
    return qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)


# ---------------------------------------------------------------------------- SiLU and mul


@triton.jit
def silu_and_mul_kernel(out_ptr, x_ptr, stride_out, stride_x, num_cols,
                        BLOCK: tl.constexpr, PRECISE_EXP: tl.constexpr):
    """out[t, j] = silu(gate[t, j]) * up[t, j] with x[t] = [gate | up]; silu rounded to the
    dtype before the product, as `F.silu(gate) * up`."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < num_cols
    gate = tl.load(x_ptr + token * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + token * stride_x + num_cols + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    if PRECISE_EXP:
        e = libdevice.exp(-g)  # the CUDA math library's expf, as torch's silu kernel calls
    else:
        e = tl.exp(-g)
    silu = tl.math.div_rn(g, 1.0 + e).to(gate.dtype)
    out = (silu.to(tl.float32) * up.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + token * stride_out + cols, out, mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> silu(gate) * up [T, I]."""
    _check_rows("silu_and_mul x", x)
    num_tokens, width = x.shape
    if width % 2:
        raise InfireError(f"silu_and_mul: x has {width} columns; expected an even number ([gate | up])")
    num_cols = width // 2
    out = torch.empty(num_tokens, num_cols, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(num_cols))
    if num_tokens:
        silu_and_mul_kernel[(num_tokens, triton.cdiv(num_cols, block))](
            out, x, out.stride(0), x.stride(0), num_cols, BLOCK=block, PRECISE_EXP=not _interpreted(),
            num_warps=4, **_NO_FMA,
        )
    return out


# ---------------------------------------------------------------------------- small-batch linear


GEMV_MAX_ROWS = 1   # x rows up to which `linear` runs the Triton kernel; more rows go to torch (cuBLAS)


@dataclass(frozen=True)
class GemvConfig:
    """Tile of the batch-1 linear kernel; benchmarks/gemv.py sweeps it on the target GPU (the
    default was the fastest on most 8B shapes on an H100, BENCHMARKS.md)."""

    block_n: int = 2      # output features a program computes
    block_k: int = 1024   # weight columns read per loop iteration (16-byte loads per thread)
    num_warps: int = 4


GEMV_CONFIG = GemvConfig()


@triton.jit
def gemv_kernel(out_ptr, x_ptr, w_ptr, bias_ptr, num_out, num_in, stride_w,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """out[n] = sum_k x[k] * w[n, k] (+ bias[n]) for BLOCK_N features n.

    Batch-1 decoding reads every weight once per token, so this is a bandwidth problem:
    each program streams a [BLOCK_N, num_in] slab of W in [BLOCK_N, BLOCK_K] tiles, keeps
    float32 partial products per column and reduces them once at the end (no split over K,
    so no atomics: the result is deterministic).
    """
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < num_out
    k = tl.arange(0, BLOCK_K)
    w_at = w_ptr + n.to(tl.int64)[:, None] * stride_w + k[None, :]          # [BLOCK_N, BLOCK_K]
    x_at = x_ptr + k
    acc = tl.full([BLOCK_N, BLOCK_K], 0.0, tl.float32)
    for k0 in range(0, num_in, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_at, mask=n_mask[:, None], other=0.0)
            x = tl.load(x_at)
        else:
            k_mask = (k0 + k) < num_in
            w = tl.load(w_at, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_at, mask=k_mask, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        w_at += BLOCK_K
        x_at += BLOCK_K
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n_mask)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           config: GemvConfig | None = None) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T (+ bias) -> [1, N], float32 accumulation."""
    _check_rows("linear x", x)
    _check_rows("linear weight", weight)
    num_rows, num_in = x.shape
    num_out = weight.shape[0]
    if weight.shape[1] != num_in or weight.dtype != x.dtype or num_rows != 1:
        raise InfireError(f"linear: x {x.dtype} {tuple(x.shape)} and weight {weight.dtype} {tuple(weight.shape)} "
                          f"do not fit (same dtype, same K, one row of x)")
    if bias is not None and (bias.shape != (num_out,) or bias.dtype != x.dtype or not bias.is_contiguous()):
        raise InfireError(f"linear: bias {bias.dtype} {tuple(bias.shape)} does not match {num_out} outputs")
    _check_device("linear", x, weight)
    cfg = config or GEMV_CONFIG
    block_k = max(16, min(cfg.block_k, triton.next_power_of_2(num_in)))
    out = torch.empty(1, num_out, dtype=x.dtype, device=x.device)
    gemv_kernel[(triton.cdiv(num_out, cfg.block_n),)](
        out, x, weight, bias if bias is not None else weight, num_out, num_in, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_K=block_k, EVEN_K=num_in % block_k == 0,
        num_warps=cfg.num_warps,
    )
    return out


def use_gemv(x: torch.Tensor) -> bool:
    """Whether `linear` takes these rows (batch 1, on the GPU or under the interpreter): with more
    rows cuBLAS was as fast or faster (BENCHMARKS.md)."""
    return x.dim() == 2 and 0 < x.shape[0] <= GEMV_MAX_ROWS and (x.is_cuda or _interpreted())


# ---------------------------------------------------------------------------- checks


def _check_rows(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or t.stride(1) != 1 or t.dtype not in _DTYPES:
        raise InfireError(f"{name} must be a 2-D fp16/bf16/fp32 tensor contiguous in its last dimension, "
                          f"got {t.dtype} {tuple(t.shape)} with strides {tuple(t.stride())}")
    _check_device(name, t)


def _check_device(name: str, *tensors: torch.Tensor) -> None:
    if not _interpreted() and not all(t.is_cuda for t in tensors):
        raise InfireError(f"{name}: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)")


# ---------------------------------------------------------------------------- start-up check


def check_fused_ops(config, device: torch.device, dtype: torch.dtype, tp_size: int = 1) -> str | None:
    """Run each kernel once at the model's sizes against the torch ops it replaces.

    Returns None when all agree (rotary + KV store bit for bit, the others within a
    rounding step), else what failed: a kernel that does not compile or disagrees.
    """
    checks = {"rms_norm": _check_rms_norm, "rotary_store_kv": _check_rotary, "silu_and_mul": _check_silu,
              "linear": _check_linear}
    gen = torch.Generator(device=device).manual_seed(0)
    for name, check in checks.items():
        try:
            check(config, device, dtype, tp_size, gen)
        except Exception as exc:  # noqa: BLE001 - any failure (compiler, launch, mismatch) disables the kernels
            return f"the {name} kernel failed its check ({exc!r})"
    return None


def _random(shape, dtype, device, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def _check_rms_norm(config, device, dtype, tp_size, gen) -> None:
    from infire.model.layers import RMSNorm

    norm = RMSNorm(config.hidden_size, config.rms_norm_eps).to(device=device, dtype=dtype)
    norm.weight.data = 1 + 0.1 * _random(config.hidden_size, dtype, device, gen)
    x, residual = (_random((3, config.hidden_size), dtype, device, gen) for _ in range(2))
    out, h = rms_norm(x, norm.weight, norm.eps, residual)
    expected_out, expected_h = norm(x, residual)
    if not torch.equal(h, expected_h):
        raise InfireError("the residual sum differs from torch's")
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(rms_norm(x, norm.weight, norm.eps), norm(x))


def _check_rotary(config, device, dtype, tp_size, gen) -> None:
    from infire.engine.attention import store_kv
    from infire.model.layers import RotaryEmbedding, apply_rotary

    heads, kv_heads = config.num_attention_heads // tp_size, config.num_key_value_heads // tp_size
    head_dim = config.head_dim
    rotary = RotaryEmbedding(head_dim, config.rope)
    rotary.reset_parameters(device)
    cos, sin = rotary(torch.tensor([0, 5, 4000], device=device), dtype)
    qkv = _random((3, (heads + 2 * kv_heads) * head_dim), dtype, device, gen)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    expected_q = apply_rotary(q.reshape(3, heads, head_dim), cos, sin)
    expected_k = apply_rotary(k.reshape(3, kv_heads, head_dim), cos, sin)
    k_cache = torch.zeros(2, 16, kv_heads, head_dim, dtype=dtype, device=device)
    v_cache, expected_k_cache, expected_v_cache = (torch.zeros_like(k_cache) for _ in range(3))
    slots = torch.tensor([17, -1, 3], device=device)
    store_kv(expected_k[[0, 2]], v.reshape(3, kv_heads, head_dim)[[0, 2]], expected_k_cache, expected_v_cache,
             slots[[0, 2]])
    out_q = rotary_store_kv(qkv, cos, sin, k_cache, v_cache, slots, heads, kv_heads)
    for what, got, expected in (("q", out_q, expected_q), ("k cache", k_cache, expected_k_cache),
                                ("v cache", v_cache, expected_v_cache)):
        if not torch.equal(got, expected):
            raise InfireError(f"rotated {what} differs from torch's")


def _check_silu(config, device, dtype, tp_size, gen) -> None:
    import torch.nn.functional as F

    x = 3 * _random((3, 2 * config.intermediate_size // tp_size), dtype, device, gen)
    gate, up = x.chunk(2, dim=-1)
    torch.testing.assert_close(silu_and_mul(x), F.silu(gate) * up)


def _check_linear(config, device, dtype, tp_size, gen) -> None:
    import torch.nn.functional as F

    hidden = config.hidden_size
    weight = _random((2 * config.intermediate_size // tp_size, hidden), dtype, device, gen) / hidden ** 0.5
    bias = _random(weight.shape[0], dtype, device, gen)
    x = _random((1, hidden), dtype, device, gen)
    assert_close_dot(linear(x, weight, bias), F.linear(x, weight, bias))
    assert_close_dot(linear(x, weight), F.linear(x, weight))


def assert_close_dot(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to the rounding of dot products summed in another order: a step of the output
    dtype (for float32, of the float32 sums: 2^-16), scaled to the largest output, since a result
    near zero may differ by more than its own step."""
    step = max(torch.finfo(expected.dtype).eps, 2.0 ** -16)
    scale = expected.abs().max().float().item()
    torch.testing.assert_close(got, expected, rtol=2 * step, atol=2 * step * scale)
