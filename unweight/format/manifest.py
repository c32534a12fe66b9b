"""The manifest of a packed checkpoint (unweight.json): what every stream is and how to undo it.

Readers check `format` and `format_version` first and refuse what they do not know.
Per tensor it records the SHA-256 of the original bytes; per source file the exact
original header, so `decompress` rebuilds byte-identical files.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import zstandard

from ..errors import FormatError
from .safetensors_file import DTYPE_SIZES, MAX_HEADER_BYTES

MANIFEST_NAME = "unweight.json"
FORMAT_NAME = "unweight-packed"
FORMAT_VERSION = 4          # written; 4: refills in rounds of two codes (codec/lanes.py); symbols are exponent
                            # pairs (codec/huffman.py), codes up to 13 bits
READ_VERSIONS = (4,)        # read
OLD_VERSIONS = (1, 2, 3)    # refused with their own message: 1, 2 coded single exponents, 3 refilled every code
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
ENCODINGS = ("lanes", "zstd", "raw")
STREAM_ROLES = {"lanes": ("words", "index", "raw"), "zstd": ("data",), "raw": ("data",)}
# a shard holds one U8 tensor per role, the streams of all its tensors concatenated
SHARD_ROLES = ("words", "index", "raw", "data")


@dataclass
class TensorRecord:
    name: str                       # the key in the manifest, not repeated in its body
    dtype: str                      # safetensors dtype name
    shape: list[int]
    sha256: str                     # of the original bytes
    encoding: str                   # one of ENCODINGS
    shard: str                      # shard file holding its streams
    spans: dict[str, list[int]]     # role -> [begin, end) in the shard tensor of that role
    steps: int = 0                  # lanes encoding: steps a block
    group: int = 1                  # lanes encoding: neighbouring weights a lane holds in a run
    code: str = ""                  # lanes encoding: the code (codec/huffman.py, describe), base64
    entropy_bits: float = 0.0       # lanes encoding: exponent-symbol entropy, bits a weight

    @property
    def original_bytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    @property
    def packed_bytes(self) -> int:
        return sum(end - begin for begin, end in self.spans.values())

    def to_json(self) -> dict:
        # fields as they are (asdict would deep-copy every record: slow for thousands of tensors)
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


@dataclass
class SourceFile:
    name: str                       # path relative to the checkpoint root
    size: int
    sha256: str
    header_zstd: str                # exact header bytes (JSON + padding), zstd-compressed, base64
    tensors: list[str]              # in data order

    @property
    def header_bytes(self) -> bytes:
        return zstandard.ZstdDecompressor().decompress(base64.b64decode(self.header_zstd),
                                                       max_output_size=MAX_HEADER_BYTES)

    @staticmethod
    def pack_header(header: bytes) -> str:
        return base64.b64encode(zstandard.ZstdCompressor(level=19).compress(header)).decode()


@dataclass
class Manifest:
    files: list[SourceFile] = field(default_factory=list)
    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)   # non-weight files copied verbatim
    shards: list[str] = field(default_factory=list)
    created_by: str = ""

    def to_json(self) -> str:
        body = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created_by": self.created_by,
            "copied": self.copied,
            "shards": self.shards,
            "files": [{f.name: getattr(file, f.name) for f in fields(file)} for file in self.files],
            "tensors": {name: t.to_json() for name, t in self.tensors.items()},
        }
        return json.dumps(body, separators=(",", ":"))

    def save(self, directory: Path) -> None:
        (Path(directory) / MANIFEST_NAME).write_text(self.to_json())


def load_manifest(directory: Path) -> Manifest:
    """Read and validate the manifest of a packed directory."""
    path = Path(directory) / MANIFEST_NAME
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise FormatError(f"{path}: manifest is {size} bytes (limit {MAX_MANIFEST_BYTES})")
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FormatError(f"{directory}: not a packed checkpoint ({MANIFEST_NAME} is missing)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: manifest is unreadable ({e})") from e
    _check_version(path, body)
    try:
        return Manifest(
            files=[SourceFile(**f) for f in body["files"] if _safe_name(f["name"])],
            tensors={name: _tensor_record(name, t) for name, t in body["tensors"].items()},
            copied=[_safe_name(c) for c in body["copied"]],
            shards=[_safe_name(s) for s in body["shards"]],
            created_by=str(body.get("created_by", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: manifest is malformed ({type(e).__name__}: {e})") from e


def _check_version(path: Path, body) -> None:
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not an unweight manifest (format field is "
                          f"{body.get('format') if isinstance(body, dict) else None!r}, expected {FORMAT_NAME!r})")
    version = body.get("format_version")
    if version in OLD_VERSIONS and not isinstance(version, bool):
        raise FormatError(f"{path}: format version {version} has a stream layout this unweight does not read "
                          f"(it writes and reads version {FORMAT_VERSION}: codes of exponent pairs, refilled in "
                          f"rounds of two); re-compress the source with `unweight compress`")
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise FormatError(f"{path}: format version {version!r} is not supported by this unweight "
                          f"(reads versions {', '.join(map(str, READ_VERSIONS))}); upgrade unweight or re-compress "
                          f"the source")


def _safe_name(name: str) -> str:
    """A file name from the manifest must stay inside the packed directory."""
    parts = Path(name).parts
    if not isinstance(name, str) or not parts or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"file name {name!r} points outside the checkpoint directory")
    return name


def _tensor_record(name: str, raw: dict) -> TensorRecord:
    record = TensorRecord(name=name, **raw)
    _safe_name(record.shard)
    if record.encoding not in ENCODINGS:
        raise ValueError(f"tensor {name!r} has unknown encoding {record.encoding!r}")
    if record.dtype not in DTYPE_SIZES:
        raise ValueError(f"tensor {name!r} has unknown dtype {record.dtype!r}")
    if any(not isinstance(d, int) or d < 0 for d in record.shape):
        raise ValueError(f"tensor {name!r} has invalid shape {record.shape!r}")
    if set(record.spans) != set(STREAM_ROLES[record.encoding]) or not all(
            isinstance(b, int) and isinstance(e, int) and 0 <= b <= e for b, e in record.spans.values()):
        raise ValueError(f"tensor {name!r} has invalid stream spans {record.spans!r}")
    return record
