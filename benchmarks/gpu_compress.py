"""Compression on the GPU: the torch lane coder (codec/lanes_torch.py) against the CPU coder, and
`unweight.compress(device="cuda")` against the default on the same checkpoint, in one run.

    python benchmarks/gpu_compress.py --json results/gpu_compress.json     # on the GPU machine (~2 min)
    python benchmarks/gpu_compress.py --quick                               # tiny inputs, no GPU needed

What it measures:
  1. coding one tensor (the 67M-weight bf16 tensor of gpu_decode.py, steps 256, runs of 2): the CPU
     coder (`lanes.encode`, one thread, as each of compress's worker threads runs it) and the torch
     coder on the device, with its words and index compared bit for bit;
  2. `unweight.compress` of an N-layer Llama-3.1-8B-shaped checkpoint (random bf16, two shards), on
     the CPU (every core) and with device="cuda", checking the two packed directories are identical;
     the source files are read once before, so both runs read them from the page cache.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import unweight  # noqa: E402
from common import Section, command_line, markdown_table, parser, publish  # noqa: E402
from unweight.codec import floats, lanes, lanes_torch  # noqa: E402
from unweight.codec.tensor import DEFAULT_STEPS, Code, choose_group  # noqa: E402

TITLE = "GPU compress: the torch lane coder and `unweight compress --device cuda`"
LAYER = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (1024, 4096), "self_attn.v_proj": (1024, 4096),
         "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (14336, 4096), "mlp.up_proj": (14336, 4096),
         "mlp.down_proj": (4096, 14336)}


def timed(fn, device: torch.device, reps: int) -> float:
    """Median seconds of fn() (synchronized on CUDA)."""
    times = []
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def code_one_tensor(device: torch.device, shape: tuple, reps: int) -> dict:
    weights = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    bits = weights.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    steps = DEFAULT_STEPS
    group = choose_group("BF16", steps)
    layout = floats.LAYOUTS["BF16"]
    code = Code(floats.symbol_histogram(layout, bits.view(np.uint8)))
    codes, lengths = code.codes, code.lengths
    # each coder from the weights' bits: the pair symbols (floats.py) are part of its work
    def cpu_code():
        return lanes.encode(floats.pair_symbols(layout, bits.view(np.uint8)), codes, lengths, steps, group=group)

    cpu_s = timed(cpu_code, torch.device("cpu"), max(1, reps // 2))
    words, index = cpu_code()
    on_device = weights.reshape(-1).view(torch.int16).to(device)
    codes_t, lengths_t, _ = code.on(device)

    def device_code():
        return lanes_torch.encode(lanes_torch.pair_symbols(on_device, layout.symbol_shift), codes_t, lengths_t, steps,
                                  group)

    dev_s = timed(device_code, device, reps)
    t_words, t_index = device_code()
    exact = bool(np.array_equal(t_words.cpu().numpy().view(np.uint16), words)
                 and np.array_equal(t_index.cpu().numpy(), index))
    nbytes = bits.size * 2
    return {"shape": list(shape), "steps": steps, "group": group, "bytes": nbytes, "cpu_s": cpu_s,
            "device_s": dev_s, "cpu_mbs": nbytes / cpu_s / 1e6, "device_mbs": nbytes / dev_s / 1e6,
            "bit_exact": exact}


def layered_checkpoint(folder: Path, layers: int, scale: int) -> int:
    """An N-layer Llama-3.1-8B-shaped checkpoint in two safetensors shards; its weight bytes."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    shards, total = [{}, {}], 0
    for i in range(layers):
        for name, (rows, cols) in LAYER.items():
            w = (torch.randn(rows // scale, cols // scale, generator=g) * 0.02).to(torch.bfloat16)
            shards[i * 2 // layers][f"model.layers.{i}.{name}.weight"] = w
            total += w.numel() * 2
        shards[i * 2 // layers][f"model.layers.{i}.input_layernorm.weight"] = torch.ones(4096 // scale,
                                                                                         dtype=torch.bfloat16)
    for k, shard in enumerate(shards):
        save_file(shard, str(folder / f"model-{k + 1:05d}-of-00002.safetensors"))
    return total


def compress_checkpoint(device: torch.device, layers: int, scale: int, workdir: Path) -> dict:
    src = workdir / "src"
    weight_bytes = layered_checkpoint(src, layers, scale)
    for path in src.iterdir():  # into the page cache, for both runs alike
        path.read_bytes()
    t0 = time.perf_counter()
    unweight.compress(src, workdir / "cpu")
    cpu_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    unweight.compress(src, workdir / "device", device=str(device))
    dev_s = time.perf_counter() - t0
    same = all(p.read_bytes() == (workdir / "device" / p.name).read_bytes() for p in (workdir / "cpu").iterdir())
    packed = sum(p.stat().st_size for p in (workdir / "cpu").iterdir())
    shutil.rmtree(workdir)
    return {"layers": layers, "weight_bytes": weight_bytes, "packed_bytes": packed, "cpu_s": cpu_s,
            "device_s": dev_s, "cpu_mbs": weight_bytes / cpu_s / 1e6, "device_mbs": weight_bytes / dev_s / 1e6,
            "identical": same}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device of the coder (default: cuda when present; cpu only checks the script runs)")
    p.add_argument("--layers", type=int, default=4, help="layers of the 8B-shaped checkpoint")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape, scale, reps = ((8192, 8192), 1, 5) if not args.quick else ((256, 512), 32, 1)
    one = code_one_tensor(device, shape, reps)
    with tempfile.TemporaryDirectory(prefix="unweight-gpu-compress-") as tmp:
        whole = compress_checkpoint(device, args.layers if not args.quick else 2, scale, Path(tmp) / "run")
    rows = [
        [f"code one bf16 {shape[0]}x{shape[1]} tensor (steps {one['steps']}, runs of {one['group']}): MB/s of input",
         f"{one['cpu_mbs']:,.0f} (one thread)", f"{one['device_mbs']:,.0f}",
         f"{one['device_mbs'] / one['cpu_mbs']:.1f}x", "bit-exact" if one["bit_exact"] else "DIFFERENT"],
        [f"`unweight.compress` of {whole['layers']} Llama-3.1-8B-shaped layers ({whole['weight_bytes'] / 1e9:.2f} GB "
         f"bf16, verification on): MB/s of input", f"{whole['cpu_mbs']:,.0f} (every core)",
         f"{whole['device_mbs']:,.0f}", f"{whole['device_mbs'] / whole['cpu_mbs']:.1f}x",
         "identical files" if whole["identical"] else "DIFFERENT FILES"],
    ]
    table = markdown_table(["figure", "CPU coder", f"torch coder on {device}", "ratio", "output"], rows)
    notes = [f"Seconds: one tensor {one['cpu_s']:.3f} (CPU) / {one['device_s']:.4f} ({device}); the checkpoint "
             f"{whole['cpu_s']:.1f} / {whole['device_s']:.1f}. A 32-layer 8B model would take about "
             f"{whole['device_s'] * 32 / whole['layers']:.0f} s with the device coder at this rate (derived, "
             f"not measured). With device=\"cuda\" each chunk is also decoded by the Triton kernel and compared "
             f"there; the CPU still plans (histograms, word counts), hashes (SHA-256) and writes the files."]
    section = Section(TITLE, command_line(), table,
                      "the CPU coder (numba) on the same tensor and checkpoint, in the same run", notes)
    publish(args, section, {"one_tensor": one, "checkpoint": whole})
    return 0 if one["bit_exact"] and whole["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
