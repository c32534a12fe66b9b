"""The demo checkpoints: SmolLM2 converted from GGUF agrees with transformers' own GGUF loader,
the MiniLM bf16 variant is an exact cast, and the cache builds once and atomically."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unweight import demo
from unweight.demo import cache, minilm, smollm2

transformers = pytest.importorskip("transformers")

PROMPT = "The quick brown fox jumps over the lazy dog because"
TOKENIZER_SAMPLES = [
    "Hello world",
    "  leading spaces, trailing space ",
    "Numbers: 2024, 3.14159 and 1,000,000.",
    "Déjà vu — naïve café, 東京, emoji 🙂",
    "def f(x):\n\treturn x ** 2  # comment\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n",
]


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers():
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="module")
def gguf_model():
    """transformers' own GGUF loader: dequantizes to float32 and undoes the Q/K permutation."""
    path = smollm2.gguf_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def gguf_tokenizer():
    """transformers' own tokenizer built from the GGUF vocabulary, merges and metadata."""
    path = smollm2.gguf_path()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def converted_model(smollm2_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_dir, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def converted_tokenizer(smollm2_dir):
    return transformers.AutoTokenizer.from_pretrained(smollm2_dir)


# --- SmolLM2 ------------------------------------------------------------------------------


def test_smollm2_config_comes_from_gguf_metadata(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    expected = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "intermediate_size": 1536, "head_dim": 64,
                "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
                "vocab_size": 49152, "tie_word_embeddings": True, "bos_token_id": 1,
                "eos_token_id": 2, "torch_dtype": "bfloat16"}
    assert {key: config[key] for key in expected} == expected
    weights = load_file(smollm2_dir / "model.safetensors")
    assert "lm_head.weight" not in weights  # tied: the GGUF has no output.weight
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    assert len(weights) == 2 + 9 * 30


def test_smollm2_weights_are_bf16_rounding_of_transformers_gguf_weights(gguf_model, smollm2_dir):
    reference = gguf_model.state_dict()
    converted = load_file(smollm2_dir / "model.safetensors")
    for name, tensor in converted.items():
        expected = reference[name].to(torch.bfloat16)
        assert torch.equal(tensor.view(torch.int16), expected.view(torch.int16)), name


def test_smollm2_logits_match_transformers_gguf_loader(gguf_model, converted_model,
                                                      converted_tokenizer):
    ids = converted_tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = gguf_model(ids).logits
        actual = converted_model(ids).logits
    # Each converted weight is the GGUF's float32 value rounded to bf16 (relative error up to
    # 2**-9 = 0.2%); through 30 layers this moves the logits by ~0.5% (norm of the difference
    # over the norm of the logits). 2% leaves room for that and still catches any real mistake
    # (a wrong permutation or name gives errors of order 100%).
    relative = (actual - expected).norm() / expected.norm()
    assert relative < 2e-2, f"relative logit error {relative:.3g}"


def test_smollm2_chat_answers_paris(converted_model, converted_tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = converted_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = converted_model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = converted_tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                        skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_smollm2_special_tokens_and_chat_template_are_the_gguf_ones(gguf_tokenizer,
                                                                    converted_tokenizer):
    assert converted_tokenizer.chat_template == gguf_tokenizer.chat_template
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    assert [getattr(converted_tokenizer, n) for n in names] == \
        [getattr(gguf_tokenizer, n) for n in names] == \
        ["<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>"]


def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2_dir, gguf_tokenizer,
                                                               converted_tokenizer):
    from tokenizers import Tokenizer

    reference = gguf_tokenizer
    built = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    for text in TOKENIZER_SAMPLES:
        expected = reference.encode(text)
        assert built.encode(text).ids == expected, text
        assert converted_tokenizer.encode(text) == expected, text
        assert built.decode(expected, skip_special_tokens=False) == text


def test_smollm2_tokenizer_splits_digits_like_llama_cpp_smollm(smollm2_dir):
    from tokenizers import Tokenizer

    built = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    assert built.encode("12345").tokens == ["1", "2", "3", "4", "5"]


# --- MiniLM -------------------------------------------------------------------------------


def test_minilm_float32_is_a_verbatim_copy(minilm_dir):
    source = minilm.source_dir()
    assert minilm_dir != source
    compared = filecmp.dircmp(source, minilm_dir)
    assert not compared.left_only and not compared.right_only
    files = [p.relative_to(source) for p in source.rglob("*") if p.is_file()]
    assert all(filecmp.cmp(source / f, minilm_dir / f, shallow=False) for f in files)


def test_minilm_bf16_is_an_exact_cast(minilm_dir, minilm_bf16_dir):
    original = load_file(minilm_dir / "model.safetensors")
    cast = load_file(minilm_bf16_dir / "model.safetensors")
    assert original.keys() == cast.keys()
    assert original["embeddings.position_ids"].dtype == torch.int64
    for name, tensor in original.items():
        if tensor.is_floating_point():
            assert cast[name].dtype == torch.bfloat16, name
            expected = tensor.to(torch.bfloat16).view(torch.int16)
            assert torch.equal(cast[name].view(torch.int16), expected), name
        else:
            assert cast[name].dtype == tensor.dtype and torch.equal(cast[name], tensor), name
    others = [p.relative_to(minilm_dir) for p in minilm_dir.rglob("*")
              if p.is_file() and p.name != "model.safetensors"]
    assert all(filecmp.cmp(minilm_dir / f, minilm_bf16_dir / f, shallow=False) for f in others)


def test_minilm_dir_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="'bfloat16', 'float32'"):
        demo.minilm_dir("float16")


# --- cache --------------------------------------------------------------------------------


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("UNWEIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "demo"


def test_cache_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("UNWEIGHT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.cache_root() == tmp_path / "xdg" / "unweight"
    monkeypatch.setenv("UNWEIGHT_CACHE", str(tmp_path / "mine"))
    assert demo.demo_root() == tmp_path / "mine" / "demo"


def test_cache_builds_when_missing_and_not_when_present(private_cache):
    built = demo.minilm_dir()
    assert built.parent == private_cache
    weights = built / "model.safetensors"
    os.utime(weights, ns=(10**9, 10**9))  # a build would leave a fresh mtime
    assert demo.minilm_dir() == built
    assert weights.stat().st_mtime_ns == 10**9
    shutil.rmtree(built)
    assert demo.minilm_dir() == built
    assert weights.stat().st_mtime_ns != 10**9


def test_cache_ignores_debris_of_an_interrupted_build(private_cache):
    # A complete-looking folder left in the staging area by a killed build.
    debris = private_cache / ".all-minilm-l6-v2.tmp-deadbeef"
    shutil.copytree(minilm.source_dir(), debris)
    built = demo.minilm_dir()
    assert built == private_cache / "all-minilm-l6-v2"
    assert not debris.exists()
    assert cache.is_current(built, minilm.build_version())


def test_cache_rebuilds_unmarked_or_damaged_folder(private_cache):
    built = demo.minilm_dir()
    # Killed after the rename but before the marker: the folder is not trusted.
    built.with_name(built.name + ".built.json").unlink()
    assert not cache.is_current(built, minilm.build_version())
    demo.minilm_dir()
    weights = built / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(1000)
    assert demo.minilm_dir() == built
    assert weights.stat().st_size == (minilm.source_dir() / "model.safetensors").stat().st_size


def write_file(dest: Path) -> None:
    (dest / "data.txt").write_text("complete")


def fail_halfway(dest: Path) -> None:
    (dest / "data.txt").write_text("partial")
    raise RuntimeError("interrupted")


def test_failed_build_leaves_nothing_behind(private_cache):
    with pytest.raises(RuntimeError, match="interrupted"):
        cache.cached_dir("toy", "1", fail_halfway)
    assert sorted(p.name for p in private_cache.iterdir()) == [".toy.lock"]
    built = cache.cached_dir("toy", "1", write_file)
    assert (built / "data.txt").read_text() == "complete"


def test_new_build_version_rebuilds(private_cache):
    data = cache.cached_dir("toy", "1", write_file) / "data.txt"
    os.utime(data, ns=(10**9, 10**9))
    cache.cached_dir("toy", "1", write_file)
    assert data.stat().st_mtime_ns == 10**9
    cache.cached_dir("toy", "2", write_file)
    assert data.stat().st_mtime_ns != 10**9


def test_missing_source_package_names_the_install_command():
    hint = r"'no-such-demo-package'.*pip install 'unweight\[demo\]'"
    with pytest.raises(demo.DemoDependencyError, match=hint):
        cache.package_dir("no_such_demo_package", "no-such-demo-package")
    with pytest.raises(demo.DemoDependencyError, match=hint):
        cache.package_version("no_such_demo_package", "no-such-demo-package")
    with pytest.raises(demo.DemoDependencyError, match=hint):
        cache.require_module("no_such_demo_package", "no-such-demo-package")


def test_module_entry_point_prints_the_paths(smollm2_dir, minilm_dir, minilm_bf16_dir):
    result = subprocess.run([sys.executable, "-m", "unweight.demo"], capture_output=True,
                            text=True, check=True, timeout=120)
    printed = [line.split("\t")[1] for line in result.stdout.splitlines()]
    assert printed == [str(smollm2_dir), str(minilm_dir), str(minilm_bf16_dir)]
