"""`infire bench` against a real server: the report (table and JSON) and its failure modes."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from infire.bench.runner import arrival_delays
from tests.infire.frontend_fixtures import ThreadServer, free_port, tiny_model_dir
from unweight_cli.infire_app import app

runner = CliRunner()
LATENCY_FIELDS = {"mean_ms", "p50_ms", "p90_ms", "p99_ms"}


@pytest.fixture(scope="module")
def server():
    with ThreadServer(tiny_model_dir(), "tiny", num_kv_blocks=32) as server:
        yield server


def bench(*args: str):
    return runner.invoke(app, ["bench", *args])


def test_bench_reports_table_and_json(server, tmp_path) -> None:
    path = tmp_path / "bench.json"
    result = bench("--url", server.base_url, "--num-requests", "6", "--request-rate", "50", "--input-len", "8",
                   "--output-len", "6", "--ignore-eos", "--json", str(path), "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "Request throughput" in result.stdout and "TTFT" in result.stdout
    report = json.loads(path.read_text())
    assert (report["model"], report["num_requests"], report["completed"], report["failed"]) == ("tiny", 6, 6, 0)
    assert report["total_output_tokens"] == 36 and report["total_input_tokens"] >= 6 * 8
    for name in ("request_throughput", "input_throughput", "output_throughput", "total_token_throughput", "duration_s"):
        assert report[name] > 0, name
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats = report[name]
        assert set(stats) == LATENCY_FIELDS and 0 < stats["p50_ms"] <= stats["p99_ms"], name
    assert report["config"]["request_rate"] == 50 and report["errors"] == []


def test_bench_all_at_once_with_a_concurrency_limit(server) -> None:
    result = bench("--url", f"{server.base_url}/v1", "--model", "tiny", "--num-requests", "4", "--max-concurrency", "2",
                   "--input-len", "4", "--output-len", "3", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["completed"] == 4 and report["config"]["request_rate"] == "inf"


def test_bench_counts_failed_requests(server) -> None:
    result = bench("--url", server.base_url, "--model", "no-such-model", "--num-requests", "2", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["completed"], report["failed"]) == (0, 2)
    assert "HTTP 404" in report["errors"][0]


def test_bench_without_a_server_is_a_one_line_error() -> None:
    result = bench("--url", f"http://127.0.0.1:{free_port()}", "--num-requests", "1")
    assert result.exit_code == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.output


def test_poisson_arrivals_have_the_requested_rate() -> None:
    delays = arrival_delays(random.Random(0), 4001, request_rate=20.0)
    assert delays[0] == 0.0 and abs(sum(delays) / 4000 - 1 / 20) < 0.005
    assert arrival_delays(random.Random(0), 3, float("inf")) == [0.0, 0.0, 0.0]
