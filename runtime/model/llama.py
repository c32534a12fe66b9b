"""The Llama family (Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM2) as one model class.

Module names follow the Hugging Face checkpoints, except that q/k/v and gate/up
are stacked into `qkv_proj` and `gate_up_proj` (see STACKED_PARAMS).
"""

from __future__ import annotations

import torch
from torch import nn

from infire.engine.attention import AttentionBatch
from infire.model.config import ModelConfig
from infire.model.layers import MLP, Attention, ColumnParallelLinear, Embedding, RMSNorm, RotaryEmbedding

# checkpoint module name -> (stacked module name, shard index)
STACKED_PARAMS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class DecoderLayer(nn.Module):
    """h = x + attn(norm(x)); out = h + mlp(norm(h)).

    The residual sums are deferred into the next norm (which adds and normalizes in one
    kernel with ops_backend "triton"): a layer takes (delta, residual) with x = delta +
    residual (residual None for the first layer, whose x is the embedding) and returns
    (mlp output, h). The sums are the same additions as above, so the result is too.
    """

    def __init__(self, config: ModelConfig, layer_idx: int, tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx, tp_size, tp_rank)
        self.mlp = MLP(config, tp_size, tp_rank)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, delta: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                batch: AttentionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, normed = delta, self.input_layernorm(delta)
        else:
            normed, residual = self.input_layernorm(delta, residual)  # x = delta + residual, [T, hidden]
        attn = self.self_attn(normed, cos, sin, batch)  # [T, hidden]
        normed, residual = self.post_attention_layernorm(attn, residual)  # h = x + attn
        return self.mlp(normed), residual

    def linear_layers(self) -> dict[str, nn.Module]:
        """The projections whose weights `weights="compressed"` keeps packed."""
        return {
            "self_attn.qkv_proj": self.self_attn.qkv_proj,
            "self_attn.o_proj": self.self_attn.o_proj,
            "mlp.gate_up_proj": self.mlp.gate_up_proj,
            "mlp.down_proj": self.mlp.down_proj,
        }


class LlamaModel(nn.Module):
    """Token embedding, the decoder stack and the final norm."""

    def __init__(self, config: ModelConfig, tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, tp_size, tp_rank) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        h = self.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = self.rotary_emb(positions, h.dtype)  # [T, head_dim] each
        residual = None
        for layer in self.layers:
            h, residual = layer(h, residual, cos, sin, batch)
        return self.norm(h, residual)[0]  # [T, hidden]


class LlamaForCausalLM(nn.Module):
    """Hidden states from `forward`; logits for chosen rows from `compute_logits`."""

    def __init__(self, config: ModelConfig, tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, tp_size, tp_rank)
        self.lm_head = ColumnParallelLinear(config.hidden_size, [config.vocab_size], False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the output head when the checkpoint ties them."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def set_ops_backend(self, backend: str) -> None:
        """"torch": reference ops; "triton": fused RMSNorm + residual, rotary + KV store, SiLU-and-mul and
        the small-batch linear kernel."""
        for module in self.modules():
            if hasattr(module, "ops_backend"):
                module.ops_backend = backend

    def reset_buffers(self, device: torch.device) -> None:
        """Fill the buffers that are computed, not loaded (after `to_empty`)."""
        self.model.rotary_emb.reset_parameters(device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        return self.model(input_ids, positions, batch)  # [T, hidden]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # [N, vocab]
