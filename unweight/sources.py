"""Find the files of a source checkpoint: a local directory, one .safetensors file, or a hub repo id."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_NAME = "model.safetensors.index.json"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVERT_HINT = ("convert it to safetensors first, e.g. with transformers: "
                "AutoModel.from_pretrained(src).save_pretrained(dst, safe_serialization=True)")


@dataclass(frozen=True)
class SourceCheckpoint:
    root: Path                 # directory the relative names below are taken from
    weight_files: list[str]    # .safetensors files, relative to root
    other_files: list[str]     # copied verbatim
    skipped: list[str]         # pickle weights ignored because safetensors exist beside them
    single_file: bool = False  # SRC named one .safetensors file, not a directory


def resolve_source(src: str | Path) -> SourceCheckpoint:
    """Resolve SRC to its files; raises SourceError with what to do when it cannot be used."""
    path = Path(src).expanduser()
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            hint = CONVERT_HINT if path.suffix in PICKLE_SUFFIXES else "give a .safetensors file or a checkpoint directory"
            raise SourceError(f"{path}: not a .safetensors file; {hint}")
        return SourceCheckpoint(path.parent, [path.name], [], [], single_file=True)
    if REPO_ID.match(str(src)) and not str(src).startswith((".", "~")):
        return _from_directory(_download(str(src)))
    raise SourceError(f"{src}: no such file or directory (and not a hub repo id like 'org/name')")


def _from_directory(root: Path) -> SourceCheckpoint:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    weights = _weight_files(root, files)
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if not weights:
        if pickles:
            raise SourceError(f"{root}: holds pickle checkpoints ({', '.join(pickles[:3])}), which unweight "
                              f"refuses to load (unpickling runs code); {CONVERT_HINT}")
        raise SourceError(f"{root}: no .safetensors weights found")
    others = [f for f in files if f not in weights and f not in pickles]
    return SourceCheckpoint(root, weights, others, pickles)


def _weight_files(root: Path, files: list[str]) -> list[str]:
    index = root / INDEX_NAME
    if not index.is_file():
        return [f for f in files if f.endswith(".safetensors")]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"{index}: unreadable shard index ({e})") from e
    missing = [s for s in shards if not (root / s).is_file()]
    if missing:
        raise SourceError(f"{root}: shard {missing[0]} named in {INDEX_NAME} is missing "
                          f"({len(missing)} of {len(shards)} missing)")
    extra = [f for f in files if f.endswith(".safetensors") and f not in shards]
    return shards + extra


def _download(repo_id: str) -> Path:
    """Resolve a hub repo id through huggingface-hub (the local cache when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=None))
    except LocalEntryNotFoundError as e:
        raise SourceError(f"{repo_id}: not in the local hub cache and the hub cannot be reached "
                          f"(download it first, or give a local path)") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise SourceError(f"{repo_id}: cannot be fetched from the hub ({e})") from e
