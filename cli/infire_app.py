"""The `infire` command: serve a model over an OpenAI-compatible API, generate text
from the terminal, and benchmark any OpenAI-compatible server."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from infire.errors import ConfigError, InfireError, InvalidRequestError, ModelLoadError
from unweight_cli.common import err_console, handle_errors, out_console

DEBUG_ENV = "INFIRE_DEBUG"
# 1: failed at run time; 2: a bad argument or value; 3: the model cannot be loaded.
EXIT_CODES = {InfireError: 1, OSError: 1, ConfigError: 2, InvalidRequestError: 2, ModelLoadError: 3}
catch_errors = handle_errors(DEBUG_ENV, EXIT_CODES)

app = typer.Typer(
    name="infire",
    help="Serve, run and benchmark LLMs from plain or unweight-packed checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

# Options shared by several commands.
ModelDir = Annotated[str, typer.Option("--model", "-m", help="Checkpoint directory (Hugging Face or unweight-packed).")]
Weights = Annotated[str, typer.Option(help="[b]dense[/b]: decode weights once at load; [b]compressed[/b]: keep them packed on the device.")]
Device = Annotated[str, typer.Option(help="[b]auto[/b] (CUDA if present), [b]cpu[/b] or [b]cuda[/b].")]
Dtype = Annotated[str, typer.Option(help="auto, checkpoint, float32, bfloat16 or float16.")]
MaxModelLen = Annotated[Optional[int], typer.Option(help="Context length to serve (default: the model's, capped by the KV cache).")]
NumKvBlocks = Annotated[Optional[int], typer.Option(help="KV cache size in blocks (default: sized from memory).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed, for reproducible sampling.")]


def engine_config(model: str, weights: str, device: str, dtype: str, max_model_len: int | None, num_kv_blocks: int | None):
    from infire.engine import EngineConfig

    if not Path(model).is_dir():
        raise ModelLoadError(f"--model {model}: no such directory; pass a checkpoint folder with config.json")
    return EngineConfig(
        model=model, weights=weights, device=device, dtype=dtype, max_model_len=max_model_len, num_kv_blocks=num_kv_blocks
    )


@app.command()
@catch_errors
def serve(
    model: ModelDir,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    weights: Weights = "dense",
    device: Device = "auto",
    dtype: Dtype = "auto",
    served_model_name: Annotated[Optional[str], typer.Option(help="Name clients use in \"model\" (default: the --model path).")] = None,
    max_model_len: MaxModelLen = None,
    num_kv_blocks: NumKvBlocks = None,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug.")] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API until Ctrl+C or SIGTERM.

    Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models,
    GET /health, GET /metrics (Prometheus).

    [b]Examples[/b]

      $ infire serve --model ./SmolLM2-135M-Instruct
      $ infire serve --model ./llama-packed --weights compressed --port 9000 --served-model-name llama
    """
    from infire.server import ServerConfig
    from infire.server import serve as run_server

    config = ServerConfig(model=model, host=host, port=port, served_model_name=served_model_name, log_level=log_level)
    _configure_logging(logging.INFO if log_level in ("info", "debug") else logging.WARNING)
    run_server(config, engine_config(model, weights, device, dtype, max_model_len, num_kv_blocks))


@app.command()
@catch_errors
def generate(
    model: ModelDir,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt text; '-' reads it from stdin.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 is greedy; higher is more random.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: keep the smallest set of tokens with this much probability.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens; 0 keeps all.")] = 0,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt as a user message in the model's chat template.")] = False,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop when this text appears (repeatable); it is not printed.")] = None,
    weights: Weights = "dense",
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = None,
    max_model_len: MaxModelLen = None,
) -> None:
    """Generate a completion and print it to stdout as it is produced.

    [b]Examples[/b]

      $ infire generate --model ./SmolLM2-135M-Instruct --chat --prompt "What is the capital of France?"
      $ echo "Once upon a time" | infire generate -m ./model -p - --max-tokens 64 --temperature 0.8 --seed 1
    """
    from infire.engine import LLMEngine, SamplingParams
    from infire.frontend import Frontend
    from infire.tokenizer import Tokenizer

    _configure_logging(logging.WARNING)
    text = sys.stdin.read() if prompt == "-" else prompt
    config = engine_config(model, weights, device, dtype, max_model_len, None)
    tokenizer = Tokenizer.from_dir(model)
    frontend = Frontend(LLMEngine(config), tokenizer).start()
    try:
        ids = frontend.encode_chat([{"role": "user", "content": text}]) if chat else frontend.encode_prompt(text)
        stop_ids = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop_token_ids=stop_ids)
        _print_stream(frontend.generate(ids, params, stop or ()))
    finally:
        frontend.shutdown()


def _print_stream(chunks) -> None:
    start, last = time.perf_counter(), None
    for chunk in chunks:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        last = chunk
    sys.stdout.write("\n")
    seconds = time.perf_counter() - start
    if last is not None:
        rate = last.num_output_tokens / seconds if seconds > 0 else 0.0
        err_console.print(
            f"[dim]{last.num_prompt_tokens} prompt + {last.num_output_tokens} generated tokens in {seconds:.2f} s "
            f"({rate:.1f} tokens/s), finish reason: {last.finish_reason}[/dim]"
        )


@app.command()
@catch_errors
def bench(
    url: Annotated[str, typer.Option(help="Base URL of an OpenAI-compatible server (with or without /v1).")] = "http://127.0.0.1:8000",
    model: Annotated[Optional[str], typer.Option(help="Model name to request (default: the first of GET /v1/models).")] = None,
    num_requests: Annotated[int, typer.Option(help="Requests to send.")] = 100,
    request_rate: Annotated[float, typer.Option(help="Mean requests per second, Poisson arrivals; inf sends all at once.")] = math.inf,
    input_len: Annotated[int, typer.Option(help="Prompt length in words (about one token each).")] = 128,
    output_len: Annotated[int, typer.Option(help="max_tokens of every request.")] = 128,
    max_concurrency: Annotated[Optional[int], typer.Option(help="Most requests in flight at once (default: no limit).")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Send ignore_eos=true (vLLM/infire extension) so outputs reach --output-len.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file ('-': stdout, the table goes to stderr).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the prompts and arrival times.")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds before one request is given up.")] = 600.0,
) -> None:
    """Benchmark a running server with streaming completions and report latency and throughput.

    Measures time to first token (TTFT), time per output token (TPOT), inter-token
    latency (ITL) and end-to-end latency (mean, p50, p90, p99), and request and token
    throughput. Token counts come from the server's usage (stream_options.include_usage).

    [b]Examples[/b]

      $ infire bench --url http://127.0.0.1:8000 --num-requests 200 --request-rate 8
      $ infire bench --url http://gpu-box:8000/v1 --model llama --input-len 512 --output-len 64 --json results.json
    """
    from infire.bench import BenchConfig, run_bench

    config = BenchConfig(
        url=url, model=model, num_requests=num_requests, request_rate=request_rate, input_len=input_len,
        output_len=output_len, max_concurrency=max_concurrency, ignore_eos=ignore_eos, seed=seed, timeout_s=timeout,
    )
    rate = "all at once" if math.isinf(request_rate) else f"{request_rate:g} req/s"
    err_console.print(f"Sending {num_requests} requests ({rate}) to [b]{config.base_url}[/b] ...")
    report = run_bench(config)
    # With --json -, stdout carries only the JSON, so it can be piped.
    table_console = err_console if str(json_path) == "-" else out_console
    table_console.print(_report_table(report))
    if json_path is not None:
        _write_json(report.as_dict(), json_path)


def _report_table(report) -> Table:
    table = Table(title=f"infire bench: {report.model} at {report.url}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("Successful requests", f"{report.completed} / {report.num_requests}"),
        ("Duration (s)", f"{report.duration_s:.2f}"),
        ("Input / output tokens", f"{report.total_input_tokens} / {report.total_output_tokens}"),
        ("Request throughput (req/s)", f"{report.request_throughput:.2f}"),
        ("Input token throughput (tok/s)", f"{report.input_throughput:.1f}"),
        ("Output token throughput (tok/s)", f"{report.output_throughput:.1f}"),
        ("Total token throughput (tok/s)", f"{report.total_token_throughput:.1f}"),
    ]
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats = getattr(report, name)
        rows.append((f"{name.upper()} mean / p50 / p90 / p99 (ms)", f"{stats.mean_ms:.1f} / {stats.p50_ms:.1f} / {stats.p90_ms:.1f} / {stats.p99_ms:.1f}"))
    for row in rows:
        table.add_row(*row)
    for error in report.errors:
        table.add_row("[red]Error[/red]", error)
    return table


def _write_json(data: dict, path: Path) -> None:
    text = json.dumps(data, indent=2)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    path.write_text(text + "\n")
    err_console.print(f"Wrote {path}")


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
