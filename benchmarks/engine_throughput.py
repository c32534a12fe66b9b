"""Engine throughput: decode tokens/s at batch 1 and 64 and time to first token (TTFT) of a
4k-token prompt, for infire and for transformers' `generate`, measured in the same run on a
Llama-3.1-8B-shaped model with random bf16 weights made on the GPU. Batch-1 decode is set
against the bandwidth limit (weight bytes / device-to-device copy bandwidth, measured here).

    python benchmarks/engine_throughput.py --json results/engine_8b.json
    python benchmarks/engine_throughput.py --weights compressed --model PACKED_DIR --json results/engine_8b_c.json
    python benchmarks/engine_throughput.py --device cpu --model ~/.cache/unweight/demo/smollm2-135m-instruct
    python benchmarks/engine_throughput.py --tiny --device cpu --json /tmp/engine_tiny.json   # seconds, numbers mean nothing
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from unweight.format.manifest import MANIFEST_NAME

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Section, command_line, markdown_table, parser, publish  # noqa: E402

TITLE = "Engine: decode throughput and time to first token"

LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
}
TINY = {**LLAMA31_8B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 1024,
        "rope_scaling": {**LLAMA31_8B["rope_scaling"], "original_max_position_embeddings": 64},
        "eos_token_id": 2, "bos_token_id": 1}


@dataclass(frozen=True)
class Plan:
    """What to run, after defaults for the device and --tiny are applied."""

    device: str
    batches: tuple[int, ...]
    prompt_len: int  # prompt of each decode request
    decode_steps: int  # timed decode steps per batch size
    ttft_len: int
    repeats: int


@dataclass
class Figures:
    """One engine's numbers; decode figures keyed by batch size."""

    engine: str
    decode_tokens_per_s: dict[int, float]
    ttft_ms: float
    weights_bytes: int | None = None


def build_parser():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tiny", dest="quick", action="store_true",
                   help="a 2-layer toy model and small sizes, to check that the script runs")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint directory (plain or packed); default: random weights of the 8B shape")
    p.add_argument("--weights", choices=("dense", "compressed"), default="dense")
    p.add_argument("--batches", default=None, help="decode batch sizes, e.g. 1,64")
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--decode-steps", type=int, default=None)
    p.add_argument("--ttft-len", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                   help="share of GPU memory for infire (transformers runs after it, in the same process)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    return p


def make_plan(args) -> Plan:
    if args.quick:
        defaults = ("1,4", 16, 4, 64)
    elif args.device == "cpu":
        defaults = ("1,8", 64, 16, 512)
    else:
        defaults = ("1,64", 128, 64, 4096)
    batches = tuple(int(b) for b in (args.batches or defaults[0]).split(","))
    return Plan(args.device, batches, args.prompt_len or defaults[1], args.decode_steps or defaults[2],
                args.ttft_len or defaults[3], args.repeats)


# ---------------------------------------------------------------------------- model source


def model_dir(args, scratch: Path) -> tuple[Path, str]:
    """(checkpoint directory, load_format): the given checkpoint, or a config-only directory."""
    if args.model is not None:
        return args.model.expanduser(), "auto"
    if args.weights == "compressed":
        sys.exit("--weights compressed needs --model PACKED_DIR (a checkpoint packed by `unweight compress`)")
    (scratch / "config.json").write_text(json.dumps(TINY if args.quick else LLAMA31_8B, indent=1))
    return scratch, "dummy"


def num_weights(config: dict) -> int:
    h, i, layers, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    attn = h * head_dim * (2 * config["num_attention_heads"] + 2 * config["num_key_value_heads"])
    per_layer = attn + 3 * h * i + 2 * h
    heads = 1 if config.get("tie_word_embeddings") else 2
    return layers * per_layer + heads * vocab * h + h


# ---------------------------------------------------------------------------- measurements


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, repeats: int = 10) -> float:
    """Bytes read + written per second by a device-to-device copy of random data."""
    numel = (1 << 29) if device == "cuda" else (1 << 26)
    src = torch.randn(numel, device=device, dtype=torch.float32).to(torch.bfloat16)
    dst = torch.empty_like(src)
    seconds = []
    for i in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 2:
            seconds.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(seconds)


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (count, length), generator=gen).tolist()


def infire_decode_rate(engine, plan: Plan, batch: int, vocab: int) -> float:
    """Tokens/s of decode steps with `batch` running sequences (median step time)."""
    from infire.engine import SamplingParams

    params = SamplingParams(max_tokens=plan.decode_steps + 3, temperature=0, ignore_eos=True)
    ids = [f"decode-{batch}-{i}" for i in range(batch)]
    for request_id, prompt in zip(ids, random_prompts(batch, plan.prompt_len, vocab, seed=batch)):
        engine.add_request(request_id, prompt, params)
    started: set[str] = set()
    while len(started) < batch:  # prefill, possibly over several steps
        started.update(out.request_id for out in engine.step())
    seconds = []
    for _ in range(plan.decode_steps):
        start = time.perf_counter()
        engine.step()  # returns host token ids, so the step has finished on the device
        seconds.append(time.perf_counter() - start)
    for request_id in ids:
        engine.abort_request(request_id)
    engine.step()
    return batch / statistics.median(seconds)


def infire_ttft(engine, plan: Plan, vocab: int) -> float:
    """Median seconds from add_request to the first token of a ttft_len-token prompt."""
    from infire.engine import SamplingParams

    seconds = []
    for i, prompt in enumerate(random_prompts(plan.repeats + 1, plan.ttft_len, vocab, seed=7)):
        start = time.perf_counter()
        engine.add_request(f"ttft-{i}", prompt, SamplingParams(max_tokens=1, temperature=0))
        while engine.has_unfinished_requests():
            engine.step()
        if i > 0:  # the first run compiles kernels
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def run_infire(args, plan: Plan, path: Path, load_format: str) -> tuple[Figures, dict]:
    from infire.engine import EngineConfig, LLMEngine

    config = EngineConfig(
        model=str(path), weights=args.weights, device=plan.device, load_format=load_format,
        max_num_seqs=max(plan.batches), max_num_batched_tokens=max(8192, plan.ttft_len),
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    engine = LLMEngine(config)
    vocab = engine.model_config.vocab_size
    infire_decode_rate(engine, plan, 1, vocab)  # warm-up: kernels compile on first use
    figures = Figures(f"infire ({args.weights})", {b: infire_decode_rate(engine, plan, b, vocab) for b in plan.batches},
                      1e3 * infire_ttft(engine, plan, vocab), engine.weights_memory_bytes())
    extra = {"num_kv_blocks": engine.stats().num_kv_blocks_total, "dtype": str(engine.runner.dtype)}
    del engine
    gc.collect()
    if plan.device == "cuda":
        torch.cuda.empty_cache()
    return figures, extra


def hf_model(path: Path, load_format: str, packed: bool, plan: Plan, dtype: torch.dtype):
    import transformers

    if load_format == "auto" and not packed:
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(plan.device).eval()
    config = transformers.AutoConfig.from_pretrained(path)  # packed or config-only: random weights
    with torch.device(plan.device):
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def hf_generate_seconds(model, prompts: list[list[int]], new_tokens: int, plan: Plan) -> float:
    ids = torch.tensor(prompts, device=plan.device)
    seconds = []
    for i in range(plan.repeats + 1):
        sync(plan.device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        sync(plan.device)
        if i > 0:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def run_hf(path: Path, load_format: str, packed: bool, plan: Plan, dtype: torch.dtype, vocab: int) -> Figures:
    """transformers `generate`: decode rate from the time difference of N and 1 new tokens."""
    model = hf_model(path, load_format, packed, plan, dtype)
    rates = {}
    for batch in plan.batches:
        prompts = random_prompts(batch, plan.prompt_len, vocab, seed=batch)
        one = hf_generate_seconds(model, prompts, 1, plan)
        many = hf_generate_seconds(model, prompts, plan.decode_steps + 1, plan)
        rates[batch] = batch * plan.decode_steps / max(many - one, 1e-9)
    ttft = hf_generate_seconds(model, random_prompts(1, plan.ttft_len, vocab, seed=7), 1, plan)
    del model
    gc.collect()
    return Figures("transformers generate", rates, 1e3 * ttft)


# ---------------------------------------------------------------------------- report


def report(args, plan: Plan, results: list[Figures], bandwidth: float, weight_bytes: int, extra: dict) -> Section:
    limit = bandwidth / weight_bytes  # tokens/s if every weight byte were read once per token
    headers = ["engine", *[f"decode tok/s, batch {b}" for b in plan.batches], f"TTFT {plan.ttft_len} tok (ms)",
               "batch 1 vs bandwidth limit"]
    rows = []
    for fig in results:
        rate1 = fig.decode_tokens_per_s.get(1)
        share = f"{rate1 / limit:.0%}" if rate1 else "-"
        rows.append([fig.engine, *[f"{fig.decode_tokens_per_s[b]:,.1f}" for b in plan.batches],
                     f"{fig.ttft_ms:,.1f}", share])
    notes = [
        f"Bandwidth limit: {weight_bytes / 1e9:.2f} GB of {extra['dtype']} weights per token at a device copy "
        f"bandwidth of {bandwidth / 1e9:,.0f} GB/s (read + written) = {limit:,.1f} tokens/s.",
        f"infire weights resident: {results[0].weights_bytes / 1e9:.2f} GB; KV cache {extra['num_kv_blocks']} "
        f"blocks; decode requests have {plan.prompt_len}-token prompts; medians over {plan.decode_steps} decode "
        f"steps (infire) or {plan.repeats} generate calls (transformers).",
    ]
    model = str(args.model) if args.model else ("toy config" if args.quick else "Llama-3.1-8B shape, random weights")
    return Section(f"{TITLE} ({plan.device}, {model})", command_line(), markdown_table(headers, rows),
                   "transformers `generate` and the device copy bandwidth, measured in the same run", notes)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    with tempfile.TemporaryDirectory() as scratch:
        path, load_format = model_dir(args, Path(scratch))
        raw_config = json.loads((path / "config.json").read_text())
        packed = (path / MANIFEST_NAME).is_file()
        infire, extra = run_infire(args, plan, path, load_format)
        results = [infire]
        dtype = getattr(torch, extra["dtype"].removeprefix("torch."))
        if not args.no_hf:
            results.append(run_hf(path, load_format, packed, plan, dtype, raw_config["vocab_size"]))
    bandwidth = copy_bandwidth(plan.device)
    weight_bytes = num_weights(raw_config) * dtype.itemsize
    section = report(args, plan, results, bandwidth, weight_bytes, extra)
    publish(args, section, {"plan": asdict(plan), "copy_bandwidth_bytes_per_s": bandwidth,
                            "weight_bytes": weight_bytes, **extra, "engines": [asdict(r) for r in results]})


if __name__ == "__main__":
    main()
