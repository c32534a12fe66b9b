"""The `unweight` command line, end to end in subprocesses, and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unweight_cli.unweight_app import main

UNWEIGHT = [sys.executable, "-c", "from unweight_cli.unweight_app import main; main()"]


def run(*args, limit_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Run `unweight ARGS` in a subprocess, optionally with a cap on file sizes (a full disk)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([*UNWEIGHT, *map(str, args)], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if limit_file_bytes else None)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the real `main()` in-process (importing torch once, not per call): exit code and output."""
    def invoke(*args) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["unweight", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return invoke


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, one `Error:` line naming what and where, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "Error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture
def packed(checkpoint, tmp_path, cli) -> Path:
    result = cli("compress", checkpoint, "-o", tmp_path / "packed")
    assert result.returncode == 0, result.stderr
    return tmp_path / "packed"


def test_compress_prints_savings_table(checkpoint, tmp_path, cli):
    result = cli("compress", checkpoint, "-o", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    for column in ("original", "packed", "savings", "bits/weight", "entropy bound"):
        assert column in result.stdout
    assert (tmp_path / "p" / "unweight.json").exists()


def test_verify_and_decompress_commands(packed, checkpoint, tmp_path, cli):
    result = cli("verify", packed, "--against", checkpoint)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    result = cli("decompress", packed, "-o", tmp_path / "restored")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "restored" / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()


def test_inspect_table_and_json(packed, cli):
    table = cli("inspect", packed)
    assert table.returncode == 0 and "model.embed_tokens.weight" in table.stdout
    body = json.loads(cli("inspect", packed, "--json").stdout)
    assert body["packed_bytes"] < body["original_bytes"]
    assert {t["name"] for t in body["tensors"]} >= {"model.embed_tokens.weight", "position_ids"}


def test_help_has_examples(cli):
    result = cli("compress", "--help")
    assert result.returncode == 0 and "unweight compress" in result.stdout


def test_missing_source():
    assert_clean_error(run("compress", "/no/such/dir", "-o", "/tmp/never"), "/no/such/dir", "no such file")


def test_pickle_checkpoint_is_refused_with_hint(tmp_path, cli):
    src = tmp_path / "pickled"
    src.mkdir()
    torch.save({"w": torch.ones(2)}, src / "pytorch_model.bin")
    assert_clean_error(cli("compress", src, "-o", tmp_path / "p"), "pytorch_model.bin", "safe_serialization=True")
    assert not (tmp_path / "p").exists()


def test_unsupported_dtype(tmp_path, cli):
    src = tmp_path / "odd.safetensors"
    header = json.dumps({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    src.write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    assert_clean_error(cli("compress", src, "-o", tmp_path / "p"), "'w'", "'F4'")


@pytest.mark.parametrize("declared, offsets, expected", [
    (10**15, None, "header declares"),
    (None, [0, 1 << 40], "needs"),
    (None, [0, 8000], "truncated file or offsets past the end"),
])
def test_hostile_headers(tmp_path, declared, offsets, expected, cli):
    src = tmp_path / "hostile.safetensors"
    shape = [(offsets[1] - offsets[0]) // 2] if offsets else [4]
    header = json.dumps({"w": {"dtype": "BF16", "shape": shape, "data_offsets": offsets or [0, 8]}}).encode()
    if offsets == [0, 1 << 40]:
        header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": offsets}}).encode()
    src.write_bytes(struct.pack("<Q", declared or len(header)) + header + b"\0" * 8)
    assert_clean_error(cli("compress", src, "-o", tmp_path / "p"), "hostile.safetensors", expected)


def test_truncated_shard(packed, cli):
    shard = packed / "packed-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert_clean_error(cli("verify", packed), "packed-00001.safetensors", "truncated")


def test_bit_flipped_shard_names_the_tensor(packed, cli):
    shard = packed / "packed-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x10  # inside the last stream
    shard.write_bytes(bytes(data))
    result = cli("verify", packed)
    assert_clean_error(result, "model.safetensors")
    assert result.returncode == 3
    assert "SHA-256" in result.stderr or "does not decode" in result.stderr


def test_missing_shard(packed, cli):
    (packed / "packed-00001.safetensors").unlink()
    assert_clean_error(cli("verify", packed), "packed-00001.safetensors is missing")


def test_unknown_format_version(packed, tmp_path, cli):
    manifest = json.loads((packed / "unweight.json").read_text())
    manifest["format_version"] = 99
    (packed / "unweight.json").write_text(json.dumps(manifest))
    assert_clean_error(cli("verify", packed), "format version 99")
    assert_clean_error(cli("decompress", packed, "-o", tmp_path / "r"), "format version 99")


def test_manifest_paths_cannot_escape(packed, tmp_path, cli):
    manifest = json.loads((packed / "unweight.json").read_text())
    manifest["copied"] = ["../../etc/passwd"]
    (packed / "unweight.json").write_text(json.dumps(manifest))
    assert_clean_error(cli("decompress", packed, "-o", tmp_path / "r"), "outside the checkpoint")


def test_existing_destination_is_refused(checkpoint, tmp_path, cli):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x").write_text("x")
    assert_clean_error(cli("compress", checkpoint, "-o", tmp_path / "p"), "--force")
    assert (tmp_path / "p" / "x").read_text() == "x"


def test_unwritable_destination(checkpoint, tmp_path, cli):
    (tmp_path / "file").write_text("not a directory")
    assert_clean_error(cli("compress", checkpoint, "-o", tmp_path / "file" / "p"), "cannot create")


def test_full_disk_leaves_nothing_behind(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = run("compress", checkpoint, "-o", out / "p", limit_file_bytes=4096)
    assert_clean_error(result, "cannot write")
    assert list(out.iterdir()) == []  # no half-written directory that looks valid


def test_nothing_is_written_into_the_source(checkpoint, tmp_path, cli):
    before = sorted(p.name for p in checkpoint.iterdir())
    cli("compress", checkpoint, "-o", tmp_path / "p")
    cli("compress", checkpoint, "-o", checkpoint / "inside")
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_wrong_dtype_shard_stream_is_refused(packed, cli):
    """A stream span past the end of its shard tensor is named as missing, before any read."""
    manifest = json.loads((packed / "unweight.json").read_text())
    manifest["tensors"]["model.embed_tokens.weight"]["spans"]["words"][1] += 10**12
    (packed / "unweight.json").write_text(json.dumps(manifest))
    assert_clean_error(cli("verify", packed), "model.embed_tokens.weight", "words stream", "missing")


def test_source_with_both_pickle_and_safetensors_skips_pickle(checkpoint, tmp_path, cli):
    torch.save({"w": torch.ones(2)}, checkpoint / "pytorch_model.bin")
    result = cli("compress", checkpoint, "-o", tmp_path / "p")
    assert result.returncode == 0 and "skipped pickle file pytorch_model.bin" in result.stdout
    assert not (tmp_path / "p" / "pytorch_model.bin").exists()


def test_fp16_only_checkpoint(tmp_path, cli):
    src = tmp_path / "half.safetensors"
    save_file({"w": torch.randn(100, 10).half()}, src)
    assert cli("compress", src, "-o", tmp_path / "p").returncode == 0
    assert cli("verify", tmp_path / "p", "--against", src).returncode == 0


def test_compress_steps_option(checkpoint, tmp_path, cli):
    result = cli("compress", checkpoint, "-o", tmp_path / "p", "--steps", "8")
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "p" / "unweight.json").read_text())["tensors"].values()
    assert {r["steps"] for r in records if r["encoding"] == "lanes"} == {8}
    assert {r["group"] for r in records if r["encoding"] == "lanes" and r["dtype"] != "F32"} == {2}
    assert cli("verify", tmp_path / "p", "--against", checkpoint).returncode == 0
    assert_clean_error(cli("compress", checkpoint, "-o", tmp_path / "q", "--steps", "0"),
                       "steps must be between 1 and 65536, got 0")


def test_compress_device_option(checkpoint, tmp_path, cli):
    result = cli("compress", checkpoint, "-o", tmp_path / "p", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert cli("verify", tmp_path / "p", "--against", checkpoint).returncode == 0
    assert_clean_error(cli("compress", checkpoint, "-o", tmp_path / "q", "--device", "tpu9"), "not a torch device")
