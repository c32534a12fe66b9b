"""A tensor in packed form, on any device, and its decoding (CPU reference or Triton kernel).

`PackedTensor.decode_into(out)` is the entry point the engine calls every layer:
with the Triton backend it launches on the current (or given) CUDA stream and
neither allocates nor synchronizes with the host.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import zstandard

from .codec import floats, huffman, lanes
from .errors import CorruptDataError, UnweightError

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
}
BACKENDS = ("cpu", "triton")
BACKEND_ENV = "UNWEIGHT_BACKEND"


@dataclass
class PackedTensor:
    name: str
    dtype: str                          # safetensors dtype name of the original
    shape: tuple[int, ...]
    encoding: str                       # "lanes", "zstd" or "raw"
    streams: dict[str, torch.Tensor]    # role -> uint8 tensor
    steps: int = 0
    code_lengths: np.ndarray | None = None
    group: int = 1                      # lanes: neighbouring weights a lane holds in a run
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the packed form occupies."""
        return sum(s.numel() for s in self.streams.values())

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def device(self) -> torch.device:
        return next(iter(self.streams.values())).device

    def to(self, device) -> "PackedTensor":
        """A copy whose streams live on `device` (the decode table follows lazily)."""
        return replace(self, streams={k: v.to(device) for k, v in self.streams.items()}, _tables={})

    def decode(self, rows: tuple[int, int] | None = None, device=None, backend: str | None = None) -> torch.Tensor:
        """Decode the tensor (or rows [r0, r1) of its first dimension) into a new tensor."""
        shape = self.shape if rows is None else (rows[1] - rows[0], *self.shape[1:])
        out = torch.empty(shape, dtype=self.torch_dtype, device=device or self.device)
        self.decode_into(out, rows=rows, backend=backend)
        return out

    def decode_into(self, out: torch.Tensor, rows: tuple[int, int] | None = None,
                    backend: str | None = None, stream=None) -> torch.Tensor:
        """Decode into a preallocated contiguous tensor of the right dtype and size."""
        start, stop = self._element_range(rows)
        if out.dtype != self.torch_dtype or out.numel() != stop - start or not out.is_contiguous():
            raise UnweightError(f"{self.name}: output must be a contiguous {self.torch_dtype} tensor of "
                                f"{stop - start} elements, got {out.dtype} {tuple(out.shape)}")
        backend = resolve_backend(backend, out.device)
        if out.numel() == 0:
            return out
        if backend == "triton" and self.encoding == "lanes":
            self._decode_triton(out, start, stream)
        elif self.encoding == "lanes":
            self._decode_cpu_into(out, start)
        else:
            # copy bytes, not values: a value copy would normalize e.g. bool bytes and hide corruption
            width = out.element_size()
            host = torch.from_numpy(np.require(self._plain_bytes()[start * width : stop * width], requirements="W"))
            out.view(-1).view(torch.uint8).copy_(host)
        return out

    def _element_range(self, rows) -> tuple[int, int]:
        if rows is None:
            return 0, self.numel
        r0, r1 = rows
        if not self.shape or not 0 <= r0 <= r1 <= self.shape[0]:
            raise UnweightError(f"{self.name}: row range {rows} is outside shape {self.shape}")
        row = math.prod(self.shape[1:])
        return r0 * row, r1 * row

    def decode_table(self, device) -> torch.Tensor:
        """The decoder's int32[TABLE_SIZE] lookup table (huffman.decode_table) on `device`, built once per device."""
        key = str(device)
        if key not in self._tables:
            self._tables[key] = torch.from_numpy(huffman.decode_table(self.code_lengths).view(np.int32)).to(device)
        return self._tables[key]

    def _decode_triton(self, out: torch.Tensor, start: int, stream) -> None:
        from .kernels.decode import decode_lanes  # lazy: Triton is optional
        with torch.cuda.stream(stream) if stream is not None else _nullcontext():
            decode_lanes(self.streams["words"], self.streams["index"], self.decode_table(out.device),
                         self.streams["raw"], out, numel_total=self.numel, steps=self.steps, group=self.group,
                         dtype=self.dtype, start=start)

    def _decode_cpu_into(self, out: torch.Tensor, start: int) -> None:
        """Decode elements [start, start + out.numel()) on the CPU, straight into `out`'s memory."""
        layout = floats.LAYOUTS[self.dtype]
        target = out if out.device.type == "cpu" else torch.empty_like(out, device="cpu")
        bits = target.view(-1).view(torch.int16 if layout.width == 2 else torch.int32).numpy()
        lanes.decode_into(self.streams["words"].cpu().numpy().view(np.uint16),
                          self.streams["index"].cpu().numpy().view(np.int64),
                          huffman.decode_table(self.code_lengths), self.streams["raw"].cpu().numpy(),
                          self.numel, self.steps, bits.view(np.uint16 if layout.width == 2 else np.uint32),
                          lo=start, where=f"tensor {self.name!r}", group=self.group)
        if target is not out:
            out.copy_(target)

    def _plain_bytes(self) -> np.ndarray:
        data = self.streams["data"].cpu().numpy()
        if self.encoding == "raw":
            return data
        expected = self.numel * torch.empty(0, dtype=self.torch_dtype).element_size()
        try:
            out = zstandard.ZstdDecompressor().decompress(data.tobytes(), max_output_size=expected)
        except zstandard.ZstdError as e:
            raise CorruptDataError(f"tensor {self.name!r}: zstd stream does not decompress ({e})") from e
        if len(out) != expected:
            raise CorruptDataError(f"tensor {self.name!r}: zstd stream holds {len(out)} bytes, expected {expected}")
        return np.frombuffer(out, dtype=np.uint8)


def tensor_from_bytes(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """View little-endian bytes as a tensor of a safetensors dtype (copying only read-only input)."""
    if data.size == 0:
        return torch.empty(shape, dtype=TORCH_DTYPES[dtype])
    return torch.from_numpy(np.require(data, requirements="W")).view(TORCH_DTYPES[dtype]).reshape(shape)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Explicit argument, else $UNWEIGHT_BACKEND, else Triton for CUDA tensors and CPU otherwise."""
    choice = backend or os.environ.get(BACKEND_ENV) or ("triton" if device.type == "cuda" else "cpu")
    if choice not in BACKENDS:
        raise UnweightError(f"unknown decode backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    if choice == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UnweightError("the triton backend needs a CUDA device (or TRITON_INTERPRET=1 to run it on the CPU)")
    return choice
