"""The Python API on synthetic checkpoints: compress, open/load, verify, decompress, inspect."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import unweight
from unweight.decompress import decompress
from unweight.errors import CorruptDataError, DestinationError, FormatError, UnweightError
from unweight.inspect import inspect
from unweight.verify import verify

from .synthetic import bits


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(bits(a[name]), bits(b[name])), name


def test_compress_load_matches_source(checkpoint, tmp_path):
    report = unweight.compress(checkpoint, tmp_path / "packed")
    assert_same_tensors(unweight.load(tmp_path / "packed"), load_file(checkpoint / "model.safetensors"))
    assert report.packed_bytes < report.original_bytes
    assert {t.name for t in report.tensors} == set(load_file(checkpoint / "model.safetensors"))


def test_non_weight_files_are_copied_verbatim(checkpoint, tmp_path):
    unweight.compress(checkpoint, tmp_path / "packed")
    for name in ("config.json", "tokenizer.json"):
        assert (tmp_path / "packed" / name).read_bytes() == (checkpoint / name).read_bytes()


def test_open_mirrors_safe_open(checkpoint, tmp_path):
    unweight.compress(checkpoint, tmp_path / "packed")
    source = load_file(checkpoint / "model.safetensors")
    with unweight.open(tmp_path / "packed") as f:
        assert sorted(f.keys()) == sorted(source)
        assert f.is_packed
        t = f.get_tensor("model.layers.0.mlp.up_proj.weight")
        assert torch.equal(bits(t), bits(source["model.layers.0.mlp.up_proj.weight"]))
        packed = f.get_packed("model.embed_tokens.weight")
        assert packed.nbytes < source["model.embed_tokens.weight"].numel() * 2
    with unweight.open(checkpoint) as f:  # a plain checkpoint reads through the same interface
        assert not f.is_packed
        assert torch.equal(bits(f.get_tensor("head.weight")), bits(source["head.weight"]))


def test_sharded_source_round_trip(sharded_checkpoint, tmp_path):
    unweight.compress(sharded_checkpoint, tmp_path / "packed", shard_bytes=20_000)
    manifest = json.loads((tmp_path / "packed" / "unweight.json").read_text())
    assert len(manifest["shards"]) > 1 and len(manifest["files"]) == 2
    decompress(tmp_path / "packed", tmp_path / "out")
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                  "model.safetensors.index.json"):
        assert sha256(tmp_path / "out" / shard) == sha256(sharded_checkpoint / shard)


def test_decompress_is_byte_identical(checkpoint, tmp_path):
    unweight.compress(checkpoint, tmp_path / "packed")
    decompress(tmp_path / "packed", tmp_path / "out")
    assert sha256(tmp_path / "out" / "model.safetensors") == sha256(checkpoint / "model.safetensors")


def test_single_file_source(checkpoint, tmp_path):
    unweight.compress(checkpoint / "model.safetensors", tmp_path / "packed")
    assert not (tmp_path / "packed" / "config.json").exists()
    verify(tmp_path / "packed", against=checkpoint / "model.safetensors")


def test_verify_against_source_and_sha(checkpoint, tmp_path):
    unweight.compress(checkpoint, tmp_path / "packed")
    report = verify(tmp_path / "packed", against=checkpoint)
    assert report.checked == len(load_file(checkpoint / "model.safetensors")) and not report.mismatches


def test_existing_destination_needs_force(checkpoint, tmp_path):
    dst = tmp_path / "packed"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(DestinationError, match="--force"):
        unweight.compress(checkpoint, dst)
    assert (dst / "keep.txt").read_text() == "mine"
    unweight.compress(checkpoint, dst, force=True)
    assert not (dst / "keep.txt").exists() and (dst / "unweight.json").exists()


def test_output_inside_source_is_refused(checkpoint):
    with pytest.raises(DestinationError, match="inside the source"):
        unweight.compress(checkpoint, checkpoint / "packed")
    assert not (checkpoint / "packed").exists()


def test_inspect_reports_every_tensor(checkpoint, tmp_path):
    unweight.compress(checkpoint, tmp_path / "packed")
    info = inspect(tmp_path / "packed")
    rows = {t.name: t for t in info.tensors}
    up = rows["model.layers.0.mlp.up_proj.weight"]
    assert up.encoding == "lanes" and 0 < up.entropy_bits < 8
    assert up.bound_bits_per_weight <= up.bits_per_weight < 16
    assert rows["position_ids"].encoding == "zstd"
    assert info.packed_bytes == sum(t.packed_bytes for t in info.tensors)


def test_hub_repo_id_from_local_cache(checkpoint, tmp_path, monkeypatch):
    """A repo id resolves through huggingface-hub's cache layout, offline."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for f in checkpoint.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    unweight.compress("acme/tiny", tmp_path / "packed")
    verify(tmp_path / "packed", against=checkpoint)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_checkpoints_of_single_exponent_codes_are_refused_with_a_way_out(checkpoint, tmp_path, version):
    """Versions 1 and 2 coded single exponents, version 3 refilled every code: this decoder reads none of
    them, and one error says to re-compress, before any tensor is touched."""
    unweight.compress(checkpoint, tmp_path / "packed")
    path = tmp_path / "packed" / "unweight.json"
    manifest = json.loads(path.read_text())
    assert manifest["format_version"] == 4
    manifest["format_version"] = version
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=f"format version {version} .*re-compress the source"):
        unweight.load(tmp_path / "packed")


def test_group_and_code_fields_are_checked(checkpoint, tmp_path):
    unweight.compress(checkpoint, tmp_path / "packed")
    path = tmp_path / "packed" / "unweight.json"
    manifest = json.loads(path.read_text())
    assert {t["group"] for t in manifest["tensors"].values() if t["encoding"] == "lanes"} >= {2}
    name = next(n for n, t in manifest["tensors"].items() if t["group"] == 2)
    for field, value, error, message in (("group", 4, CorruptDataError, "invalid group 4"),
                                         ("code", "not base64!", CorruptDataError, "its code is not base64"),
                                         ("code", "AAAA", CorruptDataError, "its code does not decompress")):
        bad = json.loads(json.dumps(manifest))
        bad["tensors"][name][field] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(error, match=message):
            unweight.load(tmp_path / "packed")


def test_compress_on_a_torch_device_writes_the_same_bytes(checkpoint, tmp_path):
    """compress(device=...) codes with lanes_torch (here on the CPU); the packed files are identical."""
    unweight.compress(checkpoint, tmp_path / "default")
    unweight.compress(checkpoint, tmp_path / "device", device="cpu")
    for path in sorted((tmp_path / "default").iterdir()):
        assert path.read_bytes() == (tmp_path / "device" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("device, message", [("cuda", "no CUDA device is available"), ("gpu0", "not a torch device")])
def test_compress_refuses_a_device_it_cannot_use(checkpoint, tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(UnweightError, match=message):
        unweight.compress(checkpoint, tmp_path / "p", device=device)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("held", [True, False], ids=["read-once", "read-per-chunk"])
def test_large_floats_with_too_many_pairs_are_stored_as_they_are(tmp_path, monkeypatch, held):
    """A float tensor of near-random bits large enough to be planned in tasks (and, not held, chunk by
    chunk): its pairs do not fit a 13-bit code, so it is stored raw, restored bit for bit and decompressed
    into identical files."""
    from safetensors.torch import save_file

    from unweight.codec import tensor

    monkeypatch.setattr(tensor, "TASK_BYTES", 64 * 1024)
    if not held:
        monkeypatch.setattr(tensor, "MAX_CACHED_BYTES", 0)
    src = tmp_path / "src"
    src.mkdir()
    noise = torch.randint(-(2**31), 2**31 - 1, (80_000,), generator=torch.Generator().manual_seed(0),
                          dtype=torch.int32).view(torch.float32)
    weights = (torch.randn(70_000, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    save_file({"noise": noise, "weights": weights}, src / "model.safetensors")
    unweight.compress(src, tmp_path / "packed")
    records = json.loads((tmp_path / "packed" / "unweight.json").read_text())["tensors"]
    assert records["noise"]["encoding"] == "raw" and records["weights"]["encoding"] == "lanes"
    assert_same_tensors(unweight.load(tmp_path / "packed"), load_file(src / "model.safetensors"))
    decompress(tmp_path / "packed", tmp_path / "restored")
    assert (tmp_path / "restored" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
