"""CPU throughput of `unweight.compress` (MB/s of input) and of CPU decoding (MB/s of output),
beside zstd -3 on the same bytes, with a profile of where one compress spends its time.

    python benchmarks/cpu_speed.py                   # SmolLM2-135M + a 256 MB synthetic tensor
    python benchmarks/cpu_speed.py --quick           # a 4 MB synthetic tensor, temp BENCHMARKS.md
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numba
import zstandard

import unweight
from unweight.sources import resolve_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MB, Section, Timing, command_line, load_average, markdown_table, parser, publish,  # noqa: E402
                    save_checkpoint, synthetic_bf16, time_runs)

TITLE = "CPU speed: compress and decode"
COMPRESS_TARGET = 150.0   # MB/s of input, verification on
DECODE_TARGET = 300.0     # MB/s of output
SYNTHETIC_SHAPE = (8192, 16384)   # 128M bf16 weights: 268 MB
QUICK_SHAPE = (1024, 2048)
ZSTD_LEVEL = 3

# cProfile entries -> stage of compress they belong to: (file or object name, function name)
STAGES = [
    (("lanes.py", "_encode"), "lane encode (numba)"),
    (("lanes.py", "_compact"), "lane encode: compaction (numba)"),
    (("lanes.py", "_decode"), "lane decode (numba)"),
    (("floats.py", "_split16"), "split into exponent + raw planes (numba)"),
    (("floats.py", "_split32"), "split into exponent + raw planes (numba)"),
    (("floats.py", "_merge16"), "merge exponent + raw planes (numba)"),
    (("floats.py", "_merge32"), "merge exponent + raw planes (numba)"),
    (("huffman.py", "_histogram"), "exponent histogram (numba)"),
    (("_hashlib.HASH", "update"), "SHA-256 (source file + each tensor)"),
    (("numeric.py", "array_equal"), "compare decoded with source bytes"),
    (("_io.BufferedReader", "readinto"), "file reads"),
    (("_io.BufferedReader", "read"), "file reads"),
    (("_io.BufferedWriter", "write"), "file writes + fsync"),
    (("posix", "fsync"), "file writes + fsync"),
    (("torch._C.TensorBase", "copy_"), "copy into the output tensor"),
]


@dataclass(frozen=True)
class Input:
    name: str
    path: Path          # checkpoint directory


@dataclass
class SpeedResult:
    name: str
    input_bytes: int            # .safetensors files
    output_bytes: int           # decoded tensor bytes
    compress: Timing
    compress_no_verify: Timing
    zstd_compress: Timing
    load: Timing
    decode: Timing
    zstd_decompress: Timing

    def to_dict(self) -> dict:
        timings = {k: v.seconds for k, v in vars(self).items() if isinstance(v, Timing)}
        return {"name": self.name, "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
                "seconds": timings}


def inputs(workdir: Path, quick: bool) -> list[Input]:
    shape = QUICK_SHAPE if quick else SYNTHETIC_SHAPE
    weights = synthetic_bf16(shape[0] * shape[1]).reshape(shape)
    synthetic = Input(f"synthetic bf16 {shape[0]}x{shape[1]}, N(0, 0.02)",
                      save_checkpoint(workdir / "synthetic", {"weight": weights}))
    if quick:
        return [synthetic]
    from unweight import demo

    return [Input("SmolLM2-135M-Instruct (bf16)", demo.smollm2_dir()), synthetic]


def weight_bytes(path: Path) -> bytes:
    source = resolve_source(path)
    return b"".join((source.root / rel).read_bytes() for rel in source.weight_files)


def measure(item: Input, workdir: Path, runs: int) -> SpeedResult:
    packed = workdir / "packed"
    remove = lambda: shutil.rmtree(packed, ignore_errors=True)  # noqa: E731 - untimed, before each run
    compress = time_runs(lambda: unweight.compress(item.path, packed), runs, before=remove)
    no_verify = time_runs(lambda: unweight.compress(item.path, packed, verify=False), runs, before=remove)
    load = time_runs(lambda: unweight.load(packed, backend="cpu"), runs)
    with unweight.open(packed) as reader:
        tensors = [reader.get_packed(name) for name in reader.keys()]
    decode = time_runs(lambda: [t.decode(backend="cpu") for t in tensors], runs)
    raw = weight_bytes(item.path)
    frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    zstd_c = time_runs(lambda: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw), runs)
    zstd_d = time_runs(lambda: zstandard.ZstdDecompressor().decompress(frame), runs)
    output_bytes = sum(t.numel * t.torch_dtype.itemsize for t in tensors)
    return SpeedResult(item.name, len(raw), output_bytes, compress, no_verify, zstd_c, load, decode, zstd_d)


def stage_of(key: tuple) -> str:
    filename, _, function = key
    for (where, name), stage in STAGES:
        if (filename.endswith(where) and function == name) or (where in function and f"'{name}'" in function):
            return stage
    return "other (Python, numpy copies and concatenation, allocation)"


def profile_compress(item: Input, workdir: Path) -> list[tuple[str, float, float]]:
    """(stage, seconds, share of the total) for one compress, by cProfile's own time per function."""
    packed = workdir / "profiled"
    profiler = cProfile.Profile()
    profiler.runcall(unweight.compress, item.path, packed)
    shutil.rmtree(packed, ignore_errors=True)
    stats = pstats.Stats(profiler).stats  # key -> (calls, primitive calls, own time, cumulative, callers)
    totals: dict[str, float] = {}
    for key, (_, _, own, _, _) in stats.items():
        totals[stage_of(key)] = totals.get(stage_of(key), 0.0) + own
    total = sum(totals.values())
    return sorted(((stage, s, s / total) for stage, s in totals.items()), key=lambda row: -row[1])


def target_cell(rates: list[float], target: float) -> str:
    """Whether every input reaches the target; if not, each input's share of it."""
    if min(rates) >= target:
        return f">= {target:.0f}: met"
    return f">= {target:.0f}: missed ({', '.join(f'{r / target:.0%}' for r in rates)} of it)"


def speed_table(results: list[SpeedResult]) -> str:
    rows = [
        ("`unweight.compress` (verification on, the default)", "compress", "input_bytes", COMPRESS_TARGET),
        ("`unweight.compress(verify=False)`", "compress_no_verify", "input_bytes", None),
        ("zstd -3 compress (baseline)", "zstd_compress", "input_bytes", None),
        ("`unweight.load(backend=\"cpu\")` (reads the packed files)", "load", "output_bytes", DECODE_TARGET),
        ("`PackedTensor.decode(backend=\"cpu\")` (streams in memory)", "decode", "output_bytes", DECODE_TARGET),
        ("zstd -3 decompress (baseline)", "zstd_decompress", "output_bytes", None),
    ]
    headers = ["MB/s, median (min-max)", *(f"{r.name}: {r.input_bytes / MB:,.0f} MB" for r in results),
               "target"]
    table = []
    for label, attr, size_attr, target in rows:
        cells = [getattr(r, attr).rate_range(getattr(r, size_attr)) for r in results]
        rates = [getattr(r, attr).rate(getattr(r, size_attr)) for r in results]
        table.append([label, *cells, target_cell(rates, target) if target else "-"])
    return markdown_table(headers, table)


def profile_table(name: str, shares: list[tuple[str, float, float]]) -> str:
    rows = [[stage, f"{seconds:.2f}", f"{share:.0%}"] for stage, seconds, share in shares]
    return markdown_table([f"stage of one `unweight.compress` of {name}", "seconds", "share"], rows)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs of each measurement, after one warm-up run (default 5; 1 with --quick)")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 5)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="unweight-bench-") as tmp:
        workdir = Path(tmp)
        items = inputs(workdir, args.quick)
        results = [measure(item, workdir, args.runs) for item in items]
        shares = profile_compress(items[-1], workdir)
    section = Section(
        TITLE, command_line(), speed_table(results) + "\n" + profile_table(items[-1].name, shares),
        baseline=f"zstd level {ZSTD_LEVEL} (python-zstandard {zstandard.__version__}, one thread) compressing and "
                 "decompressing the same .safetensors bytes in memory, timed in the same run",
        notes=[f"Medians of {args.runs} runs after one warm-up run (numba compiles on first use and caches on "
               f"disk). MB = 10^6 bytes; compress counts the .safetensors bytes read, decode the tensor bytes "
               f"produced. numba: {numba.__version__}, threading layer {numba.threading_layer()}, "
               f"{numba.get_num_threads()} threads. The cores are shared with other processes: 1-minute load "
               f"average {load_before} at the start and {load_average()} at the end, so single runs vary; "
               f"see the min-max range.",
               "The stage table is cProfile's own time per function for one extra compress of the last input, "
               "grouped by stage (numba kernels appear as the Python functions that launch them)."])
    publish(args, section, {"runs": args.runs, "load_average": [load_before, load_average()],
                            "inputs": [r.to_dict() for r in results],
                            "compress_profile": [{"stage": s, "seconds": t, "share": f} for s, t, f in shares]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
