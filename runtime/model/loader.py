"""Build a model on the meta device and fill it from a checkpoint read through `unweight.open`.

Works on plain Hugging Face directories and packed unweight directories alike.
With weights="compressed" the linear weights of every decoder layer stay packed
on the device and are decoded per layer by a LayerWeightStreamer.
"""

from __future__ import annotations

import re

import torch
import unweight
from torch import nn

from infire.errors import ConfigError, ModelLoadError
from infire.model.compressed import LayerWeightStreamer
from infire.model.config import ModelConfig
from infire.model.llama import STACKED_PARAMS, LlamaForCausalLM


# checkpoint tensors that are computed, not loaded
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class LoadedModel:
    """The model plus what loading decided: its dtype and, if compressed, the streamer."""

    def __init__(self, model: LlamaForCausalLM, dtype: torch.dtype, streamer: LayerWeightStreamer | None) -> None:
        self.model = model
        self.dtype = dtype
        self.streamer = streamer

    def weights_memory_bytes(self) -> int:
        """Bytes of weights resident on the device: dense parameters, plus packed
        weights and decode buffers in compressed mode."""
        seen, total = set(), 0
        for p in self.model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
        return total + (self.streamer.resident_bytes() if self.streamer else 0)


def load_model(config: ModelConfig, path: str, device: torch.device, dtype: torch.dtype,
               weights: str = "dense", tp_size: int = 1, tp_rank: int = 0) -> LoadedModel:
    """Read every tensor once, into the parameter (or packed slot) it belongs to."""
    with unweight.open(path) as f:
        if weights == "compressed":
            _check_compressed(f, path, dtype, config, tp_size)
        with torch.device("meta"):
            model = LlamaForCausalLM(config, tp_size, tp_rank).to(dtype)
        expected = checkpoint_names(model)
        streamer = LayerWeightStreamer.install(model, device, dtype) if weights == "compressed" else None
        model.to_empty(device=device)
        model.tie_weights()
        model.reset_buffers(device)
        loaded = _load_tensors(model, f, path, dtype, streamer)
        if streamer is not None:
            streamer.finish()
    missing = sorted(expected - loaded)
    if missing:
        raise ModelLoadError(f"{path}: {len(missing)} tensors are missing, e.g. {missing[:4]}")
    model.eval().requires_grad_(False)
    return LoadedModel(model, dtype, streamer)


def random_model(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 tp_size: int = 1, tp_rank: int = 0) -> LoadedModel:
    """A model of `config` with random weights made on the device (for benchmarks): norms
    near 1, everything else normal with std 0.02, so that no kernel runs on zeros."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config, tp_size, tp_rank).to(dtype)
    model.to_empty(device=device)
    model.tie_weights()
    model.reset_buffers(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        param.data.normal_(1.0 if "norm" in name else 0.0, 0.02, generator=generator)
    model.eval().requires_grad_(False)
    return LoadedModel(model, dtype, None)


def checkpoint_names(model: LlamaForCausalLM) -> set[str]:
    """Names of the checkpoint tensors that fill the model's parameters."""
    stacked = {}
    for source, (target, shard) in STACKED_PARAMS.items():
        stacked.setdefault(target, []).append(source)
    names = set()
    for name, _ in model.named_parameters():  # tied weights appear once
        module = name.rsplit(".", 2)[-2]
        sources = stacked.get(module, [module])
        names.update(name.replace(f".{module}.", f".{source}.") for source in sources)
    return names


def _check_compressed(f, path: str, dtype: torch.dtype, config: ModelConfig, tp_size: int) -> None:
    if not f.is_packed:
        raise ConfigError(
            f"weights='compressed' needs a packed checkpoint, but {path} is a plain one; "
            "compress it with `unweight compress` or use weights='dense'"
        )
    if dtype != config.torch_dtype:
        raise ConfigError(
            f"weights='compressed' runs in the checkpoint dtype ({config.torch_dtype}), not {dtype}; "
            "set dtype='auto' or 'checkpoint'"
        )
    if tp_size != 1:
        raise ConfigError(f"weights='compressed' supports tp_size=1 only, got {tp_size}")


def _load_tensors(model: LlamaForCausalLM, f, path: str, dtype: torch.dtype,
                  streamer: LayerWeightStreamer | None) -> set[str]:
    """Copy (or keep packed) every checkpoint tensor; returns the names used."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = set()
    for name in f.keys():
        if _IGNORED.match(name) or (model.config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        if streamer is not None and streamer.streams(name):
            streamer.add(name, f.get_packed(name).to(streamer.device))
        else:
            target, shard = _target(name)
            if target not in params:
                raise ModelLoadError(f"{path}: tensor {name!r} has no place in {model.config.architecture}")
            param = params[target]
            _copy_into(model, param, target, shard, f.get_tensor(name, device=param.device), name, path, dtype)
        loaded.add(name)
    return loaded


def _target(name: str) -> tuple[str, int | None]:
    """Checkpoint name -> (parameter name in our model, shard index within a stacked weight)."""
    for source, (stacked, shard) in STACKED_PARAMS.items():
        if f".{source}." in name:
            return name.replace(f".{source}.", f".{stacked}."), shard
    return name, None


def _copy_into(model: nn.Module, param: torch.Tensor, target: str, shard: int | None,
               tensor: torch.Tensor, name: str, path: str, dtype: torch.dtype) -> None:
    module = model.get_submodule(target.rsplit(".", 1)[0])
    tensor = tensor.to(device=param.device, dtype=dtype)
    expected = _expected_shape(module, param, shard)
    if tuple(tensor.shape) != expected:
        raise ModelLoadError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected}")
    if hasattr(module, "load_shard"):
        module.load_shard(param, tensor, shard if shard is not None else 0)
    else:
        param.data.copy_(tensor)


def _expected_shape(module: nn.Module, param: torch.Tensor, shard: int | None) -> tuple[int, ...]:
    """Full (unsharded) checkpoint shape of the tensor that loads into `param`."""
    shape = list(param.shape)
    tp_size = getattr(module, "tp_size", 1)
    if hasattr(module, "shard_sizes"):  # column parallel: one shard's rows, times tp_size
        shape[0] = module.shard_sizes[shard or 0] * tp_size
    elif hasattr(module, "load_shard") and param.dim() == 2:  # row parallel: columns times tp_size
        shape[1] *= tp_size
    return tuple(shape)
