"""LayerWeightStreamer: keeps decoder-layer linear weights packed on the device and
decodes each layer's weights into a reusable buffer set just before the layer runs.

Two buffer sets alternate: layer i computes from set i % 2 while layer i + 1 is
decoded into the other set. On CUDA that decode runs on a side stream, ordered
by events: decode(i + 1) starts after layer i - 1 (the last user of its set) is
done, and layer i + 1 waits for its decode. On CPU decoding is synchronous.

With the Triton decoder, each layer's matrices are decoded by one batched launch
(an unweight DecodePlan built at load time for that layer and its buffer set);
the plan allocates nothing and does not synchronize, so CUDA graphs capture it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from unweight.packed import resolve_backend

from infire.errors import ModelLoadError

NUM_BUFFER_SETS = 2
_NAME = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.weight$")
# checkpoint projection -> (stacked module inside the layer, shard)
_PROJECTIONS = {
    "q_proj": ("self_attn.qkv_proj", 0), "k_proj": ("self_attn.qkv_proj", 1), "v_proj": ("self_attn.qkv_proj", 2),
    "o_proj": ("self_attn.o_proj", 0),
    "gate_proj": ("mlp.gate_up_proj", 0), "up_proj": ("mlp.gate_up_proj", 1), "down_proj": ("mlp.down_proj", 0),
}


class LayerWeightStreamer:
    """Packed weights per layer, two decode buffer sets, and the hooks that fill them."""

    def __init__(self, layers: nn.ModuleList, device: torch.device, dtype: torch.dtype) -> None:
        self.layers = layers
        self.device = device
        template = layers[0].linear_layers()
        self.buffers = [
            {name: torch.empty(module.weight.shape, dtype=dtype, device=device) for name, module in template.items()}
            for _ in range(NUM_BUFFER_SETS)
        ]
        # per layer: (packed tensor, destination view) pairs
        self.packed: list[list[tuple[object, torch.Tensor]]] = [[] for _ in layers]
        # per layer, once finish() ran with the Triton decoder: one DecodePlan for its lanes-coded
        # matrices, and the (packed, out) pairs of any other encoding, decoded one by one
        self.plans: list[object] = []
        self.unplanned: list[list[tuple[object, torch.Tensor]]] = []
        self.side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.decoded = [torch.cuda.Event() for _ in layers] if self.side_stream else []

    @classmethod
    def install(cls, model: nn.Module, device: torch.device, dtype: torch.dtype) -> "LayerWeightStreamer":
        """Replace each layer's linear weight parameters (still on meta) by views of its buffer set."""
        layers = model.model.layers
        streamer = cls(layers, device, dtype)
        for i, layer in enumerate(layers):
            for name, module in layer.linear_layers().items():
                del module._parameters["weight"]
                module.weight = streamer.buffers[i % NUM_BUFFER_SETS][name]
            layer.register_forward_pre_hook(lambda module, args, i=i: streamer.before_layer(i))
        return streamer

    @staticmethod
    def streams(name: str) -> bool:
        """True for the checkpoint tensors this streamer keeps packed."""
        match = _NAME.match(name)
        return match is not None and match.group(3) in _PROJECTIONS

    def add(self, name: str, packed) -> None:
        """Take the packed checkpoint tensor `name` (already on the device)."""
        match = _NAME.match(name)
        if match is None or match.group(3) not in _PROJECTIONS or int(match.group(1)) >= len(self.layers):
            raise ModelLoadError(f"tensor {name!r} is not a decoder-layer projection of this model")
        index, proj = int(match.group(1)), match.group(3)
        module_name, shard = _PROJECTIONS[proj]
        module = self.layers[index].get_submodule(module_name)
        start, end = module.shard_rows(shard)
        out = self.buffers[index % NUM_BUFFER_SETS][module_name][start:end]
        if tuple(packed.shape) != tuple(out.shape) or _torch_dtype(packed) != out.dtype:
            raise ModelLoadError(f"tensor {name!r} is {_torch_dtype(packed)} {tuple(packed.shape)}, "
                                 f"expected {out.dtype} {tuple(out.shape)}")
        self.packed[index].append((packed, out))

    def finish(self) -> None:
        """Build each layer's batched decode plan once every packed tensor is in (Triton decoder only)."""
        if resolve_backend(None, self.device) != "triton":
            return
        from unweight.kernels.decode import DecodeItem, DecodePlan  # lazy: Triton is optional

        self.plans, self.unplanned = [], []
        for pairs in self.packed:
            lanes = [(packed, out) for packed, out in pairs if packed.encoding == "lanes"]
            self.plans.append(DecodePlan([DecodeItem.from_packed(packed, out) for packed, out in lanes]))
            self.unplanned.append([(packed, out) for packed, out in pairs if packed.encoding != "lanes"])

    def packed_bytes(self) -> int:
        """Bytes of the packed weights of every layer."""
        return sum(p.nbytes for layer in self.packed for p, _ in layer)

    def buffer_bytes(self) -> int:
        """Bytes of the decode buffer sets (each holds one layer's dense linear weights)."""
        return sum(t.numel() * t.element_size() for s in self.buffers for t in s.values())

    def resident_bytes(self) -> int:
        return self.packed_bytes() + self.buffer_bytes()

    def decode_layer(self, index: int) -> None:
        """Decode layer `index`'s weights into its buffer set (on the current stream with plans)."""
        if self.plans:
            self.plans[index].launch()
            pairs = self.unplanned[index]
        else:
            pairs = self.packed[index]
        for packed, out in pairs:
            packed.decode_into(out, stream=self.side_stream)

    def before_layer(self, index: int) -> None:
        if self.side_stream is None:
            self.decode_layer(index)
            return
        compute = torch.cuda.current_stream(self.device)
        if index == 0:
            self._decode_async(0, compute)
        compute.wait_event(self.decoded[index])
        if index + 1 < len(self.layers):
            self._decode_async(index + 1, compute)

    def _decode_async(self, index: int, compute: torch.cuda.Stream) -> None:
        # everything already queued on `compute` (up to layer index - 1, the last
        # user of this buffer set) finishes before the side stream overwrites it
        self.side_stream.wait_stream(compute)
        with torch.cuda.stream(self.side_stream):
            self.decode_layer(index)
            self.decoded[index].record(self.side_stream)


def _torch_dtype(packed) -> torch.dtype:
    dtype = getattr(packed, "torch_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else packed.dtype
