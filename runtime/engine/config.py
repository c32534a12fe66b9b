"""EngineConfig: what to serve, where, and within which memory and batch limits."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from infire.errors import ConfigError

WEIGHTS = ("dense", "compressed")
LOAD_FORMATS = ("auto", "dummy")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("auto", "checkpoint", "float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
OPS_BACKENDS = ("auto", "torch", "triton")
DEFAULT_MAX_MODEL_LEN_CAP = 32768
# decode batch sizes that get a CUDA graph by default (then every 16 up to max_num_seqs, and max_num_seqs)
DEFAULT_CUDA_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings; every field is checked on construction.

    dtype "auto" means bfloat16 on CUDA and float32 on CPU ("checkpoint": the
    dtype stored in the checkpoint); with weights="compressed", "auto" also means
    the checkpoint dtype, since the weights are decoded as stored.
    num_kv_blocks None sizes the cache from gpu_memory_utilization (CUDA) or
    kv_cache_bytes (CPU). max_model_len None takes the model's, capped at
    DEFAULT_MAX_MODEL_LEN_CAP and at what the KV cache can hold.

    On CUDA, decode steps replay a CUDA graph captured for the smallest of
    cuda_graph_batch_sizes that holds the batch (None: DEFAULT_CUDA_GRAPH_BATCH_SIZES,
    then every 16, up to max_num_seqs); larger batches and prefill run eagerly.
    enforce_eager=True captures nothing. CPU runs are always eager. ops_backend
    "auto" fuses RMSNorm + residual, rotary + KV store and SiLU-and-mul into Triton
    kernels on CUDA (falling back to torch ops if they fail a start-up check) and
    uses torch ops on CPU.
    """

    model: str
    weights: str = "dense"
    device: str = "auto"
    dtype: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    kv_cache_bytes: int = 512 * 1024**2
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    attention_backend: str = "auto"
    seed: int = 0  # seeds the generator shared by requests without their own seed
    load_format: str = "auto"  # "dummy": random weights, only config.json is read (benchmarks)
    enforce_eager: bool = False
    cuda_graph_batch_sizes: tuple[int, ...] | None = None
    ops_backend: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model={self.model!r} is invalid; allowed: a checkpoint directory path")
        _check_choice("weights", self.weights, WEIGHTS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _check_choice("load_format", self.load_format, LOAD_FORMATS)
        _check_choice("ops_backend", self.ops_backend, OPS_BACKENDS)
        if not isinstance(self.enforce_eager, bool):
            raise ConfigError(f"enforce_eager={self.enforce_eager!r} is invalid; allowed: True or False")
        if self.load_format == "dummy" and self.weights == "compressed":
            raise ConfigError(
                "load_format='dummy' needs weights='dense'; compressed weights come from a packed checkpoint"
            )
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "kv_cache_bytes"):
            _check_positive_int(name, getattr(self, name))
        for name in ("num_kv_blocks", "max_model_len"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} is invalid; allowed: >= "
                f"max_num_seqs={self.max_num_seqs}, so that every running sequence can decode in a step"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"gpu_memory_utilization={self.gpu_memory_utilization!r} is invalid; allowed: 0 < value <= 1"
            )
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is visible; allowed here: 'cpu' or 'auto'")
        self._check_graph_batch_sizes()

    def _check_graph_batch_sizes(self) -> None:
        sizes = self.cuda_graph_batch_sizes
        if sizes is None:
            return
        if isinstance(sizes, list):  # as parsed from a config file
            sizes = tuple(sizes)
            object.__setattr__(self, "cuda_graph_batch_sizes", sizes)
        valid = isinstance(sizes, tuple) and sizes and all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= self.max_num_seqs for n in sizes)
        if not valid:
            raise ConfigError(
                f"cuda_graph_batch_sizes={sizes!r} is invalid; allowed: None or a non-empty list of integers "
                f"from 1 to max_num_seqs={self.max_num_seqs}"
            )

    @property
    def graph_batch_sizes(self) -> tuple[int, ...]:
        """The decode batch sizes that get a CUDA graph, ascending."""
        if self.cuda_graph_batch_sizes is not None:
            return tuple(sorted(set(self.cuda_graph_batch_sizes)))
        sizes = [n for n in DEFAULT_CUDA_GRAPH_BATCH_SIZES if n < self.max_num_seqs]
        sizes += range(DEFAULT_CUDA_GRAPH_BATCH_SIZES[-1] + 16, self.max_num_seqs, 16)
        return (*sizes, self.max_num_seqs)

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, checkpoint_dtype: torch.dtype) -> torch.dtype:
        """The dtype the model runs in, given the dtype the checkpoint stores."""
        if self.dtype == "checkpoint" or (self.dtype == "auto" and self.weights == "compressed"):
            return checkpoint_dtype
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32
        return _TORCH_DTYPES[self.dtype]

    def resolved_attention_backend(self) -> str:
        if self.attention_backend == "auto":
            return "triton" if self.torch_device.type == "cuda" else "torch"
        if self.attention_backend == "triton" and self.torch_device.type != "cuda" and not _triton_interpreted():
            raise ConfigError(
                "attention_backend='triton' needs a CUDA device (or TRITON_INTERPRET=1 on the CPU); "
                "allowed here: 'torch' or 'auto'"
            )
        return self.attention_backend

    def resolved_ops_backend(self) -> str:
        if self.ops_backend == "auto":
            return "triton" if self.torch_device.type == "cuda" else "torch"
        if self.ops_backend == "triton" and self.torch_device.type != "cuda" and not _triton_interpreted():
            raise ConfigError(
                "ops_backend='triton' needs a CUDA device (or TRITON_INTERPRET=1 on the CPU); "
                "allowed here: 'torch' or 'auto'"
            )
        return self.ops_backend

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.torch_device.type == "cuda" and not self.enforce_eager

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> "EngineConfig":
        """Build from a mapping (e.g. a parsed config file); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown engine setting(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**values)


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is invalid; allowed: {', '.join(map(repr, allowed))}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} is invalid; allowed: an integer >= 1")
