"""Fixtures for the infire tests: tiny random Llama-family checkpoints built with
transformers, one per architecture variant, and engines over them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


_SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, eos_token_id=2)

# variant -> (transformers config class name, extra config fields)
VARIANTS = {
    "llama": ("LlamaConfig", {}),
    "llama3_rope": ("LlamaConfig", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "linear_rope": ("LlamaConfig", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama_bias": ("LlamaConfig", {"attention_bias": True}),
    "tied": ("LlamaConfig", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
}


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Tiny models gain nothing from intra-op threads, whose spin-waits dominate on shared machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build_tiny_model(directory: Path, variant: str, dtype: torch.dtype = torch.float32, seed: int = 0,
                     **overrides) -> Path:
    """Save a random tiny model of `variant`; every weight (biases and norms too) is random."""
    import transformers

    class_name, extra = VARIANTS[variant]
    config = getattr(transformers, class_name)(**{**_SMALL, **extra, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.1 * torch.randn_like(param))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def build_packed_tiny_model(factory, num_hidden_layers: int) -> tuple[Path, Path]:
    """A bf16 tiny Llama of `num_hidden_layers` layers and its packed form (for a module-scoped fixture)."""
    import unweight

    plain = build_tiny_model(factory.mktemp("bf16"), "llama", dtype=torch.bfloat16, num_hidden_layers=num_hidden_layers)
    packed = factory.mktemp("packed") / "model"
    unweight.compress(plain, packed)
    return plain, packed


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(variant) -> path of a saved fp32 random model (built once per session)."""
    built: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in built:
            built[variant] = build_tiny_model(tmp_path_factory.mktemp(variant), variant)
        return built[variant]

    return get


@pytest.fixture(scope="session")
def llama_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("llama")


def make_engine(model: Path, **overrides):
    from infire.engine import EngineConfig, LLMEngine

    settings = dict(device="cpu", num_kv_blocks=64, block_size=4, max_num_batched_tokens=64, max_num_seqs=8)
    if overrides.get("max_num_batched_tokens", 64) < 8:
        settings["max_num_seqs"] = overrides["max_num_batched_tokens"]
    return LLMEngine(EngineConfig(model=str(model), **{**settings, **overrides}))


@pytest.fixture(scope="session")
def llama_engine(llama_dir):
    """A shared engine over the tiny Llama; tests must leave it without requests."""
    return make_engine(llama_dir)


def hf_model(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(path_or_model, prompt: list[int], max_new_tokens: int) -> list[int]:
    model = hf_model(path_or_model) if isinstance(path_or_model, Path) else path_or_model
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def run_all(engine, requests: dict[str, tuple[list[int], object]]) -> dict[str, list[int]]:
    """Add the requests, step to completion, return the tokens of every request that ran."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    tokens: dict[str, list[int]] = {request_id: [] for request_id in requests}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return tokens
