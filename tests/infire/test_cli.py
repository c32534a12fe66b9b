"""The `infire` CLI: generate prints the completion, known errors are one line and an exit code."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from infire.engine import EngineConfig, LLMEngine, SamplingParams
from infire.errors import ModelLoadError
from infire.frontend import Frontend
from infire.tokenizer import Tokenizer
from tests.infire.frontend_fixtures import tiny_model_dir
from unweight_cli.infire_app import app

runner = CliRunner()
GENERATE_ARGS = ["--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "1", "--seed", "3", "--device", "cpu"]


def expected_text(model_dir: str) -> str:
    """What the same request gives through the frontend directly."""
    tokenizer = Tokenizer.from_dir(model_dir)
    frontend = Frontend(LLMEngine(EngineConfig(model=model_dir, device="cpu", num_kv_blocks=8)), tokenizer).start()
    try:
        params = SamplingParams(max_tokens=12, temperature=1.0, seed=3, stop_token_ids=(tokenizer.eos_token_id,))
        return "".join(c.text for c in frontend.generate(frontend.encode_prompt("Once upon a time"), params))
    finally:
        frontend.shutdown()


def assert_one_line_error(result, exit_code: int, message: str) -> None:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.stderr
    assert "INFIRE_DEBUG=1" in lines[0] and "Traceback" not in result.output


def test_generate_prints_the_completion() -> None:
    model_dir = str(tiny_model_dir())
    result = runner.invoke(app, ["generate", "--model", model_dir, *GENERATE_ARGS])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected_text(model_dir) + "\n"
    assert "generated tokens" in result.stderr


def test_generate_reads_the_prompt_from_stdin() -> None:
    args = ["generate", "-m", str(tiny_model_dir()), "-p", "-", "--max-tokens", "3", "--device", "cpu"]
    result = runner.invoke(app, args, input="Once upon a time")
    assert result.exit_code == 0 and "prompt + " in result.stderr


def test_generate_chat_with_the_demo_model(smollm2_dir) -> None:
    args = ["generate", "-m", str(smollm2_dir), "--chat", "-p", "What is the capital of France?", "--max-tokens", "16", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout


def test_generate_entry_point_in_a_subprocess() -> None:
    model_dir = str(tiny_model_dir())
    command = [sys.executable, "-m", "unweight_cli.infire_app", "generate", "--model", model_dir, *GENERATE_ARGS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_text(model_dir) + "\n"


@pytest.mark.parametrize(
    "args, exit_code, message",
    [
        (["generate", "-m", "/no/such/model", "-p", "hi"], 3, "no such directory"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--weights", "zip"], 2, "weights='zip' is invalid"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--max-tokens", "0", "--device", "cpu"], 2, "max_tokens=0 is invalid"),
        (["generate", "-m", "{tiny}", "-p", "hi", "--max-tokens", "100000", "--device", "cpu"], 2, "context is"),
        (["serve", "-m", "{tiny}", "--port", "70000"], 2, "port=70000"),
        (["bench", "--url", "localhost:8000"], 2, "url='localhost:8000' is invalid"),
    ],
)
def test_known_errors_are_one_line(args, exit_code, message) -> None:
    args = [a.replace("{tiny}", str(tiny_model_dir())) for a in args]
    assert_one_line_error(runner.invoke(app, args), exit_code, message)


def test_serve_on_a_busy_port_fails_before_loading() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "-m", str(tiny_model_dir()), "--port", str(port)])
    assert_one_line_error(result, 2, f"cannot listen on 127.0.0.1:{port}")


def test_debug_variable_shows_the_exception(monkeypatch) -> None:
    monkeypatch.setenv("INFIRE_DEBUG", "1")
    result = runner.invoke(app, ["generate", "-m", "/no/such/model", "-p", "hi"])
    assert isinstance(result.exception, ModelLoadError)


def test_help_has_examples() -> None:
    for command in ("serve", "generate", "bench"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.stdout and f"infire {command}" in result.stdout
