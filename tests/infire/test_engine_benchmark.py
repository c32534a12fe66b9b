"""benchmarks/engine_throughput.py runs end to end on the CPU with a toy model."""

from __future__ import annotations

import json
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
