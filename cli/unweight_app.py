"""`unweight`: compress, verify, decompress and inspect packed checkpoints (thin typer commands)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from unweight.errors import CorruptDataError, UnweightError, VerificationError

from .common import handle_errors

app = typer.Typer(help="Lossless packed checkpoints: the exponent bits of every float weight, entropy-coded.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(width=None if sys.stdout.isatty() else 200)

DEBUG_ENV = "UNWEIGHT_DEBUG"
EXIT_CODES = {UnweightError: 1, CorruptDataError: 3, VerificationError: 3}  # 3: the data is bad
catch_errors = handle_errors(DEBUG_ENV, EXIT_CODES)

Force = Annotated[bool, typer.Option("--force", help="Replace a non-empty output directory.")]
Backend = Annotated[Optional[str], typer.Option(help="Decoder: cpu or triton (default: triton on a GPU).")]


@app.command(epilog="Examples:\n\n  unweight compress ./Llama-3.1-8B -o ./Llama-3.1-8B.uw\n\n"
                    "  unweight compress HuggingFaceTB/SmolLM2-135M-Instruct -o smol.uw --force")
@catch_errors
def compress(
    src: Annotated[str, typer.Argument(help="HF directory, a .safetensors file, or a hub repo id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Packed directory to create.")],
    force: Force = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip decoding each tensor back.")] = False,
    shard_size: Annotated[int, typer.Option(help="Largest shard, in MiB.")] = 2048,
    steps: Annotated[Optional[int], typer.Option(
        help="Symbols (weight pairs) a lane decodes per block (default: 256). Fewer decode faster on a GPU "
             "where tensors are few and small, and pack looser: a lane's end costs ~8 bits (BENCHMARKS.md, "
             "\"GPU decode\").")] = None,
    device: Annotated[Optional[str], typer.Option(
        help="Code the words on this torch device (e.g. cuda), each chunk checked there; the output is the "
             "same, byte for byte. Default: the CPU.")] = None,
) -> None:
    """Compress a checkpoint into a packed directory (verified bit for bit unless --no-verify)."""
    import unweight
    from unweight.sources import resolve_source

    with _progress("compressing", _weight_bytes(resolve_source(src))) as advance:
        report = unweight.compress(src, output, force=force, verify=not no_verify,
                                   shard_bytes=shard_size * 1024 * 1024, steps=steps, progress=advance,
                                   device=device)
    console.print(_savings_table(report))
    for name in report.skipped:
        console.print(f"[yellow]skipped pickle file {name} (safetensors weights are present)[/]")


@app.command(epilog="Examples:\n\n  unweight verify smol.uw\n\n  unweight verify smol.uw --against ./SmolLM2")
@catch_errors
def verify(
    packed: Annotated[Path, typer.Argument(help="Packed directory.")],
    against: Annotated[Optional[str], typer.Option(help="Also compare bit for bit with this source.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Decode on cpu or cuda (default: cuda when present).")] = None,
    backend: Backend = None,
) -> None:
    """Decode every tensor and check its SHA-256 (and equality with --against)."""
    from unweight.verify import verify as run_verify

    with _progress("verifying", _packed_bytes(packed)) as advance:
        report = run_verify(packed, against, device=device, backend=backend, progress=advance)
    console.print(f"[green]OK[/] {report.checked} tensors match" + (f" {against}" if against else " their SHA-256"))


@app.command(epilog="Example:\n\n  unweight decompress smol.uw -o ./SmolLM2-restored")
@catch_errors
def decompress(
    packed: Annotated[Path, typer.Argument(help="Packed directory.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to rebuild the checkpoint in.")],
    force: Force = False,
    backend: Backend = None,
) -> None:
    """Rebuild the original files, byte-identical (checked against their recorded SHA-256)."""
    from unweight.decompress import decompress as run_decompress

    with _progress("decompressing", _packed_bytes(packed)) as advance:
        files = run_decompress(packed, output, force=force, backend=backend, progress=advance)
    console.print(f"[green]OK[/] rebuilt {len(files)} weight file(s) in {output}")


@app.command(epilog="Examples:\n\n  unweight inspect smol.uw\n\n  unweight inspect smol.uw --json | jq .ratio")
@catch_errors
def inspect(
    packed: Annotated[Path, typer.Argument(help="Packed directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per-tensor sizes, exponent entropy and achieved bits a weight."""
    from unweight.inspect import inspect as run_inspect

    info = run_inspect(packed)
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=1))
        return
    table = Table("tensor", "dtype", "shape", "original", "packed", "ratio", "exp. entropy", "bits/weight", "bound")
    for t in info.tensors:
        table.add_row(t.name, t.dtype, "x".join(map(str, t.shape)), _size(t.original_bytes), _size(t.packed_bytes),
                      f"{t.packed_bytes / max(1, t.original_bytes):.1%}", f"{t.entropy_bits:.3f}",
                      f"{t.bits_per_weight:.3f}", f"{t.bound_bits_per_weight:.3f}")
    table.add_section()
    table.add_row("total", "", "", _size(info.original_bytes), _size(info.packed_bytes), f"{info.ratio:.2%}")
    console.print(table)


def _weight_bytes(source) -> int:
    return sum((source.root / f).stat().st_size for f in source.weight_files)


def _packed_bytes(packed: Path) -> int:
    """Original bytes of every tensor of a packed directory (the progress bar's total)."""
    from unweight.reader import PackedReader

    return sum(t.original_bytes for t in PackedReader(packed).manifest.tensors.values())


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A byte-counting progress bar on stderr; yields the function that advances it."""
    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _savings_table(report) -> Table:
    floats = [t for t in report.tensors if t.entropy_bits > 0]
    weights = sum(math.prod(t.shape) for t in floats)
    bits = 8 * sum(t.packed_bytes for t in floats) / max(1, weights)
    table = Table("original", "packed", "savings", "bits/weight (floats)", "entropy bound", title=str(report.destination))
    table.add_row(_size(report.original_bytes), _size(report.packed_bytes), f"{1 - report.ratio:.2%}",
                  f"{bits:.3f}", f"{report.bound_ratio:.2%} of original")
    return table


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def main() -> None:
    app()
