"""Fixtures for unweight tests: small synthetic checkpoints written with safetensors itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from .synthetic import small_state


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A single-file HF-style checkpoint with config and tokenizer files beside it."""
    root = tmp_path / "src"
    root.mkdir()
    save_file(small_state(), root / "model.safetensors", metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (root / "tokenizer.json").write_text("{}")
    return root


@pytest.fixture
def sharded_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint split over two shards with a model.safetensors.index.json."""
    root = tmp_path / "sharded"
    root.mkdir()
    state = small_state(1)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, root / shard)
        weight_map.update({k: shard for k in keys})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text("{}")
    return root
