"""One kernel variant, timed on one Llama-3.1-8B layer (one batched launch) and on the 67M-weight tensor:
for A/B runs, one process a variant, alternated on one machine (kernel constants are read when the
kernel first compiles, so each variant needs a process of its own).

    for v in "" "--table 0" "" "--table 0"; do python benchmarks/gpu_decode_ab.py $v; done
    python benchmarks/gpu_decode_ab.py --steps 256            # every matrix packed at 256
    python benchmarks/gpu_decode_ab.py --prefetch-words 64 --unroll 2
    python benchmarks/gpu_decode_ab.py --packed MINILM_BF16.uw   # also a packed checkpoint's plan (MiniLM)
    TRITON_INTERPRET=1 python benchmarks/gpu_decode_ab.py --quick --device cpu   # tiny shapes: checks it runs

Prints one line a repetition: the layer's and the tensor's time and GB/s of bf16 output (median of
40 launches, L2 flushed before each, both checked bit for bit first).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_decode import Timer  # noqa: E402

from unweight.codec.tensor import DEFAULT_STEPS, encode_float  # noqa: E402
from unweight.kernels import decode as kd  # noqa: E402
from unweight.packed import PackedTensor  # noqa: E402
from unweight.reader import PackedReader  # noqa: E402

LAYER = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]


def packed(shape: tuple, seed: int, steps: int, device: str, group: int = 0) -> tuple[torch.Tensor, PackedTensor]:
    """Random normal bf16 weights (std 0.02) and their packed form on `device` (steps / group 0: what
    compress picks)."""
    g = torch.Generator(device=device).manual_seed(seed)
    weights = (torch.randn(shape, generator=g, device=device) * 0.02).to(torch.bfloat16)
    host = weights.cpu().view(torch.uint8).reshape(-1).numpy()
    steps = steps or DEFAULT_STEPS
    enc = encode_float("BF16", weights.numel(), lambda a, b: host[a:b], steps=steps, group=group)
    streams = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.streams.items()}
    return weights, PackedTensor("w", "BF16", tuple(shape), "lanes", streams, steps, enc.code_lengths,
                                 group=enc.group).to(device)


def packed_checkpoint_plan(path: Path, device: str, overrides: dict) -> tuple[kd.DecodePlan, int]:
    """The plan of every lanes-coded tensor of a packed checkpoint (checked bit for bit) and its output bytes."""
    reader = PackedReader(path)
    pairs = []
    for name in reader.names_by_shard():
        p = reader.get_packed(name)
        if p.encoding == "lanes":
            p = p.to(device)
            pairs.append((p, torch.empty(p.numel, dtype=p.torch_dtype, device=device)))
    items = [kd.DecodeItem.from_packed(p, out) for p, out in pairs]
    plan = kd.DecodePlan(items, kd.DecodeConfig(**overrides) if overrides else None)
    plan.launch()

    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.cpu().reshape(-1).view(torch.int16 if t.element_size() == 2 else torch.int32)

    if not all(torch.equal(bits(out), bits(p.decode(backend="cpu"))) for p, out in pairs):
        raise SystemExit(f"{path}: NOT bit-exact")
    return plan, sum(out.numel() * out.element_size() for _, out in pairs)


def median_us(fn, device: str, reps: int = 40) -> float:
    """Median microseconds of fn (gpu_decode.Timer: L2 flushed before each call; the interpreter: wall time)."""
    return Timer(torch.device(device), reps).median_ms(fn) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", type=int, default=None, help="DecodeConfig.table (default: the default config's)")
    p.add_argument("--unroll", type=int, default=None, help="DecodeConfig.unroll")
    p.add_argument("--rows", type=int, default=None, help="DecodeConfig.rows (= num_warps)")
    p.add_argument("--window", type=int, choices=(0, 2), default=None, help="DecodeConfig.window")
    p.add_argument("--steps", type=int, default=0, help="steps of every matrix (0: what compress picks)")
    p.add_argument("--prefetch-words", type=int, default=None, help="kernel constant PREFETCH_WORDS")
    p.add_argument("--prefetch-steps", type=int, default=None, help="kernel constant PREFETCH_STEPS")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, or cpu with TRITON_INTERPRET=1 (with --quick: checks the script runs)")
    p.add_argument("--quick", action="store_true", help="shapes / 64 and steps 8")
    p.add_argument("--packed", type=Path, default=None,
                   help="also time the plan of every coded tensor of this packed checkpoint (as the library plans it "
                        "when the kernel options are the defaults)")
    args = p.parse_args()
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("--device cpu needs TRITON_INTERPRET=1 in the environment", file=sys.stderr)
        return 2
    scale = 64 if args.quick else 1
    steps = 8 if args.quick and not args.steps else args.steps
    for name, value in (("PREFETCH_WORDS", args.prefetch_words), ("PREFETCH_STEPS", args.prefetch_steps)):
        if value is not None:
            setattr(kd, name, tl.constexpr(value))
    overrides = {k: v for k, v in (("table", args.table), ("unroll", args.unroll), ("rows", args.rows),
                                   ("num_warps", args.rows), ("window", args.window)) if v is not None}
    config = kd.DecodeConfig(**overrides)
    label = " ".join(sys.argv[1:]) or "default"
    layer = [packed((rows // scale, cols // scale), 10 + k, steps, args.device) for k, (rows, cols) in enumerate(LAYER)]
    outs = [torch.empty_like(w) for w, _ in layer]
    plan = kd.DecodePlan([kd.DecodeItem.from_packed(p, o) for (_, p), o in zip(layer, outs)], config)
    plan.launch()
    main_w, main_p = packed((8192 // scale, 8192 // scale), 0, steps, args.device)
    main_out = torch.empty_like(main_w)
    item = kd.DecodeItem.from_packed(main_p, main_out)
    kd.launch_decode(item, config)
    if args.device != "cpu":
        torch.cuda.synchronize()
    exact = all(torch.equal(o.view(torch.int16), w.view(torch.int16)) for (w, _), o in zip(layer, outs))
    exact &= torch.equal(main_out.view(torch.int16), main_w.view(torch.int16))
    if not exact:
        print(f"{label}: NOT bit-exact")
        return 1
    layer_bytes = 2 * sum(w.numel() for w, _ in layer)
    packed_plan, packed_bytes = (packed_checkpoint_plan(args.packed, args.device, overrides) if args.packed
                                 else (None, 0))
    for _ in range(args.repeats):
        layer_us = median_us(plan.launch, args.device)
        main_us = median_us(lambda: kd.launch_decode(item, config), args.device)
        if packed_plan is not None:
            us = median_us(packed_plan.launch, args.device)
            print(f"{label}: {args.packed.name} {us:.1f} us = {packed_bytes / us / 1e3:,.0f} GB/s", flush=True)
        print(f"{label}: layer {layer_us:.1f} us = {layer_bytes / layer_us / 1e3:,.0f} GB/s; "
              f"{main_w.numel() / 1e6:.0f}M tensor {main_us:.1f} us = {2 * main_w.numel() / main_us / 1e3:,.0f} GB/s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
