"""CPU throughput of `unweight.compress` (MB/s of input) and of CPU decoding (MB/s of output),
beside zstd -3 on the same bytes, with a profile of where compress and load spend their time.

    python benchmarks/cpu_speed.py                   # SmolLM2-135M + a 256 MB synthetic tensor
    python benchmarks/cpu_speed.py --quick           # a 4 MB synthetic tensor, temp BENCHMARKS.md
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import zstandard

import unweight
from unweight.sources import resolve_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MB, Case, Section, Timing, command_line, load_average, markdown_table, parser,  # noqa: E402
                    publish, save_checkpoint, synthetic_bf16, time_interleaved)

TITLE = "CPU speed: compress and decode"
COMPRESS_TARGET = 150.0   # MB/s of input, verification on
DECODE_TARGET = 300.0     # MB/s of output
SYNTHETIC_SHAPE = (8192, 16384)   # 128M bf16 weights: 268 MB
QUICK_SHAPE = (1024, 2048)
ZSTD_LEVEL = 3

UNWEIGHT_DIR = Path(unweight.__file__).resolve().parent
# built-in functions that are a stage of their own, as cProfile names them
WAITING = "waiting (for work, or for another thread)"
BUILTIN_STAGES = {
    "<method 'update' of '_hashlib.HASH' objects>": "SHA-256",
    "<built-in method _hashlib.openssl_sha256>": "SHA-256",
    "<method 'readinto' of '_io.BufferedReader' objects>": "file reads",
    "<method 'read' of '_io.BufferedReader' objects>": "file reads",
    "<method 'write' of '_io.BufferedWriter' objects>": "file writes + fsync",
    "<built-in method posix.pwrite>": "file writes + fsync",
    "<built-in method posix.fsync>": "file writes + fsync",
    "<built-in method posix.fdatasync>": "fdatasync (a thread that waits for the disk while coding goes on)",
    "<method 'acquire' of '_thread.lock' objects>": WAITING,
    "<method 'get' of '_queue.SimpleQueue' objects>": WAITING,
    "<method 'copy_' of 'torch._C.TensorBase' objects>": "torch copies",
    "<method 'compress' of 'zstandard.backend_c.ZstdCompressor' objects>": "zstd (tensors that are not coded floats)",
}
OTHER_STAGE = "other (Python, numpy, allocation)"
MIN_SHARE = 0.01          # stages below this share of a profile are summed into one row


@dataclass(frozen=True)
class Input:
    name: str
    path: Path          # checkpoint directory


# (key, label, bytes it is measured in, target MB/s)
ROWS = [
    ("compress", "`unweight.compress` (verification on, the default)", "input", COMPRESS_TARGET),
    ("compress_no_verify", "`unweight.compress(verify=False)`", "input", None),
    ("compress_1_thread", "`unweight.compress`, numba held to 1 thread (one coding thread)", "input", None),
    ("zstd_compress", "zstd -3 compress (baseline)", "input", None),
    ("load", "`unweight.load(backend=\"cpu\")` (reads the packed files)", "output", DECODE_TARGET),
    ("decode", "`PackedTensor.decode(backend=\"cpu\")` (streams in memory)", "output", DECODE_TARGET),
    ("decode_1_thread", "`PackedTensor.decode`, numba held to 1 thread", "output", None),
    ("zstd_decompress", "zstd -3 decompress (baseline)", "output", None),
]


@dataclass
class SpeedResult:
    name: str
    input_bytes: int            # .safetensors files
    output_bytes: int           # decoded tensor bytes
    timings: dict[str, Timing]  # ROWS key -> seconds of each run

    def rate(self, key: str, unit: str) -> float:
        return self.timings[key].rate(self.input_bytes if unit == "input" else self.output_bytes)

    def rate_range(self, key: str, unit: str) -> str:
        return self.timings[key].rate_range(self.input_bytes if unit == "input" else self.output_bytes)

    def to_dict(self) -> dict:
        return {"name": self.name, "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
                "seconds": {k: t.seconds for k, t in self.timings.items()},
                "mb_per_s": {k: self.rate(k, unit) for k, _, unit, _ in ROWS}}


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


def one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with numba's parallel loops held to one thread (immune to waiting for a busy core)."""
    def run() -> None:
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            fn()
        finally:
            numba.set_num_threads(threads)
    return run


def compress_case(src: Path, out: Path, **options) -> Case:
    return Case(lambda: unweight.compress(src, out, **options), before=lambda: shutil.rmtree(out, ignore_errors=True))


def measure(item: Input, workdir: Path, runs: int) -> SpeedResult:
    workdir = Path(tempfile.mkdtemp(dir=workdir))
    packed = workdir / "packed"
    unweight.compress(item.path, packed, verify=False)
    with unweight.open(packed) as reader:
        tensors = [reader.get_packed(name) for name in reader.keys()]
    decode_all = lambda: [t.decode(backend="cpu") for t in tensors]  # noqa: E731
    raw = weight_bytes(item.path)
    frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    out = workdir / "timed"
    cases = {
        "compress": compress_case(item.path, out),
        "compress_no_verify": compress_case(item.path, out, verify=False),
        "compress_1_thread": Case(one_thread(lambda: unweight.compress(item.path, out)),
                                  before=lambda: shutil.rmtree(out, ignore_errors=True)),
        "zstd_compress": Case(lambda: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)),
        "load": Case(lambda: unweight.load(packed, backend="cpu")),
        "decode": Case(decode_all),
        "decode_1_thread": Case(one_thread(decode_all)),
        "zstd_decompress": Case(lambda: zstandard.ZstdDecompressor().decompress(frame)),
    }
    timings = time_interleaved(cases, runs)
    shutil.rmtree(workdir, ignore_errors=True)
    output_bytes = sum(t.numel * t.torch_dtype.itemsize for t in tensors)
    return SpeedResult(item.name, len(raw), output_bytes, timings)


def stage_of(key: tuple[str, int, str]) -> str:
    """A cProfile key as a stage: unweight's own functions by name (a numba kernel's time shows under
    the function that launches it), a few built-ins by what they do, everything else as 'other'."""
    filename, _, function = key
    path = Path(filename)
    if path.suffix == ".py" and UNWEIGHT_DIR in path.resolve().parents:
        module = ".".join(path.resolve().relative_to(UNWEIGHT_DIR).with_suffix("").parts)
        return f"`{module}.{function}`"
    return BUILTIN_STAGES.get(function, OTHER_STAGE)


def profile_stages(fn: Callable[[], object]) -> list[tuple[str, float, float | None]]:
    """(stage, seconds, share) of one call, from cProfile's own time per function summed over every
    thread the call starts (compress codes on worker threads); time spent waiting is one row, left
    out of the shares, which are of the time the threads were busy."""
    profilers = [cProfile.Profile()]
    lock = threading.Lock()

    def profile_new_thread(*_) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile()
        with lock:
            profilers.append(profiler)
        profiler.enable()

    threading.setprofile(profile_new_thread)
    try:
        profilers[0].runcall(fn)
    finally:
        threading.setprofile(None)
    stats = pstats.Stats(profilers[0])
    for profiler in profilers[1:]:
        stats.add(profiler)
    totals: dict[str, float] = {}
    for key, (_, _, own, _, _) in stats.stats.items():  # key -> (calls, primitive calls, own time, ...)
        totals[stage_of(key)] = totals.get(stage_of(key), 0.0) + own
    busy = sum(s for stage, s in totals.items() if stage != WAITING)
    rows = [(stage, s, s / busy if stage != WAITING else None) for stage, s in totals.items()]
    return sorted(rows, key=lambda row: (row[0] == WAITING, -row[1]))


def profiles(item: Input, workdir: Path) -> dict[str, list[tuple[str, float, float | None]]]:
    """Where one compress (verification on) and one `unweight.load` of `item` spend their time."""
    packed = Path(tempfile.mkdtemp(dir=workdir)) / "packed"
    compress = profile_stages(lambda: unweight.compress(item.path, packed))
    load = profile_stages(lambda: unweight.load(packed, backend="cpu"))
    shutil.rmtree(packed, ignore_errors=True)
    return {"compress": compress, "load": load}


def target_cell(rates: list[float], target: float) -> str:
    """Whether every input reaches the target; if not, each input's share of it."""
    if min(rates) >= target:
        return f">= {target:.0f}: met"
    return f">= {target:.0f}: missed ({', '.join(f'{r / target:.1%}' for r in rates)} of it)"


def compress_verdict(results: list[SpeedResult]) -> str:
    """The compress target against every input's median and slowest round."""
    medians = [r.rate("compress", "input") for r in results]
    slowest = [r.input_bytes / max(r.timings["compress"].seconds) / MB for r in results]
    verdict = "met" if min(medians) >= COMPRESS_TARGET else "missed"
    return (f"Target: `unweight.compress` with verification at >= {COMPRESS_TARGET:.0f} MB/s of input on each "
            f"input: {verdict} (medians {', '.join(f'{m:,.0f}' for m in medians)} MB/s; slowest rounds "
            f"{', '.join(f'{m:,.0f}' for m in slowest)} MB/s"
            f"{'' if min(slowest) >= COMPRESS_TARGET else ', so not in every round'}).")


def speed_table(results: list[SpeedResult]) -> str:
    headers = ["MB/s, median (min-max)", *(f"{r.name}: {r.input_bytes / MB:,.0f} MB" for r in results), "target"]
    rows = []
    for key, label, unit, target in ROWS:
        cells = [r.rate_range(key, unit) for r in results]
        rows.append([label, *cells, target_cell([r.rate(key, unit) for r in results], target) if target else "-"])
    return markdown_table(headers, rows)


def profile_table(name: str, what: str, shares: list[tuple[str, float, float | None]]) -> str:
    busy = [row for row in shares if row[0] != WAITING]
    rows = [[stage, f"{seconds:.2f}", f"{share:.0%}"] for stage, seconds, share in busy if share >= MIN_SHARE]
    small = [(seconds, share) for _, seconds, share in busy if share < MIN_SHARE]
    if small:
        rows.append([f"{len(small)} more, under {MIN_SHARE:.0%} each", f"{sum(s for s, _ in small):.2f}",
                     f"{sum(f for _, f in small):.0%}"])
    rows += [[stage, f"{seconds:.2f}", "-"] for stage, seconds, _ in shares if stage == WAITING]
    return markdown_table([f"stage of one {what} of {name}", "seconds (all threads)", "share of busy time"], rows)


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
        stages = profiles(items[0], workdir)
    tables = [speed_table(results), profile_table(items[0].name, "`unweight.compress`", stages["compress"]),
              profile_table(items[0].name, "`unweight.load(backend=\"cpu\")`", stages["load"])]
    section = Section(
        TITLE, command_line(), "\n".join(tables),
        baseline=f"zstd level {ZSTD_LEVEL} (python-zstandard {zstandard.__version__}, one thread) compressing and "
                 "decompressing the same .safetensors bytes in memory, timed in the same rounds",
        notes=[f"Medians of {args.runs} rounds after one warm-up round (numba compiles on first use and caches "
               f"on disk); each round times every row once, in table order. MB = 10^6 bytes; compress counts the "
               f".safetensors bytes read, decode the tensor bytes produced. numba {numba.__version__}, threading "
               f"layer {numba.threading_layer()}, {numba.get_num_threads()} threads. The cores are shared with "
               f"other processes (1-minute load average {load_before} at the start, {load_average()} at the end): "
               f"decode's parallel loops wait for their slowest thread, so when another process holds a core the "
               f"multi-threaded decode rows slow down far more than the 1-thread rows (compress hands its tasks "
               f"to whichever of its threads is free); see the min-max ranges.",
               compress_verdict(results),
               "The stage tables are cProfile's own time per function for one extra call on the first input, "
               "summed over the threads it runs on (so over a second of it may fall in a second of wall time) "
               "and grouped by stage; a numba kernel's time shows under the Python function that launches it. "
               "Shares are of the time threads were busy: the waiting row (idle workers, threads waiting on "
               "others) is left out of them."])
    publish(args, section, {"runs": args.runs, "load_average": [load_before, load_average()],
                            "inputs": [r.to_dict() for r in results],
                            "profiles": {what: [{"stage": s, "seconds": t, "share": f} for s, t, f in rows]
                                         for what, rows in stages.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
