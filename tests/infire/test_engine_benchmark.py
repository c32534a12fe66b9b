"""benchmarks/engine_throughput.py and benchmarks/gemv.py run end to end on the CPU (a toy model; the interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_throughput.py"


@pytest.mark.slow
def test_throughput_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "engine.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--repeats", "1", "--json", str(out),
         "--out-md", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    engines = {e["engine"]: e for e in results["engines"]}
    assert set(engines) == {"infire (dense)", "transformers generate"}
    for figures in engines.values():
        assert set(figures["decode_tokens_per_s"]) == {"1", "4"} and figures["ttft_ms"] > 0
    assert results["copy_bandwidth_bytes_per_s"] > 0
    assert "| infire (dense) |" in result.stdout and "Engine: decode throughput" in (tmp_path / "BENCHMARKS.md").read_text()


@pytest.mark.slow
def test_throughput_benchmark_packs_and_compares_compressed_weights(tmp_path):
    out = tmp_path / "engine.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--repeats", "1", "--weights", "both",
         "--compressed-layers", "1", "--no-hf", "--no-ttft", "--scratch", str(tmp_path / "scratch"),
         "--json", str(out), "--out-md", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    summary = results["summary"]
    assert set(summary["engines"]) == {"infire (dense)", "infire (dense, 1-layer model)", "infire (compressed)"}
    compressed = summary["compressed"]
    assert compressed["layers"] == 1 and compressed["batch1_slowdown"] > 0
    assert compressed["weights_bytes_compressed"] > 0
    full = compressed["full_model_derived"]  # 2-layer model projected from the 1 packed layer
    assert full["num_layers"] == 2 and full["dense_total_bytes"] == results["weight_bytes"]
    assert full["total_bytes"] == full["dense_other_bytes"] + full["packed_layers_bytes"] + full["decode_buffers_bytes"]
    assert "Full 2-layer model in compressed mode (derived" in result.stdout
    statuses = {check["name"]: check["status"] for check in results["checks"]}
    assert statuses["compressed == dense, batch 5 padded to 8"] == "PASS" and summary["checks_passed"]
    assert "Self-check (3 passed, 0 failed, 2 skipped): all passed." in result.stdout
    assert not any((tmp_path / "scratch").iterdir())  # the saved and packed checkpoints are removed


GEMV_SCRIPT = SCRIPT.with_name("gemv.py")


@pytest.mark.slow
def test_gemv_benchmark_checks_and_times_the_kernel_under_interpreter(tmp_path):
    out = tmp_path / "gemv.json"
    result = subprocess.run(
        [sys.executable, str(GEMV_SCRIPT), "--quick", "--device", "cpu", "--json", str(out),
         "--out-md", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [c["name"] for c in results["cases"]] == ["qkv_proj", "down_proj"]
    assert all(c["triton_ms"] > 0 and c["torch_ms"] > 0 and len(c["sweep_ms"]) == 2 for c in results["cases"])
    assert "Batch-1 linear layers" in (tmp_path / "BENCHMARKS.md").read_text()
