"""How compress cuts its work (plans, units of tensors, tasks, direct shard writes): the output
must not depend on it, and every failure on the way must stop compress with nothing left behind."""

from __future__ import annotations

import hashlib
import importlib
import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import unweight
from unweight.codec import floats, tensor
from unweight.decompress import decompress
from unweight.errors import SourceError, VerificationError
from unweight.format.safetensors_file import U8TensorWriter, build_header

from .synthetic import bits

compress_module = importlib.import_module("unweight.compress")  # the package exports the function by that name


def files(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def cut_small(monkeypatch, task_bytes: int = 512) -> None:
    """Every knob that cuts the work set small: many units, tasks, read runs and flushes."""
    for module in (tensor, compress_module):
        monkeypatch.setattr(module, "TASK_BYTES", task_bytes)
    monkeypatch.setattr(compress_module, "READ_BATCH_BYTES", 3000)
    monkeypatch.setattr(compress_module, "KEEP_BYTES", 20_000)
    monkeypatch.setattr(compress_module, "IN_FLIGHT_BYTES", 10_000)
    monkeypatch.setattr(compress_module, "MAX_IN_FLIGHT", 3)
    monkeypatch.setattr(tensor, "CHUNK_BLOCKS", 2)
    monkeypatch.setattr(tensor, "MAX_CACHED_BYTES", 30_000)


@pytest.mark.parametrize("shard_bytes", [20_000, 2 * 1024**3], ids=["shards", "one-shard"])
def test_output_does_not_depend_on_how_the_work_is_cut(sharded_checkpoint, tmp_path, monkeypatch, shard_bytes):
    unweight.compress(sharded_checkpoint, tmp_path / "default", shard_bytes=shard_bytes, steps=8)
    cut_small(monkeypatch)
    unweight.compress(sharded_checkpoint, tmp_path / "cut", shard_bytes=shard_bytes, steps=8)
    assert files(tmp_path / "cut") == files(tmp_path / "default")
    decompress(tmp_path / "cut", tmp_path / "out")  # file SHA-256s fed across units and files, in order
    for name in files(sharded_checkpoint):
        assert (tmp_path / "out" / name).read_bytes() == (sharded_checkpoint / name).read_bytes()


def test_one_thread_gives_the_same_output(checkpoint, tmp_path, monkeypatch):
    unweight.compress(checkpoint, tmp_path / "two")
    monkeypatch.setattr(tensor.numba, "get_num_threads", lambda: 1)
    unweight.compress(checkpoint, tmp_path / "one")
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_mixed_sizes_and_dtypes_round_trip(tmp_path, monkeypatch):
    """Large tensors (tasks, held or read by chunks) beside runs of small ones and other dtypes."""
    g = torch.Generator().manual_seed(3)
    state = {
        "huge.bf16": (torch.randn(40_000, generator=g) * 0.02).to(torch.bfloat16),  # over MAX_CACHED_BYTES
        "large.f32": torch.randn(3000, generator=g),
        "small.f16": (torch.randn(100, generator=g) * 0.1).half(),
        "ids.i64": torch.arange(300),
        "empty.bf16": torch.zeros(0, dtype=torch.bfloat16),
        "one.bf16": torch.tensor([1.5], dtype=torch.bfloat16),
        "large.bf16": (torch.randn(9000, generator=g) * 0.05).to(torch.bfloat16),
    }
    save_file(state, tmp_path / "model.safetensors")
    cut_small(monkeypatch)
    report = unweight.compress(tmp_path / "model.safetensors", tmp_path / "packed", steps=4)
    loaded = unweight.load(tmp_path / "packed")
    for name, t in state.items():
        assert loaded[name].dtype == t.dtype and torch.equal(bits(loaded[name]), bits(t)), name
    manifest = json.loads((tmp_path / "packed" / "unweight.json").read_text())
    for name, t in state.items():
        assert manifest["tensors"][name]["sha256"] == hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
    assert report.packed_bytes == sum((tmp_path / "packed" / n).stat().st_size for n in files(tmp_path / "packed"))


def test_a_source_that_changes_while_compressed_is_refused(checkpoint, tmp_path, monkeypatch):
    """Tensors are read twice (plan, then code) unless kept in between; the second reading must match."""
    monkeypatch.setattr(compress_module, "KEEP_BYTES", 0)
    read_range = compress_module.read_range

    def changed(header, entry, start=0, stop=None):
        data = read_range(header, entry, start, stop).copy()
        if entry.name == "model.embed_tokens.weight":
            data.view(np.uint16)[::7] ^= 0x4000  # exponents the planned code has no code for
        return data

    monkeypatch.setattr(compress_module, "read_range", changed)
    for verify in (True, False):
        with pytest.raises(SourceError, match="changed while it was being compressed"):
            unweight.compress(checkpoint, tmp_path / "packed", verify=verify)
        assert not (tmp_path / "packed").exists() and not list(tmp_path.glob(".packed.tmp-*"))


def test_verification_stops_a_wrong_encoding(checkpoint, tmp_path, monkeypatch):
    """The check decodes what was encoded and compares it with the source: a raw plane that
    does not match the source fails compress, and nothing is left behind."""
    raw_planes = floats.raw_planes

    def broken(layout, data):
        raw = raw_planes(layout, data).copy()
        raw[raw.size // 2] ^= 0x01
        return raw

    monkeypatch.setattr(floats, "raw_planes", broken)
    with pytest.raises(VerificationError, match="does not decode back to its original bits"):
        unweight.compress(checkpoint, tmp_path / "packed")
    assert not (tmp_path / "packed").exists() and not list(tmp_path.glob(".packed.tmp-*"))
    unweight.compress(checkpoint, tmp_path / "packed", verify=False)  # without the check it goes through


def test_tensor_writer_places_bytes_written_in_any_order(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"words": rng.integers(0, 256, 5000, dtype=np.uint8), "index": np.zeros(0, dtype=np.uint8),
               "raw": rng.integers(0, 256, 12_345, dtype=np.uint8)}
    writer = U8TensorWriter(tmp_path / "t.safetensors", [(k, v.size) for k, v in tensors.items()], flush_bytes=1000)
    pieces = [(name, start, data[start : start + 700]) for name, data in tensors.items()
              for start in range(0, data.size, 700)]
    rng.shuffle(pieces)
    threads = [threading.Thread(target=lambda part=pieces[i::3]: [writer.write(*p) for p in part]) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    header = build_header([(k, "U8", (v.size,), v.size) for k, v in tensors.items()], None)
    expected = struct.pack("<Q", len(header)) + header + b"".join(v.tobytes() for v in tensors.values())
    assert (tmp_path / "t.safetensors").read_bytes() == expected
    assert {k: v.numpy().tobytes() for k, v in load_file(tmp_path / "t.safetensors").items()} == \
        {k: v.tobytes() for k, v in tensors.items()}


def test_tensor_writer_refuses_stray_and_missing_bytes(tmp_path):
    writer = U8TensorWriter(tmp_path / "t.safetensors", [("a", 10), ("b", 5)])
    with pytest.raises(ValueError, match="outside tensor 'b'"):
        writer.write("b", 3, np.zeros(3, dtype=np.uint8))
    writer.write("a", 0, np.zeros(10, dtype=np.uint8))
    with pytest.raises(OSError, match="10 bytes of tensor data written, expected 15"):
        writer.close()
    with pytest.raises(OSError, match="after it was closed"):  # a late task cannot reach a reused descriptor
        writer.write("b", 0, np.zeros(5, dtype=np.uint8))
