"""The benchmark scripts run end to end on tiny inputs (--quick) and write their section of a
BENCHMARKS.md with the command, the machine and the date; other sections are left alone."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import common  # noqa: E402

SCRIPTS = {
    "compression.py": "## Compression ratio (CPU)",
    "cpu_speed.py": "## CPU speed: compress and decode",
    "memory.py": "## Memory: peak RSS of `unweight compress`",
    "gpu_compress.py": "## GPU compress: the torch lane coder and `unweight compress --device cuda`",
}
OTHER_SECTION = "## GPU decode (written by another script)\n\n- kept as it is\n"


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, Path]]:
    """Every script run once with --quick, in parallel, each into its own markdown file."""
    procs = {}
    for script in SCRIPTS:
        folder = tmp_path_factory.mktemp(script.removesuffix(".py"))
        md, js = folder / "BENCHMARKS.md", folder / "results.json"
        md.write_text(common.INTRO + "\n" + OTHER_SECTION)
        argv = [sys.executable, str(BENCHMARKS / script), "--quick", "--out-md", str(md), "--json", str(js)]
        procs[script] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), md, js)
    runs = {}
    for script, (proc, md, js) in procs.items():
        out, err = proc.communicate(timeout=300)
        runs[script] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), md, js)
    return runs


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_quick_run_writes_its_section(quick_runs, script):
    done, md, js = quick_runs[script]
    assert done.returncode == 0, done.stderr[-3000:]
    text = md.read_text()
    section = text[text.index(SCRIPTS[script]):]
    assert f"- Command: `python benchmarks/{script} --quick --out-md" in section
    assert f"- Machine: {common.cpu_model()}, {common.usable_cores()} cores" in section
    assert f"- Date: {datetime.date.today().isoformat()}" in section
    assert "- Baseline: " in section
    assert "| --- |" in section
    assert OTHER_SECTION.strip() in text
    results = json.loads(js.read_text())
    assert results["section"]["title"] == SCRIPTS[script].removeprefix("## ")


def test_replace_section_keeps_the_others():
    text = "# Intro\n\n## A\n\nold a\n\n## B\n\nb\n"
    new = common.replace_section(text, "A", "## A\n\nnew a\n")
    assert new == "# Intro\n\n## A\n\nnew a\n\n## B\n\nb\n"
    appended = common.replace_section(new, "C", "## C\n\nc\n")
    assert appended == new + "\n## C\n\nc\n"
    last = common.replace_section(appended, "C", "## C\n\nc2\n")
    assert last == new + "\n## C\n\nc2\n"


def test_title_is_matched_literally():
    text = "## Memory: peak RSS of `unweight compress`\n\nx\n\n## Memory: other\n\ny\n"
    new = common.replace_section(text, "Memory: peak RSS of `unweight compress`", "## Memory: peak RSS of `unweight compress`\n\nz\n")
    assert new == "## Memory: peak RSS of `unweight compress`\n\nz\n\n## Memory: other\n\ny\n"


def test_write_section_creates_the_file_with_an_intro(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    section = common.Section("X", "python benchmarks/x.py", "| a |\n| --- |\n| 1 |\n", baseline="none",
                             machine="m", date="2026-01-01")
    common.write_section(path, section)
    text = path.read_text()
    assert text.startswith(common.INTRO)
    assert "## X\n\n- Command: `python benchmarks/x.py`\n- Machine: m\n- Date: 2026-01-01\n- Baseline: none" in text


def test_interleaved_timing_runs_round_robin_after_the_warmup():
    calls = []
    cases = {name: common.Case(lambda name=name: calls.append(name), before=lambda: calls.append("setup"))
             for name in ("a", "b")}
    timings = common.time_interleaved(cases, runs=2, warmup=1)
    assert calls == ["setup", "a", "setup", "b"] * 3
    assert [len(t.seconds) for t in timings.values()] == [2, 2]


@pytest.mark.slow
def test_decode_ab_script_checks_and_times_a_variant_under_interpreter(tmp_path):
    """benchmarks/gpu_decode_ab.py (the A/B runs of BENCHMARKS.md "GPU decode") on tiny shapes: it
    checks the layer, the tensor and a packed checkpoint's plan bit for bit before timing them, with a
    kernel constant overridden."""
    args = ["--quick", "--device", "cpu", "--repeats", "1", "--prefetch-words", "64",
            "--packed", str(_tiny_packed_checkpoint(tmp_path))]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_decode_ab.py"), *args],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    label = " ".join(args)
    assert lines[-2].startswith(f"{label}: packed ") and lines[-2].endswith("GB/s")
    assert lines[-1].startswith(f"{label}: layer ") and "tensor" in lines[-1]


@pytest.mark.slow
def test_decode_script_times_a_checkpoint_also_with_shorter_lanes_under_interpreter(tmp_path):
    """benchmarks/gpu_decode.py's checkpoint stage (MiniLM in BENCHMARKS.md "GPU decode") on a tiny
    checkpoint: its bf16 weights decoded in one launch as packed and again coded with shorter lanes
    (--minilm-steps), each checked bit for bit (a mismatch is a FAIL and a non-zero exit), with the
    packed size of each; shorter lanes cost bytes."""
    out = tmp_path / "results.json"
    args = ["--device", "cpu", "--quick", "--out", str(out), "--minilm", str(_tiny_packed_checkpoint(tmp_path)),
            "--minilm-steps", "4", "--skip", "layer", "layer-steps", "dtypes", "--steps-sweep", "--group-sweep",
            "--reps", "1", "--budget-s", "0"]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_decode.py"), *args],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    checkpoint = {r["case"]: r for r in payload["results"] if r["case"].startswith("all-MiniLM-L6-v2 bf16")}
    assert sorted(checkpoint) == ["all-MiniLM-L6-v2 bf16 (2 tensors)", "all-MiniLM-L6-v2 bf16 (2 tensors) steps=4"]
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in checkpoint.values())
    sizes = {}
    for note in payload["notes"]:
        if note.startswith("all-MiniLM-L6-v2 bf16"):
            label, _, ratio = note.partition(": 6,214 weights, packed ")
            sizes[label] = float(ratio.removesuffix("% of the original"))
    assert sizes["all-MiniLM-L6-v2 bf16 (2 tensors) steps=4"] > sizes["all-MiniLM-L6-v2 bf16 (2 tensors)"]


def _tiny_packed_checkpoint(tmp_path: Path) -> Path:
    """A packed checkpoint of a small bf16 and a small fp32 tensor (6,214 weights) at steps 8."""
    import torch
    from safetensors.torch import save_file

    import unweight

    (tmp_path / "src").mkdir()
    g = torch.Generator().manual_seed(3)
    save_file({"w": (torch.randn(96, 64, generator=g) * 0.02).to(torch.bfloat16), "b": torch.randn(70, generator=g)},
              str(tmp_path / "src" / "model.safetensors"))
    unweight.compress(tmp_path / "src", tmp_path / "packed", steps=8)
    return tmp_path / "packed"
