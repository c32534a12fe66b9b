"""Helpers shared by the benchmark scripts: machine description, median timing, markdown
tables, and writing a named section of BENCHMARKS.md (replacing only that section)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MD = REPO_ROOT / "BENCHMARKS.md"
MB = 1e6  # throughputs are in MB/s of 10**6 bytes
INTRO = """# Benchmarks

Every figure here was produced by a script in `benchmarks/` and is written back by it: each
section names the command, the machine and the date, and sets the figure beside a baseline
measured in the same run. Timings are medians of several runs after a warm-up run; sizes are
in bytes of the files on disk unless a column says otherwise. Rerun a script to replace its
section; the other sections are left as they are.
"""


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs, after the warm-up runs were discarded."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self, num_bytes: int) -> float:
        """MB/s for `num_bytes` processed per run, at the median time."""
        return num_bytes / self.median / MB

    def rate_range(self, num_bytes: int) -> str:
        """'median (min-max)' MB/s over the runs."""
        rates = sorted(num_bytes / s / MB for s in self.seconds)
        return f"{self.rate(num_bytes):,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f})"


@dataclass(frozen=True)
class Case:
    """One thing to time: `run` is timed, `before` (cleanup, setup) is not."""

    run: Callable[[], object]
    before: Callable[[], object] = lambda: None


def time_interleaved(cases: dict[str, Case], runs: int, warmup: int = 1) -> dict[str, Timing]:
    """Time every case `runs` times, round-robin, after `warmup` untimed rounds.

    Round-robin rather than one case after another: when other processes share the cores, a
    burst of load then slows every case of a round alike instead of one case only, which keeps
    the ratios between cases (figure against baseline) meaningful.
    """
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(warmup + runs):
        for name, case in cases.items():
            case.before()
            start = time.perf_counter()
            case.run()
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: Timing(s) for name, s in seconds.items()}


@dataclass
class Section:
    """One `## title` section of BENCHMARKS.md."""

    title: str
    command: str
    table: str                      # markdown table
    baseline: str                   # what the figures are set against, measured in the same run
    notes: list[str] = field(default_factory=list)
    machine: str = ""
    date: str = ""

    def __post_init__(self) -> None:
        self.machine = self.machine or machine_description()
        self.date = self.date or today()

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", "", f"- Command: `{self.command}`", f"- Machine: {self.machine}",
                 f"- Date: {self.date}", f"- Baseline: {self.baseline}", "", self.table.rstrip(), ""]
        for note in self.notes:
            lines += [note, ""]
        return "\n".join(lines).rstrip() + "\n"

    def to_dict(self) -> dict:
        return {"title": self.title, "command": self.command, "machine": self.machine, "date": self.date,
                "baseline": self.baseline, "table": self.table, "notes": self.notes}


def today() -> str:
    return datetime.date.today().isoformat()


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024**2 if match else None


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_description() -> str:
    """e.g. 'AMD EPYC, 2 cores, 23 GiB RAM, no GPU, Linux, Python 3.11'."""
    parts = [cpu_model(), f"{usable_cores()} cores"]
    mem = memory_gib()
    if mem is not None:
        parts.append(f"{mem:.0f} GiB RAM")
    parts.append(gpu_name() or "no GPU")
    parts.append(f"{platform.system()}, Python {platform.python_version()}")
    return ", ".join(parts)


def load_average() -> str:
    """1-minute load average (other processes share the cores), or '?' where unknown."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def replace_section(text: str, title: str, section_md: str) -> str:
    """`text` with its `## title` section (up to the next `## ` heading) replaced, or appended."""
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    block = section_md.rstrip() + "\n\n"
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1).rstrip() + "\n"
    return text.rstrip() + "\n\n" + block.rstrip() + "\n"


def write_section(path: Path, section: Section) -> None:
    """Write `section` into the markdown file at `path` (created with an intro if missing)."""
    path = Path(path)
    text = path.read_text() if path.exists() else INTRO
    new = replace_section(text, section.title, section.to_markdown())
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(new)
    os.replace(scratch, path)


def command_line() -> str:
    """How this script was run, relative to the repository root where possible."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_text = str(script)
    return shlex.join(["python", script_text, *sys.argv[1:]])


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out-md", type=Path, default=None,
                   help=f"markdown file to write the section into (default: {DEFAULT_MD}; "
                        "with --quick, a BENCHMARKS.md in a temporary directory)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    p.add_argument("--quick", action="store_true",
                   help="tiny synthetic inputs, to check that the script runs (numbers mean nothing)")
    return p


def output_path(args: argparse.Namespace) -> Path:
    """--out-md, else BENCHMARKS.md, except that --quick never writes the real file by default."""
    if args.out_md is not None:
        return args.out_md
    if args.quick:
        return Path(tempfile.mkdtemp(prefix="unweight-bench-")) / "BENCHMARKS.md"
    return DEFAULT_MD


def publish(args: argparse.Namespace, section: Section, results: dict) -> None:
    """Print the section, write it into the markdown file and, with --json, the results."""
    print(section.to_markdown())
    out = output_path(args)
    write_section(out, section)
    print(f"wrote section {section.title!r} to {out}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"section": section.to_dict(), "results": results}, indent=1) + "\n")
        print(f"wrote {args.json}")


def synthetic_bf16(numel: int, std: float = 0.02, seed: int = 0):
    """A random-normal bf16 tensor (1-D), generated in chunks so that only the output is large."""
    import torch

    out = torch.empty(numel, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    chunk = 1 << 24
    for start in range(0, numel, chunk):
        stop = min(numel, start + chunk)
        out[start:stop] = torch.randn(stop - start, generator=gen) * std
    return out


def save_checkpoint(folder: Path, tensors: dict) -> Path:
    """Write `tensors` as `folder/model.safetensors` (a one-file Hugging Face checkpoint)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(folder / "model.safetensors"))
    return folder
