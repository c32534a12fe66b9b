"""Peak resident memory of `unweight compress` on a multi-GB sharded bf16 checkpoint, against
the bound "twice the largest tensor plus 1 GiB". The checkpoint is generated chunk by chunk
(so generating it stays small) and deleted at the end.

    python benchmarks/memory.py                      # ~3 GB in 3 shards, largest tensor 512 MiB
    python benchmarks/memory.py --quick              # ~3 MB in 3 shards, temp BENCHMARKS.md
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Section, command_line, markdown_table, parser, publish  # noqa: E402

TITLE = "Memory: peak RSS of `unweight compress`"
GIB = 1024**3
MIB = 1024**2
BF16_BYTES = 2
CHUNK_WEIGHTS = 1 << 24   # weights generated at once (32 MiB of bf16)
TIME_BIN = Path("/usr/bin/time")
SMALL_SHARD_MIB = 256     # packed shard size of the last run (the default is 2048 MiB)
BASELINE_CODE = "import torch, numba, unweight, unweight_cli.unweight_app"


@dataclass(frozen=True)
class Shape:
    """A Llama-like layout: its tensors, in file order."""

    hidden: int
    intermediate: int
    vocab: int
    layers: int

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i = self.hidden, self.intermediate
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [(p + "input_layernorm.weight", (h,)), *((p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"),
                    (p + "post_attention_layernorm.weight", (h,)), (p + "mlp.gate_proj.weight", (i, h)),
                    (p + "mlp.up_proj.weight", (i, h)), (p + "mlp.down_proj.weight", (h, i))]
        return out + [("model.norm.weight", (h,))]


FULL = Shape(hidden=4096, intermediate=11008, vocab=65536, layers=6)   # 2.97 GB, embedding 512 MiB
QUICK = Shape(hidden=256, intermediate=688, vocab=2048, layers=2)      # 3 MB


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    total_bytes: int
    largest_tensor_bytes: int
    shard_bytes: list[int]


@dataclass(frozen=True)
class RunResult:
    label: str
    command: str
    peak_rss_bytes: int
    wall_seconds: float


def split_shards(tensors: list[tuple[str, tuple[int, ...]]], num_shards: int) -> list[list]:
    """Consecutive groups of tensors of about equal size."""
    total = sum(math.prod(s) for _, s in tensors)
    shards: list[list] = [[]]
    done = 0
    for name, shape in tensors:
        if done >= total * len(shards) / num_shards and len(shards) < num_shards:
            shards.append([])
        shards[-1].append((name, shape))
        done += math.prod(shape)
    return shards


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], gen: torch.Generator) -> int:
    """A bf16 safetensors file of random-normal tensors, written chunk by chunk; returns its size."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * BF16_BYTES
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, shape in tensors:
            std = 1.0 if name.endswith("norm.weight") else 0.02
            _write_normal(f, math.prod(shape), std, gen)
    return path.stat().st_size


def _write_normal(f, numel: int, std: float, gen: torch.Generator) -> None:
    for start in range(0, numel, CHUNK_WEIGHTS):
        chunk = (torch.randn(min(CHUNK_WEIGHTS, numel - start), generator=gen) * std).bfloat16()
        f.write(chunk.view(torch.uint8).numpy().tobytes())


def generate(folder: Path, shape: Shape, num_shards: int = 3) -> Checkpoint:
    """A sharded Hugging Face checkpoint with model.safetensors.index.json."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    groups = split_shards(shape.tensors(), num_shards)
    weight_map, sizes = {}, []
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        sizes.append(write_shard(folder / name, group, gen))
        weight_map.update({tensor: name for tensor, _ in group})
    total = sum(math.prod(s) for _, s in shape.tensors()) * BF16_BYTES
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps({"hidden_size": shape.hidden, "num_hidden_layers": shape.layers}))
    largest = max(math.prod(s) for _, s in shape.tensors()) * BF16_BYTES
    return Checkpoint(folder, sum(sizes), largest, sizes)


def unweight_command() -> list[str]:
    """The `unweight` console script of this environment (or the same entry point through python)."""
    script = Path(sys.executable).parent / "unweight"
    if script.is_file():
        return [str(script)]
    found = shutil.which("unweight")
    return [found] if found else [sys.executable, "-c", "from unweight_cli.unweight_app import main; main()"]


def peak_rss(argv: list[str], label: str) -> RunResult:
    """Run argv to completion; its peak RSS, from /usr/bin/time -v or else getrusage in a wrapper."""
    start = time.perf_counter()
    if TIME_BIN.is_file():
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            _run([str(TIME_BIN), "-v", "-o", report.name, *argv])
            match = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", Path(report.name).read_text())
        if match is None:
            raise RuntimeError(f"{TIME_BIN} -v printed no 'Maximum resident set size' line")
        kib = int(match.group(1))
    else:
        wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        kib = int(_run([sys.executable, "-c", wrapper, *argv]).stdout.split()[-1])
    return RunResult(label, shlex.join(argv), kib * 1024, time.perf_counter() - start)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed with exit code {done.returncode}:\n{done.stderr[-2000:]}")
    return done


def measure(ckpt: Checkpoint, workdir: Path, quick: bool) -> list[RunResult]:
    cli = unweight_command()
    runs = [peak_rss([sys.executable, "-c", BASELINE_CODE], "baseline: python importing torch, numba, unweight")]
    variants = [("`unweight compress` (verification on, the default)", [])]
    if not quick:
        # peak RSS should follow the largest tensor, not the shard size: a small shard size checks that
        variants += [("`unweight compress --no-verify`", ["--no-verify"]),
                     (f"`unweight compress --shard-size {SMALL_SHARD_MIB}`", ["--shard-size", str(SMALL_SHARD_MIB)])]
    for label, extra in variants:
        out = workdir / "packed"
        runs.append(peak_rss([*cli, "compress", str(ckpt.path), "-o", str(out), *extra], label))
        shutil.rmtree(out, ignore_errors=True)
    return runs


def results_table(ckpt: Checkpoint, runs: list[RunResult]) -> str:
    bound = 2 * ckpt.largest_tensor_bytes + GIB
    rows = []
    for r in runs:
        is_compress = "compress" in r.label
        within = ("yes" if r.peak_rss_bytes <= bound else f"no: over by {(r.peak_rss_bytes - bound) / MIB:,.0f} MiB"
                  ) if is_compress else "-"
        speed = f"{ckpt.total_bytes / r.wall_seconds / 1e6:,.1f} MB/s" if is_compress else "-"
        rows.append([r.label, f"{r.peak_rss_bytes / MIB:,.0f} MiB", f"{bound / MIB:,.0f} MiB" if is_compress else "-",
                     within, f"{r.wall_seconds:,.1f} s", speed])
    return markdown_table(["run", "peak RSS", "bound", "within bound", "wall time", "input rate"], rows)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None,
                   help="where to generate the checkpoint (default: a temporary directory; removed at the end)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="unweight-memory-", dir=args.workdir))
    try:
        ckpt = generate(workdir / "source", QUICK if args.quick else FULL)
        runs = measure(ckpt, workdir, args.quick)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    shards = ", ".join(f"{s / 1e6:,.0f}" for s in ckpt.shard_bytes)
    section = Section(
        TITLE, command_line(), results_table(ckpt, runs),
        baseline=f"peak RSS of `python -c \"{BASELINE_CODE}\"` (the fixed cost of the interpreter and "
                 "libraries), measured the same way in the same run",
        notes=[f"Input: a synthetic Llama-like bf16 checkpoint (random normal weights) of "
               f"{ckpt.total_bytes / 1e6:,.0f} MB in {len(ckpt.shard_bytes)} shards ({shards} MB) "
               f"with model.safetensors.index.json; largest tensor {ckpt.largest_tensor_bytes / MIB:,.0f} MiB, so the "
               f"bound 2 x largest tensor + 1 GiB is {(2 * ckpt.largest_tensor_bytes + GIB) / MIB:,.0f} MiB. "
               f"Each row is one run. Peak RSS is the 'Maximum resident set size' of "
               f"{'`/usr/bin/time -v`' if TIME_BIN.is_file() else 'getrusage(RUSAGE_CHILDREN) in a wrapper'}; "
               f"wall time includes interpreter start-up. The packed output holds about two thirds of the input, "
               f"which fits in one packed shard of the default size (2048 MiB); the last run writes "
               f"{SMALL_SHARD_MIB} MiB shards. The generated files are deleted afterwards."])
    publish(args, section, {"checkpoint": {**asdict(ckpt), "path": str(ckpt.path)},
                            "runs": [asdict(r) for r in runs]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
