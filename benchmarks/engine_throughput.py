"""Engine throughput: decode tokens/s at batch 1 and 64 and time to first token (TTFT) of a
4k-token prompt, for infire and for transformers' `generate`, measured in the same run on a
Llama-3.1-8B-shaped model with random bf16 weights made on the GPU. Batch-1 decode is set
against the bandwidth limit (weight bytes / device-to-device copy bandwidth, measured here).
Before timing, a self-check runs the same greedy prompts with CUDA graphs and eagerly and
compares the tokens (and, with compressed weights, against the dense engine).

    python benchmarks/engine_throughput.py --weights both --json results/engine_8b.json   # every figure, ~5 min
    python benchmarks/engine_throughput.py --json results/engine_8b.json                  # dense and transformers
    python benchmarks/engine_throughput.py --weights both --compressed-layers 8 --no-hf   # quicker compressed figures
    python benchmarks/engine_throughput.py --weights compressed --model PACKED_DIR
    python benchmarks/engine_throughput.py --device cpu --model ~/.cache/unweight/demo/smollm2-135m-instruct
    python benchmarks/engine_throughput.py --tiny --device cpu --json /tmp/engine_tiny.json   # seconds, numbers mean nothing

--weights compressed (or both) needs a packed checkpoint: with random weights the script
saves the dense engine's weights with safetensors under --scratch and packs them with
`unweight.compress` (16 GB for the 8B shape; --compressed-layers N packs only N layers and
reports the slowdown per layer). Every phase prints its duration as it goes.
"""

from __future__ import annotations

import gc
import json
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from unweight.format.manifest import MANIFEST_NAME

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Section, command_line, cpu_model, markdown_table, parser, publish, save_checkpoint  # noqa: E402

TITLE = "Engine: decode throughput and time to first token"
STARTED = time.perf_counter()

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
# self-check: (number of prompts, what the case exercises); 5 prompts are padded to the graph of 8
CHECK_CASES = ((1, "batch 1"), (8, "batch 8"), (5, "batch 5 padded to 8"))


@dataclass(frozen=True)
class Plan:
    """What to run, after defaults for the device and --tiny are applied."""

    device: str
    batches: tuple[int, ...]
    prompt_len: int  # prompt of each decode request
    decode_steps: int  # timed decode steps per batch size
    ttft_len: int  # 0: no TTFT
    repeats: int
    check_tokens: int  # greedy tokens per self-check prompt; 0: no self-check
    weights: str  # "dense", "compressed" or "both"
    compressed_layers: int | None  # layers of the packed model (None: all)
    eager_rows: bool  # also time infire with enforce_eager (CUDA only)


@dataclass
class Figures:
    """One engine's numbers; decode figures keyed by batch size."""

    engine: str
    decode_tokens_per_s: dict[int, float]
    ttft_ms: float | None
    weights_bytes: int | None = None
    layers: int | None = None


@dataclass
class Check:
    """One self-check: PASS, FAIL or SKIP, and what was compared."""

    name: str
    status: str
    detail: str = ""


@dataclass
class Run:
    """Everything measured in one invocation."""

    plan: Plan
    checks: list[Check] = field(default_factory=list)
    results: list[Figures] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def figures(self, engine: str) -> Figures | None:
        return next((f for f in self.results if f.engine == engine), None)


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", flush=True)


@contextmanager
def phase(run: Run, name: str) -> Iterator[None]:
    """Time a phase, printing its start and duration."""
    say(f"{name} ...")
    start = time.perf_counter()
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        run.phase_seconds[name] = round(time.perf_counter() - start, 2)
        say(f"{name}: {outcome} in {run.phase_seconds[name]:.1f} s")


def build_parser():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tiny", dest="quick", action="store_true",
                   help="a 2-layer toy model and small sizes, to check that the script runs")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint directory (plain or packed); default: random weights of the 8B shape")
    p.add_argument("--weights", choices=("dense", "compressed", "both"), default="dense",
                   help="compressed or both: dense and compressed figures (dense is the reference for the slowdown)")
    p.add_argument("--compressed-layers", "--layers", type=int, default=None,
                   help="pack only this many decoder layers for the compressed comparison (random weights only)")
    p.add_argument("--scratch", type=Path, default=None,
                   help="directory for the saved and packed checkpoints (default: a temporary directory)")
    p.add_argument("--batches", default=None, help="decode batch sizes, e.g. 1,64")
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--decode-steps", type=int, default=None)
    p.add_argument("--ttft-len", type=int, default=None)
    p.add_argument("--no-ttft", action="store_true", help="skip the time-to-first-token measurements")
    p.add_argument("--check-tokens", type=int, default=None, help="greedy tokens per self-check prompt")
    p.add_argument("--no-check", action="store_true", help="skip the graphs-vs-eager self-check")
    p.add_argument("--no-eager", action="store_true", help="skip timing infire with enforce_eager=True")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                   help="share of GPU memory for infire (transformers runs after it, in the same process)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    return p


def make_plan(args) -> Plan:
    if args.quick:
        defaults = ("1,4", 16, 4, 64, 4)
    elif args.device == "cpu":
        defaults = ("1,8", 64, 16, 512, 8)
    else:
        defaults = ("1,64", 128, 64, 4096, 32)
    batches = tuple(int(b) for b in (args.batches or defaults[0]).split(","))
    ttft_len = 0 if args.no_ttft else args.ttft_len or defaults[3]
    check_tokens = 0 if args.no_check else args.check_tokens or defaults[4]
    return Plan(args.device, batches, args.prompt_len or defaults[1], args.decode_steps or defaults[2], ttft_len,
                args.repeats, check_tokens, args.weights, args.compressed_layers,
                args.device == "cuda" and not args.no_eager)


# ---------------------------------------------------------------------------- model source


def model_dir(args, scratch: Path) -> tuple[Path, str]:
    """(checkpoint directory, load_format): the given checkpoint, or a config-only directory."""
    if args.model is not None:
        return args.model.expanduser(), "auto"
    folder = scratch / "config-only"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY if args.quick else LLAMA31_8B, indent=1))
    return folder, "dummy"


def num_weights(config: dict) -> int:
    h, i, layers, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    attn = h * head_dim * (2 * config["num_attention_heads"] + 2 * config["num_key_value_heads"])
    per_layer = attn + 3 * h * i + 2 * h
    heads = 1 if config.get("tie_word_embeddings") else 2
    return layers * per_layer + heads * vocab * h + h


def checkpoint_tensors(model, num_layers: int) -> dict[str, torch.Tensor]:
    """The model's weights under their Hugging Face names (stacked projections split), on the CPU,
    for the first num_layers decoder layers."""
    from infire.model.llama import STACKED_PARAMS

    shards: dict[str, list[tuple[str, int]]] = {}
    for source, (target, shard) in STACKED_PARAMS.items():
        shards.setdefault(target, []).append((source, shard))
    tensors = {}
    for name, param in model.named_parameters():  # a tied lm_head appears once, as the embedding
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if layer and int(layer.group(1)) >= num_layers:
            continue
        module_name, leaf = name.rsplit(".", 1)
        parent, _, kind = module_name.rpartition(".")
        if kind not in shards:
            tensors[name] = param.detach().cpu()
            continue
        module = model.get_submodule(module_name)
        for source, shard in shards[kind]:
            start, end = module.shard_rows(shard)
            tensors[f"{parent}.{source}.{leaf}"] = param.detach()[start:end].cpu()
    return tensors


def save_random_checkpoint(model, raw_config: dict, num_layers: int, folder: Path) -> Path:
    """A plain checkpoint of the model's first num_layers layers, in the dtype it runs in."""
    save_checkpoint(folder, checkpoint_tensors(model, num_layers))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config = {**raw_config, "num_hidden_layers": num_layers, "torch_dtype": dtype}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


# ---------------------------------------------------------------------------- measurements


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_device_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


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


def kv_bytes_per_token(config: dict, dtype: torch.dtype) -> int:
    """Bytes of K and V cache one token of context holds across all layers."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    return config["num_hidden_layers"] * 2 * kv_heads * head_dim * dtype.itemsize


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


def infire_ttft(engine, plan: Plan, vocab: int) -> float | None:
    """Median seconds from add_request to the first token of a ttft_len-token prompt."""
    from infire.engine import SamplingParams

    if not plan.ttft_len:
        return None
    seconds = []
    for i, prompt in enumerate(random_prompts(plan.repeats + 1, plan.ttft_len, vocab, seed=7)):
        start = time.perf_counter()
        engine.add_request(f"ttft-{i}", prompt, SamplingParams(max_tokens=1, temperature=0))
        while engine.has_unfinished_requests():
            engine.step()
        if i > 0:  # the first run compiles kernels
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def infire_figures(engine, plan: Plan, name: str, vocab: int) -> Figures:
    infire_decode_rate(engine, plan, 1, vocab)  # warm-up: kernels compile on first use
    rates = {}
    for batch in plan.batches:
        rates[batch] = infire_decode_rate(engine, plan, batch, vocab)
        say(f"  {name}: batch {batch}: {rates[batch]:,.1f} tokens/s ({1e3 * batch / rates[batch]:.2f} ms/step)")
    ttft = infire_ttft(engine, plan, vocab)
    if ttft is not None:
        say(f"  {name}: TTFT {plan.ttft_len} tokens: {1e3 * ttft:,.1f} ms")
    return Figures(name, rates, None if ttft is None else 1e3 * ttft, engine.weights_memory_bytes(),
                   engine.model_config.num_hidden_layers)


# ---------------------------------------------------------------------------- self-check


def greedy_tokens(engine, plan: Plan, vocab: int) -> dict[str, list[list[int]]]:
    """Greedy tokens of every CHECK_CASES case, with whatever mode the engine runs in."""
    from infire.engine import SamplingParams

    params = SamplingParams(max_tokens=plan.check_tokens, temperature=0, ignore_eos=True)
    return {name: engine.generate(random_prompts(count, 64, vocab, seed=100 + count), params)
            for count, name in CHECK_CASES}


def compare(name: str, expected: dict, actual: dict) -> list[Check]:
    checks = []
    for case, want in expected.items():
        got = actual[case]
        wrong = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
        detail = ""
        if wrong:
            first = next(t for t, (a, b) in enumerate(zip(want[wrong[0]], got[wrong[0]])) if a != b)
            detail = f"{len(wrong)} of {len(want)} sequences differ; sequence {wrong[0]} from token {first}"
        checks.append(Check(f"{name}, {case}", "FAIL" if wrong else "PASS", detail))
    return checks


def check_graphs(engine, plan: Plan, label: str, vocab: int) -> tuple[list[Check], dict | None]:
    """Tokens with CUDA graphs against the same prompts run eagerly; returns the checks and the tokens."""
    if not plan.check_tokens:
        return [], None
    graph_tokens = greedy_tokens(engine, plan, vocab)
    if engine.runner.graphs is None:
        return [Check(f"{label}: graphs == eager", "SKIP", "no CUDA graphs (CPU or enforce_eager)")], graph_tokens
    with engine.runner.eager_mode():
        eager_tokens = greedy_tokens(engine, plan, vocab)
    return compare(f"{label}: graphs == eager", eager_tokens, graph_tokens), graph_tokens


def report_checks(checks: list[Check]) -> None:
    for check in checks:
        say(f"  {check.status} {check.name}" + (f": {check.detail}" if check.detail else ""))


# ---------------------------------------------------------------------------- phases


def engine_config(args, plan: Plan, path: Path, load_format: str, weights: str, **changes):
    from infire.engine import EngineConfig

    return EngineConfig(
        model=str(path), weights=weights, device=plan.device, load_format=load_format,
        max_num_seqs=max(*plan.batches, *(n for n, _ in CHECK_CASES)),
        max_num_batched_tokens=max(8192, plan.ttft_len), gpu_memory_utilization=args.gpu_memory_utilization,
        **changes,
    )


def start_engine(run: Run, config, label: str):
    """The engine with CUDA graphs; if capture fails, a FAIL check and the eager engine instead."""
    from infire.engine import LLMEngine
    from infire.errors import InfireError

    try:
        engine = LLMEngine(config)
    except InfireError as exc:
        if config.enforce_eager or "CUDA graph" not in str(exc):
            raise
        run.checks.append(Check(f"{label}: CUDA graph capture", "FAIL", str(exc)))
        report_checks(run.checks[-1:])
        free_device_memory(config.torch_device.type)
        engine = LLMEngine(config.replace(enforce_eager=True))
    runner = engine.runner
    say(f"  {label}: ops backend {runner.ops_backend}, attention {runner.attention_backend}, CUDA graphs for "
        f"batch sizes {','.join(map(str, runner.graphs.batch_sizes)) if runner.graphs else 'none'}")
    return engine


def run_dense(args, run: Run, path: Path, load_format: str, scratch: Path) -> tuple[dict | None, Path | None]:
    """infire on dense weights: self-check, timing (graphs, then eager); returns the check tokens
    and, when compressed figures need one, a saved copy of random weights."""
    plan = run.plan
    with phase(run, "infire dense: load and capture"):
        engine = start_engine(run, engine_config(args, plan, path, load_format, "dense"), "infire (dense)")
    vocab = engine.model_config.vocab_size
    run.extra.update(num_kv_blocks=engine.stats().num_kv_blocks_total,
                     dtype=str(engine.runner.dtype).removeprefix("torch."))
    with phase(run, "infire dense: self-check"):
        checks, tokens = check_graphs(engine, plan, "dense", vocab)
        run.checks += checks
        report_checks(checks)
    with phase(run, "infire dense: timing"):
        run.results.append(infire_figures(engine, plan, "infire (dense)", vocab))
    if plan.eager_rows and engine.runner.graphs is not None:
        with phase(run, "infire dense, eager: timing"), engine.runner.eager_mode():
            run.results.append(infire_figures(engine, plan, "infire (dense, eager)", vocab))
        if engine.runner.ops_backend == "triton":
            with phase(run, "infire dense, cuBLAS linear: capture and timing"), cublas_linear(engine):
                run.results.append(infire_figures(engine, plan, "infire (dense, cuBLAS linear)", vocab))
    saved = None
    if plan.weights != "dense" and load_format == "dummy":
        with phase(run, "save random weights (safetensors)"):
            raw = json.loads((path / "config.json").read_text())
            layers = min(plan.compressed_layers or raw["num_hidden_layers"], raw["num_hidden_layers"])
            saved = save_random_checkpoint(engine.runner.model, raw, layers, scratch / "plain")
    del engine
    free_device_memory(plan.device)
    return tokens, saved


@contextmanager
def cublas_linear(engine) -> Iterator[None]:
    """Decode steps with torch's linear (cuBLAS) in place of the small-batch Triton kernel, to set
    the kernel against it: the CUDA graphs are captured again, with and then without it."""
    from infire.model import triton_ops

    def recapture() -> None:
        engine.runner.graphs = None
        free_device_memory("cuda")
        engine.runner.graphs = engine.runner._capture_graphs()

    saved = triton_ops.GEMV_MAX_ROWS
    triton_ops.GEMV_MAX_ROWS = 0
    try:
        recapture()
        yield
    finally:
        triton_ops.GEMV_MAX_ROWS = saved
        recapture()


def run_compressed(args, run: Run, plain: Path, dense_tokens: dict | None, scratch: Path) -> None:
    """infire on compressed weights packed from `plain`, against dense figures of the same layers."""
    import unweight

    plan = run.plan
    packed = plain
    if not (plain / MANIFEST_NAME).is_file():
        with phase(run, "pack the checkpoint (unweight.compress)"):
            report = unweight.compress(plain, scratch / "packed", force=True)
            packed = report.destination
            say(f"  packed {report.original_bytes / 1e9:.2f} GB into {report.packed_bytes / 1e9:.2f} GB")
    layers = json.loads((packed / "config.json").read_text())["num_hidden_layers"]
    dense = run.figures("infire (dense)")
    if dense is None or dense.layers != layers:  # the dense reference at the same number of layers
        with phase(run, f"infire dense reference ({layers} layers): load and timing"):
            engine = start_engine(run, engine_config(args, plan, plain, "auto", "dense"), "dense reference")
            dense_tokens = greedy_tokens(engine, plan, engine.model_config.vocab_size) if plan.check_tokens else None
            run.results.append(infire_figures(engine, plan, f"infire (dense, {layers}-layer model)",
                                              engine.model_config.vocab_size))
            del engine
            free_device_memory(plan.device)
    with phase(run, "infire compressed: load and capture"):
        engine = start_engine(run, engine_config(args, plan, packed, "auto", "compressed"), "infire (compressed)")
    vocab = engine.model_config.vocab_size
    with phase(run, "infire compressed: self-check"):
        checks, tokens = check_graphs(engine, plan, "compressed", vocab)
        dtype = str(engine.runner.dtype).removeprefix("torch.")
        if dense_tokens is not None and tokens is not None and dtype != run.extra["dtype"]:
            detail = f"dense ran in {run.extra['dtype']}, compressed in {dtype}"
            checks.append(Check("compressed == dense", "SKIP", detail))
        elif dense_tokens is not None and tokens is not None:
            checks += compare("compressed == dense", dense_tokens, tokens)
        run.checks += checks
        report_checks(checks)
    with phase(run, "infire compressed: timing"):
        run.results.append(infire_figures(engine, plan, "infire (compressed)", vocab))
    streamer = engine.runner.loaded.streamer
    run.extra["compressed_layer_bytes"] = {"packed_per_layer": streamer.packed_bytes() / layers,
                                           "decode_buffers": streamer.buffer_bytes(),
                                           "num_buffer_sets": len(streamer.buffers)}
    del engine
    free_device_memory(plan.device)


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


def run_hf(run: Run, path: Path, load_format: str, dtype: torch.dtype, vocab: int) -> None:
    """transformers `generate`: decode rate from the time difference of N and 1 new tokens."""
    plan = run.plan
    with phase(run, "transformers: load and timing"):
        model = hf_model(path, load_format, (path / MANIFEST_NAME).is_file(), plan, dtype)
        rates = {}
        for batch in plan.batches:
            prompts = random_prompts(batch, plan.prompt_len, vocab, seed=batch)
            one = hf_generate_seconds(model, prompts, 1, plan)
            many = hf_generate_seconds(model, prompts, plan.decode_steps + 1, plan)
            rates[batch] = batch * plan.decode_steps / max(many - one, 1e-9)
            say(f"  transformers: batch {batch}: {rates[batch]:,.1f} tokens/s")
        ttft = None
        if plan.ttft_len:
            ttft = 1e3 * hf_generate_seconds(model, random_prompts(1, plan.ttft_len, vocab, seed=7), 1, plan)
            say(f"  transformers: TTFT {plan.ttft_len} tokens: {ttft:,.1f} ms")
        del model
        free_device_memory(plan.device)
    run.results.append(Figures("transformers generate", rates, ttft))


def guarded(run: Run, name: str, fn, *args) -> None:
    """Run an optional phase; a failure becomes a FAIL line in the report instead of ending the run."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the figures measured so far are still reported
        traceback.print_exc()
        run.checks.append(Check(f"{name} ran", "FAIL", repr(exc)[:300]))
        report_checks(run.checks[-1:])
        free_device_memory(run.plan.device)


# ---------------------------------------------------------------------------- report


def summary(run: Run, bandwidth: float, weight_bytes: int, num_layers: int, kv_bytes_per_token: int) -> dict:
    """The headline figures (the JSON's "summary"); the bandwidth limit is that of the whole
    model (num_layers), so models with fewer layers are not set against it."""
    limit = bandwidth / weight_bytes
    # a decode step reads every weight once and the KV cache of every sequence (its context
    # grows from the prompt over the timed steps: half of them on average)
    context = run.plan.prompt_len + run.plan.decode_steps / 2
    batch_limits = {b: b * bandwidth / (weight_bytes + b * context * kv_bytes_per_token) for b in run.plan.batches}
    out = {
        "card": torch.cuda.get_device_name(0) if run.plan.device == "cuda" else cpu_model(),
        "copy_bandwidth_gb_per_s": bandwidth / 1e9, "weight_bytes": weight_bytes,
        "bandwidth_limit_tokens_per_s": limit, "bandwidth_limit_ms_per_token": 1e3 / limit,
        "kv_bytes_per_token": kv_bytes_per_token, "bandwidth_limit_tokens_per_s_by_batch": batch_limits,
        "engines": {fig.engine: engine_summary(fig, limit if fig.layers in (None, num_layers) else None)
                    for fig in run.results},
        "checks_passed": all(c.status != "FAIL" for c in run.checks),
    }
    infire, hf = run.figures("infire (dense)"), run.figures("transformers generate")
    if infire and hf:
        out["infire_vs_transformers"] = {f"batch{b}_speedup": infire.decode_tokens_per_s[b] / hf.decode_tokens_per_s[b]
                                         for b in run.plan.batches}
        if infire.ttft_ms and hf.ttft_ms:
            out["infire_vs_transformers"]["ttft_speedup"] = hf.ttft_ms / infire.ttft_ms
    compressed = run.figures("infire (compressed)")
    if compressed:
        dense = next(f for f in run.results if f.engine.startswith("infire (dense") and f.layers == compressed.layers
                     and "eager" not in f.engine)
        out["compressed"] = compressed_summary(compressed, dense)
        if "compressed_layer_bytes" in run.extra:
            out["compressed"]["full_model_derived"] = full_model_compressed_bytes(
                run.extra["compressed_layer_bytes"], weight_bytes, num_layers)
    return out


def full_model_compressed_bytes(layer_bytes: dict, dense_bytes: int, num_layers: int) -> dict:
    """What the whole model would weigh resident in compressed mode, derived (not measured) from the
    packed bytes per layer measured on the smaller model: the dense model less every layer's dense
    linear weights (one buffer set holds exactly one layer's), plus num_layers packed layers and the
    decode buffer sets. Embedding, lm_head and norms stay dense."""
    buffers = layer_bytes["decode_buffers"]
    dense_layer_linear = buffers / layer_bytes["num_buffer_sets"]
    packed = num_layers * layer_bytes["packed_per_layer"]
    total = dense_bytes - num_layers * dense_layer_linear + packed + buffers
    return {"num_layers": num_layers, "packed_layers_bytes": packed, "decode_buffers_bytes": buffers,
            "dense_other_bytes": dense_bytes - num_layers * dense_layer_linear, "total_bytes": total,
            "dense_total_bytes": dense_bytes, "ratio": total / dense_bytes}


def engine_summary(fig: Figures, limit: float | None) -> dict:
    small = min(fig.decode_tokens_per_s)
    out = {f"batch{b}_tokens_per_s": rate for b, rate in fig.decode_tokens_per_s.items()}
    out[f"batch{small}_ms_per_token"] = 1e3 * small / fig.decode_tokens_per_s[small]
    if small == 1 and limit is not None:
        out["batch1_fraction_of_bandwidth_limit"] = fig.decode_tokens_per_s[1] / limit
    return {**out, "ttft_ms": fig.ttft_ms, "weights_bytes": fig.weights_bytes, "layers": fig.layers}


def compressed_summary(compressed: Figures, dense: Figures) -> dict:
    """Resident weight bytes and decode slowdown against dense weights of the same model."""
    out = {"layers": compressed.layers, "weights_bytes_dense": dense.weights_bytes,
           "weights_bytes_compressed": compressed.weights_bytes,
           "weights_ratio": compressed.weights_bytes / dense.weights_bytes}
    for b, rate in compressed.decode_tokens_per_s.items():
        out[f"batch{b}_slowdown"] = dense.decode_tokens_per_s[b] / rate
        extra_seconds = b / rate - b / dense.decode_tokens_per_s[b]  # per decode step
        out[f"batch{b}_extra_ms_per_step_per_layer"] = 1e3 * extra_seconds / compressed.layers
    return out


def report(args, run: Run, figures: dict) -> Section:
    plan, small = run.plan, min(run.plan.batches)
    headers = ["engine", f"ms/token, batch {small}", *[f"decode tok/s, batch {b}" for b in plan.batches],
               f"TTFT {plan.ttft_len} tok (ms)" if plan.ttft_len else "TTFT (ms)", "batch 1 vs bandwidth limit",
               "weights resident"]
    rows = []
    for name, fig in figures["engines"].items():
        share = fig.get("batch1_fraction_of_bandwidth_limit")
        rows.append([name, f"{fig[f'batch{small}_ms_per_token']:.2f}",
                     *[f"{fig[f'batch{b}_tokens_per_s']:,.1f}" for b in plan.batches],
                     "-" if fig["ttft_ms"] is None else f"{fig['ttft_ms']:,.1f}",
                     "-" if share is None or name.startswith("transformers") else f"{share:.0%}",
                     "-" if fig["weights_bytes"] is None else size_text(fig["weights_bytes"])])
    return Section(f"{TITLE} ({plan.device}, {model_label(args)})", command_line(), markdown_table(headers, rows),
                   "transformers `generate` and the device copy bandwidth, measured in the same run",
                   notes(run, figures))


def size_text(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"


def model_label(args) -> str:
    return str(args.model) if args.model else ("toy config" if args.quick else "Llama-3.1-8B shape, random weights")


def notes(run: Run, figures: dict) -> list[str]:
    plan = run.plan
    lines = [
        f"Bandwidth limit: {figures['weight_bytes'] / 1e9:.2f} GB of {run.extra.get('dtype', '?')} weights per token "
        f"at a device copy bandwidth of {figures['copy_bandwidth_gb_per_s']:,.0f} GB/s (read + written) on "
        f"{figures['card']} = {figures['bandwidth_limit_tokens_per_s']:,.1f} tokens/s "
        f"({figures['bandwidth_limit_ms_per_token']:.2f} ms/token).",
        f"KV cache {run.extra.get('num_kv_blocks', '?')} blocks; decode requests have {plan.prompt_len}-token "
        f"prompts; medians over {plan.decode_steps} decode steps (infire) or {plan.repeats} generate calls "
        f"(transformers). infire replays CUDA graphs for decode steps unless the row says eager.",
    ]
    if "infire_vs_transformers" in figures:
        lines.append("infire vs transformers: " + ", ".join(
            f"{key.replace('_', ' ')} {value:.1f}x" for key, value in figures["infire_vs_transformers"].items()))
    limits, engines = figures["bandwidth_limit_tokens_per_s_by_batch"], figures["engines"]
    hf, dense = engines.get("transformers generate"), engines.get("infire (dense)")
    if hf and dense and dense["layers"] in (None, run.extra.get("num_layers")):
        lines.append("Bandwidth limit by batch (weights + the KV cache of every sequence, "
                     f"{figures['kv_bytes_per_token'] / 1e3:,.0f} kB a token of context, read once a step): " + "; ".join(
                         f"batch {b}: {limit:,.0f} tokens/s, infire at {dense[f'batch{b}_tokens_per_s'] / limit:.0%} "
                         f"of it, transformers x 5 = {5 * hf[f'batch{b}_tokens_per_s'] / limit:.0%} of it"
                         for b, limit in limits.items()) + ".")
    if "compressed" in figures:
        c = figures["compressed"]
        lines.append(
            f"Compressed weights ({c['layers']} layers): {size_text(c['weights_bytes_compressed'])} resident vs "
            f"{size_text(c['weights_bytes_dense'])} dense ({c['weights_ratio']:.1%}); decode slowdown vs dense "
            + ", ".join(f"batch {b} {c[f'batch{b}_slowdown']:.2f}x "
                        f"(+{c[f'batch{b}_extra_ms_per_step_per_layer']:.3f} ms per step per layer)"
                        for b in plan.batches) + ".")
        full = c.get("full_model_derived")
        if full:
            lines.append(
                f"Full {full['num_layers']}-layer model in compressed mode (derived from the measured packed bytes per "
                f"layer, not measured): {size_text(full['total_bytes'])} vs {size_text(full['dense_total_bytes'])} "
                f"dense ({full['ratio']:.1%}) = {size_text(full['dense_other_bytes'])} dense embedding, lm_head and "
                f"norms + {size_text(full['packed_layers_bytes'])} packed layers + "
                f"{size_text(full['decode_buffers_bytes'])} decode buffers (two layer sets).")
    failed = [c for c in run.checks if c.status == "FAIL"]
    verdict = "FAILED: " + "; ".join(f"{c.name} ({c.detail})" for c in failed) if failed else "all passed"
    counts = {s: sum(c.status == s for c in run.checks) for s in ("PASS", "FAIL", "SKIP")}
    lines.append(f"Self-check ({counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped): {verdict}.")
    return lines


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    run = Run(plan)
    say(f"plan: {plan}")
    with phase(run, "copy bandwidth"):
        bandwidth = copy_bandwidth(plan.device)
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        path, load_format = model_dir(args, Path(scratch))
        raw_config = json.loads((path / "config.json").read_text())
        dense_tokens, saved = run_dense(args, run, path, load_format, Path(scratch))
        dtype = getattr(torch, run.extra["dtype"])
        if not args.no_hf:
            guarded(run, "transformers", run_hf, run, path, load_format, dtype, raw_config["vocab_size"])
        if plan.weights != "dense":
            guarded(run, "compressed", run_compressed, args, run, saved or path, dense_tokens, Path(scratch))
    weight_bytes = num_weights(raw_config) * dtype.itemsize
    run.extra["num_layers"] = raw_config["num_hidden_layers"]
    figures = summary(run, bandwidth, weight_bytes, raw_config["num_hidden_layers"], kv_bytes_per_token(raw_config, dtype))
    section = report(args, run, figures)
    say("done")
    publish(args, section, {
        "summary": figures, "plan": asdict(plan), "copy_bandwidth_bytes_per_s": bandwidth, "weight_bytes": weight_bytes,
        **run.extra, "engines": [asdict(r) for r in run.results], "checks": [asdict(c) for c in run.checks],
        "phase_seconds": run.phase_seconds,
    })


if __name__ == "__main__":
    main()
