"""Helpers for frontend, server and CLI tests: small model directories (a byte-level
BPE tokenizer trained here, a ChatML template, a tiny random Llama) and real servers
on free loopback ports, in a thread or in a subprocess."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Once upon a time there was a small model that liked to count: one two three four five.",
    "Hello world! How are you today? I am fine, thank you.",
] * 20 + [
    # Seen once: left as single bytes by the merges, so they split across tokens.
    "naïve café résumé über straße",
    "日本語のテキストと中文文本 世界 你好",
    "emoji 😀 🚀 👍🏽 ❤️ 🇫🇷",
]


def build_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE (GPT-2 style): characters outside the merges split into bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def write_tokenizer_dir(path: Path, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """tokenizer.json + tokenizer_config.json (with a chat template) in `path`."""
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def write_tiny_llama(path: Path, vocab_size: int, max_position_embeddings: int = 4096) -> Path:
    """A randomly initialised 2-layer Llama checkpoint saved by transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=None,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    return path


def write_tiny_model_dir(path: Path) -> Path:
    """A servable model directory: tiny random Llama + the test tokenizer."""
    write_tokenizer_dir(path)
    vocab_size = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    return write_tiny_llama(path, vocab_size)


@functools.cache
def tiny_model_dir() -> Path:
    """One tiny model directory per test process, removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="infire-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write_tiny_model_dir(root / "tiny")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base_url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} not healthy after {timeout_s} s")


class ThreadServer:
    """A real uvicorn server on a free loopback port, in a thread of the test process."""

    def __init__(self, model_dir: Path, served_model_name: str = "tiny", **engine_options):
        from infire.engine import EngineConfig
        from infire.server import ServerConfig, build_server
        from infire.server.run import uvicorn_config

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = ServerConfig(model=str(model_dir), port=self.port, served_model_name=served_model_name, log_level="warning")
        engine_config = EngineConfig(model=str(model_dir), device="cpu", **engine_options)
        self.frontend, self.app = build_server(config, engine_config)
        self.server = uvicorn.Server(uvicorn_config(self.app, config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_healthy(self.base_url, timeout_s=30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.frontend.shutdown()


class ServerProcess:
    """`infire serve` in a subprocess, as a user runs it."""

    def __init__(self, model_dir: Path, *args: str):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "unweight_cli.infire_app", "serve", "--model", str(model_dir),
                        "--port", str(self.port), "--device", "cpu", *args]

    def __enter__(self) -> "ServerProcess":
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_healthy(self.base_url, timeout_s=180, process=self.process)
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
