"""KVCache: paged K and V tensors, [num_blocks, block_size, num_kv_heads, head_dim] per layer."""

from __future__ import annotations

import torch

from infire.model.config import ModelConfig


def kv_block_bytes(config: ModelConfig, block_size: int, dtype: torch.dtype, tp_size: int = 1) -> int:
    """Bytes of one block across all layers, K and V."""
    per_token = 2 * config.num_hidden_layers * (config.num_key_value_heads // tp_size) * config.head_dim
    return per_token * block_size * dtype.itemsize


class KVCache:
    """One allocation holding K and V of every layer; `layer(i)` gives that layer's views."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device, tp_size: int = 1) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        num_kv_heads = config.num_key_value_heads // tp_size
        # [2 (K, V), layers, blocks, block_size, KVH, D]; zeroed because padded attention
        # reads unwritten slots with weight 0, and 0 * NaN from garbage would be NaN
        self.data = torch.zeros(2, config.num_hidden_layers, num_blocks, block_size, num_kv_heads,
                                config.head_dim, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[0, index], self.data[1, index]

    def bind(self, model: torch.nn.Module) -> None:
        """Point each attention layer at its K/V views."""
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.k_cache, layer.self_attn.v_cache = self.layer(i)
