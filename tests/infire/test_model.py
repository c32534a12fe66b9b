"""The model against transformers: logits per architecture variant, config parsing,
weight loading errors, and dense vs compressed weights."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from infire.errors import ConfigError, ModelLoadError, UnsupportedArchitectureError
from infire.model.config import ARCHITECTURES, ModelConfig, parse_model_config

from .conftest import VARIANTS, build_packed_tiny_model, hf_greedy, hf_model, make_engine

PROMPT = [5, 17, 99, 3, 250, 42, 7, 7, 128, 64, 1, 33, 200]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(tiny_model_dir, variant):
    path = tiny_model_dir(variant)
    engine = make_engine(path, max_num_batched_tokens=5)  # also exercises chunked prefill
    with torch.no_grad():
        expected = hf_model(path)(torch.tensor([PROMPT])).logits[0]
    logits = engine.compute_logits(PROMPT)
    assert logits.shape == (len(PROMPT), 256)
    assert relative_error(logits, expected) < 1e-4


def test_rope_scaling_changes_logits(tiny_model_dir):
    """The llama3 variant only differs in rope scaling: its logits must differ from plain llama."""
    plain = make_engine(tiny_model_dir("llama")).compute_logits(PROMPT)
    scaled = make_engine(tiny_model_dir("llama3_rope")).compute_logits(PROMPT)
    assert relative_error(scaled, plain) > 1e-3


@pytest.mark.slow
def test_demo_model_logits_and_greedy_match_transformers(smollm2_dir):
    engine = make_engine(smollm2_dir, num_kv_blocks=16, block_size=16)
    model = hf_model(smollm2_dir)
    prompt = [1, 504, 3458, 282, 4649, 314, 253, 3575, 30, 216]
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0]
    assert relative_error(engine.compute_logits(prompt), expected) < 1e-4
    from infire.engine import SamplingParams

    assert engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0)) == [hf_greedy(model, prompt, 8)]


# ---------------------------------------------------------------------------- config


def llama_json(**changes) -> dict:
    raw = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 128, "eos_token_id": 2}
    raw.update(changes)
    return raw


def test_unknown_architecture_lists_supported():
    with pytest.raises(UnsupportedArchitectureError) as info:
        parse_model_config(llama_json(architectures=["GPT2LMHeadModel"]), {})
    for name in ARCHITECTURES:
        assert name in str(info.value)


def test_eos_ids_merge_config_and_generation_config():
    config = parse_model_config(llama_json(eos_token_id=2), {"eos_token_id": [2, 7, 9]})
    assert config.eos_token_ids == (2, 7, 9)


def test_old_rope_format_and_head_dim_default():
    config = parse_model_config(
        llama_json(rope_theta=5e5, rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}), {}
    )
    assert (config.rope.theta, config.rope.rope_type, config.head_dim) == (5e5, "llama3", 4)


def test_unsupported_rope_type_and_activation_are_config_errors():
    with pytest.raises(ConfigError, match="yarn"):
        parse_model_config(llama_json(rope_scaling={"rope_type": "yarn", "factor": 4.0}), {})
    with pytest.raises(ConfigError, match="hidden_act"):
        parse_model_config(llama_json(hidden_act="gelu"), {})


def test_sliding_window_and_dynamic_rope_cap_max_model_len():
    mistral = parse_model_config(llama_json(architectures=["MistralForCausalLM"], sliding_window=64), {})
    qwen2 = parse_model_config(llama_json(architectures=["Qwen2ForCausalLM"], sliding_window=64), {})
    dynamic = parse_model_config(llama_json(rope_scaling={"type": "dynamic", "factor": 2.0}), {})
    assert (mistral.max_model_len, qwen2.max_model_len, dynamic.max_model_len) == (64, 128, 128)
    assert qwen2.qkv_bias and not mistral.qkv_bias


def test_missing_config_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        ModelConfig.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------- loading


def test_missing_tensor_is_reported(tmp_path, llama_dir):
    from safetensors.torch import load_file, save_file

    shutil.copy(llama_dir / "config.json", tmp_path / "config.json")
    tensors = load_file(llama_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="up_proj"):
        make_engine(tmp_path)


def test_wrong_shape_is_reported(tmp_path, llama_dir):
    from safetensors.torch import load_file, save_file

    shutil.copy(llama_dir / "config.json", tmp_path / "config.json")
    tensors = load_file(llama_dir / "model.safetensors")
    tensors["model.norm.weight"] = torch.ones(63)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"model\.norm\.weight.*\(63,\).*\(64,\)"):
        make_engine(tmp_path)


def test_compressed_needs_packed_checkpoint(llama_dir):
    with pytest.raises(ConfigError, match="packed"):
        make_engine(llama_dir, weights="compressed")


@pytest.fixture(scope="module")
def packed_bf16(tmp_path_factory):
    """A 6-layer bf16 tiny Llama and its packed form."""
    return build_packed_tiny_model(tmp_path_factory, 6)


def test_compressed_weights_are_bit_exact_and_smaller(packed_bf16):
    plain, packed = packed_bf16
    dense = make_engine(plain, dtype="checkpoint")
    from_packed = make_engine(packed, dtype="checkpoint")
    compressed = make_engine(packed, weights="compressed")
    expected = dense.compute_logits(PROMPT)
    assert torch.equal(from_packed.compute_logits(PROMPT), expected)
    assert torch.equal(compressed.compute_logits(PROMPT), expected)
    assert dense.weights_memory_bytes() == from_packed.weights_memory_bytes()


def test_compressed_memory_is_packed_bytes_plus_two_layer_buffers(packed_bf16):
    import unweight

    _, packed = packed_bf16
    dense = make_engine(packed, dtype="checkpoint")
    compressed = make_engine(packed, weights="compressed")
    layer_linear = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\..*_proj\.weight")
    with unweight.open(packed) as f:
        names = [n for n in f.keys() if layer_linear.match(n)]
        packed_bytes = sum(f.get_packed(n).nbytes for n in names)
        raw_bytes = sum(f.get_tensor(n).nbytes for n in names)
    two_layers = 2 * raw_bytes // 6
    assert compressed.weights_memory_bytes() == dense.weights_memory_bytes() - raw_bytes + packed_bytes + two_layers


def test_compressed_rejects_other_dtype(packed_bf16):
    _, packed = packed_bf16
    with pytest.raises(ConfigError, match="checkpoint dtype"):
        make_engine(packed, weights="compressed", dtype="float32")


def test_dense_memory_counts_tied_embedding_once(tiny_model_dir):
    engine = make_engine(tiny_model_dir("tied"))
    raw = json.loads((tiny_model_dir("tied") / "config.json").read_text())
    hidden, inter, vocab = raw["hidden_size"], raw["intermediate_size"], raw["vocab_size"]
    head_dim, kv = hidden // raw["num_attention_heads"], raw["num_key_value_heads"]
    per_layer = hidden * (hidden + 2 * kv * head_dim) + hidden * hidden + 3 * hidden * inter + 2 * hidden
    expected = 4 * (vocab * hidden + raw["num_hidden_layers"] * per_layer + hidden)
    assert engine.weights_memory_bytes() == expected


@pytest.mark.parametrize("variant", ["llama", "llama_bias", "qwen3"])
def test_stacked_projections_match_separate_ones_bit_for_bit(tiny_model_dir, monkeypatch, variant):
    """q/k/v and gate/up run as one matmul over stacked weights; each output column is the same
    dot product as in a matmul of its own weight, so the logits are the same bits."""
    import torch.nn.functional as F

    from infire.model.layers import ColumnParallelLinear

    engine = make_engine(tiny_model_dir(variant))
    stacked = engine.compute_logits(PROMPT)

    def one_matmul_per_shard(self, x):
        rows = [self.shard_rows(i) for i in range(len(self.shard_sizes))]
        return torch.cat([F.linear(x, self.weight[a:b], None if self.bias is None else self.bias[a:b])
                          for a, b in rows], dim=-1)

    monkeypatch.setattr(ColumnParallelLinear, "forward", one_matmul_per_shard)
    separate = engine.compute_logits(PROMPT)
    assert torch.equal(stacked.view(torch.int32), separate.view(torch.int32))
