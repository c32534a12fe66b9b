"""Code tensors into their streams on worker threads, checking that every chunk decodes back.

A coded float tensor has three streams: `words` (uint16 lane words, as bytes),
`index` (int64 word offset of each block, as bytes) and `raw` (the raw planes).
Other dtypes become one `data` stream, zstd-compressed when that helps.

A tensor is coded in two passes. `plan` finds its code (from its symbol histogram) and the exact
size of each stream (`lanes.block_index` counts the words without writing them), so that where
every byte goes in a shard is known before the first is written; `code` then encodes, checks
and hands each piece to a writer at its final place (no spooling, no copies).

The work runs on a pool of threads (the numba kernels and hashlib release the GIL), in tasks of
about TASK_BYTES: a larger tensor is cut into several, smaller ones share one. Several tasks are
in flight at once, so the threads always have work, even while one finishes the last task of a
tensor or a core is busy with another process (numba's own parallel loops would wait for their
slowest thread there, and each costs a wake-up of the thread pool).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch
import zstandard

from ..errors import SourceError, VerificationError
from . import floats, huffman, lanes, lanes_torch

# Symbols (weight pairs) a lane decodes per block, for every tensor: 32 * 512 weights a block. The
# trade-off between size and GPU decode speed: a lane's end costs ~8 bits (its last, partly used word)
# and its share of the block index ~2, so longer lanes pack tighter (256: ~+0.12% of bf16); but a lane
# is decoded serially, so a launch takes at least the time of one lane, and the GPU decoder's
# parallelism is numel / (2 * steps) lanes (BENCHMARKS.md, "GPU decode").
DEFAULT_STEPS = 256


def choose_group(dtype: str, steps: int) -> int:
    """Neighbouring symbols a lane holds in a run (lanes.py): 2 for 16-bit floats, whose GPU decoder
    then reads four raw bytes and writes four weights with one access each; 1 for fp32, whose decoder
    does not use runs, and where the run does not divide steps."""
    return GROUP_16BIT if floats.LAYOUTS[dtype].width == 2 and steps % GROUP_16BIT == 0 else 1


GROUP_16BIT = 2
CHUNK_BLOCKS = 1024        # blocks read at once from a tensor too large to hold (16M weights)
MAX_CACHED_BYTES = 512 * 1024 * 1024  # tensors up to this size are held whole while planned
TASK_BYTES = 4 * 1024 * 1024  # source bytes a task covers (~10 ms): small enough to keep every thread busy
MAX_READ_AHEAD = 16        # tasks of a large tensor read ahead of the one that finishes first
ZSTD_LEVEL = 3


@dataclass
class EncodedTensor:
    """One float tensor coded in memory by `encode_float` (compress writes into shards instead)."""

    streams: dict[str, np.ndarray]  # role -> uint8 stream ("words", "index", "raw")
    sha256: str
    steps: int
    group: int
    code_lengths: np.ndarray
    entropy_bits: float

    @property
    def packed_bytes(self) -> int:
        return sum(a.size for a in self.streams.values())


class Code:
    """The prefix code of one tensor, from its symbol histogram (huffman.TooManySymbolsError where
    no code of MAX_CODE_LEN bits has room for its symbols: the tensor is then stored as it is)."""

    def __init__(self, hist: np.ndarray):
        self.hist = hist
        self.lengths = huffman.code_lengths(hist)
        self.codes = huffman.canonical_codes(self.lengths)
        self.entropy_bits = huffman.entropy_bits(hist) / 2  # a weight: half a symbol
        self._table: np.ndarray | None = None
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def table(self) -> np.ndarray:
        """The decode table (built once, on first use)."""
        if self._table is None:
            self._table = huffman.decode_table(self.lengths)
        return self._table

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes, lengths, the decode table as int32) as tensors on `device`, made once per device."""
        key = str(device)
        if key not in self._on_device:  # a race between threads only makes the same tensors twice
            self._on_device[key] = (torch.from_numpy(self.codes.astype(np.int64)).to(device),
                                    torch.from_numpy(self.lengths.astype(np.int64)).to(device),
                                    torch.from_numpy(self.table.view(np.int32)).to(device))
        return self._on_device[key]


@dataclass
class TensorPlan:
    """How a tensor is coded and the exact size of each of its streams, known before any is written."""

    dtype: str
    numel: int
    nbytes: int                       # of the source tensor
    encoding: str                     # "lanes", "zstd" or "raw"
    sizes: dict[str, int]             # stream role -> bytes, in stream order
    steps: int = 0
    group: int = 1                    # lanes: neighbouring weights in a lane's runs
    code: Code | None = None          # lanes: the prefix code
    index: np.ndarray | None = None   # lanes: the index stream, int64[num_blocks + 1]
    data: list[np.ndarray] | None = None  # the source bytes while they are kept for `code`: in the
                                          # pieces of its tasks (see TensorEncoder)

    @property
    def packed_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def kept_bytes(self) -> int:
        return sum(piece.size for piece in self.data) if self.data is not None else 0

    @property
    def code_lengths(self) -> np.ndarray | None:
        return self.code.lengths if self.code is not None else None

    @property
    def entropy_bits(self) -> float:
        return self.code.entropy_bits if self.code is not None else 0.0


ReadRange = Callable[[int, int], np.ndarray]     # (byte start, byte stop) -> uint8 array
Consume = Callable[[np.ndarray], None]           # sees every byte of the tensor once, in order
Write = Callable[[str, int, np.ndarray], None]   # (role, byte offset in that stream, uint8 bytes)


@dataclass
class TensorSource:
    """A tensor to plan: its dtype, its size, how to read it, and (coded floats) its block length and
    run length (`group`, 0: choose_group)."""

    dtype: str
    numel: int
    nbytes: int
    read: ReadRange
    steps: int = DEFAULT_STEPS
    group: int = 0

    @property
    def lanes_group(self) -> int:
        return self.group or choose_group(self.dtype, self.steps)

    @property
    def is_coded(self) -> bool:
        return self.dtype in floats.LAYOUTS and self.numel > 0


@dataclass
class TensorJob:
    """A planned tensor to code: where its streams go (`write`) and how errors name it."""

    plan: TensorPlan
    read: ReadRange
    write: Write
    where: str = "tensor"


class Pending:
    """The result of work on several threads: `result()` waits for all of it."""

    def __init__(self, futures: list[Future], value: Callable[[], object]):
        self._futures, self._value = futures, value

    def result(self):
        for f in self._futures:
            f.result()
        return self._value()


class TensorEncoder:
    """Plans and codes tensors on a pool of worker threads (a context manager).

    Work comes in units: one tensor larger than TASK_BYTES, cut into tasks of about that size, or
    a run of smaller ones, one task for all (a task per tensor would cost more in hand-offs
    between threads than it does in work). Units are submitted from one thread; several are in
    flight at once. `code` reads in that thread, so that the bytes reach the hashing threads in
    the order of the calls (`consume` feeds a file's SHA-256).
    """

    def __init__(self, threads: int | None = None, device: str | None = None):
        """`device`: code on that torch device (lanes_torch; on CUDA each chunk is checked with the
        Triton decoder) instead of with the numba coder on the CPU."""
        self.threads = threads or numba.get_num_threads()
        self.device = torch.device(device) if device is not None else None
        self._workers = ThreadPoolExecutor(self.threads, thread_name_prefix="unweight-code")
        # a large tensor has a thread of its own that waits on its tasks while planning it
        self._drivers = ThreadPoolExecutor(4, thread_name_prefix="unweight-tensor")
        # one thread for the SHA-256 of large tensors and one for `consume`: each keeps the order of the bytes
        self._tensor_hasher = ThreadPoolExecutor(1, thread_name_prefix="unweight-sha256")
        self._consumer = ThreadPoolExecutor(1, thread_name_prefix="unweight-consume")

    def __enter__(self) -> TensorEncoder:
        return self

    def __exit__(self, *exc) -> None:
        for pool in (self._drivers, self._workers, self._tensor_hasher, self._consumer):
            pool.shutdown(wait=True, cancel_futures=True)

    # pass 1

    def plan(self, sources: list[TensorSource]) -> Future:
        """Future list of the TensorPlans of a unit of tensors.

        The source bytes are kept in the plans (a tensor too large to hold, over MAX_CACHED_BYTES,
        is read twice by chunks instead, before this returns).
        """
        if len(sources) == 1 and _is_large(sources[0]):
            if sources[0].nbytes > MAX_CACHED_BYTES:
                return _done([self._plan_by_chunks(sources[0])])
            return self._drivers.submit(self._plan_large, sources[0])
        return self._workers.submit(_plan_small, [(s, s.read(0, s.nbytes)) for s in sources])

    def _plan_large(self, source: TensorSource) -> list[TensorPlan]:
        """A large tensor, read a task's piece at a time: each piece's histogram is on its way while
        the next is read."""
        layout, steps, group = floats.LAYOUTS[source.dtype], source.steps, source.lanes_group
        pieces, hists = [], []
        for a, b in _spans(source.numel, _task_weights(layout, steps)):
            pieces.append(source.read(a * layout.width, b * layout.width))
            hists.append(self._workers.submit(_histogram_task, layout, pieces[-1], 0, b - a))
        try:
            code = Code(sum(_results(hists)))
        except huffman.TooManySymbolsError:
            return [_plan_other(source.dtype, source.numel, np.concatenate(pieces), compress=False)]
        indices = self._map(_index_task, [(layout, code, piece, 0, piece.size // layout.width, steps, group)
                                          for piece in pieces])
        return [_lanes_plan(source.dtype, source.numel, steps, group, code, indices, pieces)]

    def _plan_by_chunks(self, source: TensorSource) -> TensorPlan:
        """A tensor too large to hold, a chunk at a time: all of its histogram, then its word counts."""
        layout, steps, group = floats.LAYOUTS[source.dtype], source.steps, source.lanes_group
        chunks = list(_spans(source.numel, CHUNK_BLOCKS * 2 * lanes.LANES * steps))

        def tasks(a: int, b: int) -> list[tuple[int, int]]:
            return list(_spans(b - a, _task_weights(layout, steps)))

        hist = np.zeros(huffman.NUM_SYMBOLS, dtype=np.int64)
        for a, b in chunks:
            data = source.read(a * layout.width, b * layout.width)
            hist += sum(self._map(_histogram_task, [(layout, data, c, d) for c, d in tasks(a, b)]))
        try:
            code = Code(hist)
        except huffman.TooManySymbolsError:  # stored as it is, read again whole when coded
            return TensorPlan(source.dtype, source.numel, source.nbytes, "raw", {"data": source.nbytes})
        indices = []
        for a, b in chunks:
            data = source.read(a * layout.width, b * layout.width)
            indices += self._map(_index_task, [(layout, code, data, c, d, steps, group) for c, d in tasks(a, b)])
        return _lanes_plan(source.dtype, source.numel, steps, group, code, indices, None)

    # pass 2

    def code(self, jobs: list[TensorJob], verify: bool = True, consume: Consume = lambda data: None) -> Pending:
        """Code a unit of planned tensors: every stream goes to its job's `write`, each chunk checked
        first unless not `verify`. Returns a Pending list of the sources' SHA-256s (hex); a source
        must not have changed since it was planned (SourceError otherwise)."""
        if len(jobs) == 1 and jobs[0].plan.encoding == "lanes" and _is_large(jobs[0].plan):
            return self._code_large(jobs[0], verify, consume)
        datas = []
        for job in jobs:
            datas.append(job.plan.data[0] if job.plan.data is not None else job.read(0, job.plan.nbytes))
            job.plan.data = None
        consumed = self._consumer.submit(_consume_all, consume, datas)
        coded = self._workers.submit(_code_small, jobs, datas, verify, self.device)
        return Pending([consumed, coded], coded.result)

    def _code_large(self, job: TensorJob, verify: bool, consume: Consume) -> Pending:
        plan = job.plan
        layout = floats.LAYOUTS[plan.dtype]
        job.write("index", 0, plan.index.view(np.uint8))
        span_weights = _task_weights(layout, plan.steps)
        digest = hashlib.sha256()
        tasks, hashed, consumed = [], [], []
        for k, (start, stop) in enumerate(_spans(plan.numel, span_weights)):
            data = plan.data[k] if plan.data is not None else job.read(start * layout.width, stop * layout.width)
            hashed.append(self._tensor_hasher.submit(digest.update, data))
            consumed.append(self._consumer.submit(consume, data))
            tasks.append(self._workers.submit(_code_span, plan, data, start, job.write, job.where, verify,
                                              self.device))
            if plan.data is None and len(tasks) > MAX_READ_AHEAD:
                tasks.pop(0).result()  # read again: only a few tasks' worth of it in memory at once
        plan.data = None
        # queued behind the tensor's chunks on its thread, this sees their results (errors included)
        sha256 = self._tensor_hasher.submit(Pending(hashed, digest.hexdigest).result)
        return Pending([*tasks, *consumed, sha256], lambda: [sha256.result()])

    def _map(self, fn: Callable, args: list[tuple]) -> list:
        """fn(*a) for each a on the worker threads; the results in order (the first error is raised)."""
        futures = [self._workers.submit(fn, *a) for a in args]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()


def encode_float(dtype: str, numel: int, read: ReadRange, steps: int = DEFAULT_STEPS,
                 where: str = "tensor", verify: bool = True, consume: Consume = lambda data: None,
                 group: int = 0) -> EncodedTensor:
    """Code one bf16/fp16/fp32 tensor into streams in memory (both passes, see TensorEncoder);
    `group` 0 takes choose_group's."""
    with TensorEncoder() as encoder:
        nbytes = numel * floats.LAYOUTS[dtype].width
        [plan] = encoder.plan([TensorSource(dtype, numel, nbytes, read, steps, group)]).result()
        streams = {role: np.empty(size, dtype=np.uint8) for role, size in plan.sizes.items()}

        def write(role: str, offset: int, data: np.ndarray) -> None:
            streams[role][offset : offset + data.size] = data

        [sha256] = encoder.code([TensorJob(plan, read, write, where)], verify, consume).result()
    return EncodedTensor(streams, sha256, steps, plan.group, plan.code_lengths, plan.entropy_bits)


def _zstd(data: np.ndarray) -> np.ndarray:
    return np.frombuffer(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data), dtype=np.uint8)


def _plan_small(sources: list[tuple[TensorSource, np.ndarray]]) -> list[TensorPlan]:
    """Plans of a run of small tensors (their bytes given), on one worker thread."""
    plans = []
    for source, data in sources:
        if not source.is_coded:
            plans.append(_plan_other(source.dtype, source.numel, data))
            continue
        layout = floats.LAYOUTS[source.dtype]
        try:
            code = Code(_histogram_task(layout, data, 0, source.numel))
        except huffman.TooManySymbolsError:
            plans.append(_plan_other(source.dtype, source.numel, data, compress=False))
            continue
        index = _index_task(layout, code, data, 0, source.numel, source.steps, source.lanes_group)
        plans.append(_lanes_plan(source.dtype, source.numel, source.steps, source.lanes_group, code, [index], [data]))
    return plans


def _code_small(jobs: list[TensorJob], datas: list[np.ndarray], verify: bool, device: torch.device | None) -> list[str]:
    """Code a run of small tensors (their bytes given) on one worker thread; their SHA-256s."""
    digests = []
    for job, data in zip(jobs, datas):
        if job.plan.encoding == "lanes":
            job.write("index", 0, job.plan.index.view(np.uint8))
            _code_span(job.plan, data, 0, job.write, job.where, verify, device)
        else:
            _code_other(job.plan, data, job.write, job.where)
        digests.append(hashlib.sha256(data).hexdigest())
    return digests


def _consume_all(consume: Consume, datas: list[np.ndarray]) -> None:
    for data in datas:
        consume(data)


def _plan_other(dtype: str, numel: int, data: np.ndarray, compress: bool = True) -> TensorPlan:
    """A tensor stored zstd-compressed where that is smaller (`compress`), else as it is: other dtypes,
    and floats whose symbols no code has room for (near-random bits, which zstd does not shrink)."""
    packed = _zstd(data) if compress else data
    if packed.size < data.size:
        return TensorPlan(dtype, numel, data.size, "zstd", {"data": packed.size}, data=[data])
    return TensorPlan(dtype, numel, data.size, "raw", {"data": data.size}, data=[data])


def _code_other(plan: TensorPlan, data: np.ndarray, write: Write, where: str) -> None:
    stored = _zstd(data) if plan.encoding == "zstd" else data
    if stored.size != plan.sizes["data"]:
        raise _changed(where)
    write("data", 0, stored)


def _lanes_plan(dtype: str, numel: int, steps: int, group: int, code: Code, indices: list[np.ndarray],
                data: list[np.ndarray] | None) -> TensorPlan:
    """The plan of a coded float tensor from the block indices of its spans (each from 0)."""
    index = _join_indices(indices)
    layout = floats.LAYOUTS[dtype]
    sizes = {"words": 2 * int(index[-1]), "index": index.nbytes, "raw": numel * layout.raw_planes}
    return TensorPlan(dtype, numel, numel * layout.width, "lanes", sizes, steps, group, code, index, data)


def _join_indices(indices: list[np.ndarray]) -> np.ndarray:
    """One index from those of consecutive spans, each counting words from 0."""
    parts, base = [], 0
    for index in indices:
        parts.append(index[:-1] + base)
        base += int(index[-1])
    parts.append(np.array([base], dtype=np.int64))
    return np.concatenate(parts)


def _histogram_task(layout, data, start, stop) -> np.ndarray:
    return floats.symbol_histogram(layout, data[start * layout.width : stop * layout.width])


def _index_task(layout, code: Code, data, start, stop, steps, group) -> np.ndarray:
    symbols = floats.pair_symbols(layout, data[start * layout.width : stop * layout.width])
    return lanes.block_index(symbols, code.lengths, steps, group=group)


def _code_span(plan: TensorPlan, data: np.ndarray, start: int, write: Write, where: str, verify: bool,
               device: torch.device | None = None) -> None:
    """Encode the weights in `data` (from weight `start`, whole blocks bar the tensor's last), check
    that they decode back, and write their words and raw planes. With a `device`, the words are
    coded there (and, on CUDA, checked there)."""
    layout = floats.LAYOUTS[plan.dtype]
    bits = data.view(np.uint16 if layout.width == 2 else np.uint32)
    first_block = start // (2 * lanes.LANES * plan.steps)
    raw = floats.raw_planes(layout, data)
    try:
        if device is None:
            words, index = lanes.encode(floats.pair_symbols(layout, data), plan.code.codes, plan.code.lengths,
                                        plan.steps, group=plan.group)
        else:
            words, index = _encode_on(device, plan, data, raw, verify, f"{where} (chunk from weight {start})")
            verify = verify and device.type != "cuda"  # checked on the device already
    except lanes.UncodedSymbolError:  # a symbol the plan's histogram did not have
        raise _changed(where) from None
    planned = plan.index[first_block : first_block + index.size]
    if not np.array_equal(index, planned - planned[0]):
        raise _changed(where)
    if verify:
        _check_chunk(words, index, plan.code, plan.steps, plan.group, raw, bits, where, start)
    write("words", 2 * int(planned[0]), words.view(np.uint8))
    for plane in range(layout.raw_planes):
        write("raw", plane * plan.numel + start, raw[plane * bits.size : (plane + 1) * bits.size])


def _encode_on(device: torch.device, plan: TensorPlan, data: np.ndarray, raw: np.ndarray, verify: bool,
               where: str) -> tuple[np.ndarray, np.ndarray]:
    """lanes_torch.encode of a chunk on `device`: (words uint16, index int64) back on the CPU. On CUDA
    with `verify`, the chunk is decoded there by the Triton kernel and compared bit for bit."""
    layout = floats.LAYOUTS[plan.dtype]
    view = torch.int16 if layout.width == 2 else torch.int32
    bits = torch.from_numpy(data).to(device).view(view)
    codes, lengths, table = plan.code.on(device)
    words, index = lanes_torch.encode(lanes_torch.pair_symbols(bits, layout.symbol_shift), codes, lengths, plan.steps,
                                      plan.group)
    if verify and device.type == "cuda":
        from ..kernels.decode import OUT_DTYPES, decode_lanes  # lazy: Triton is needed only here
        out = torch.empty(bits.numel(), dtype=OUT_DTYPES[plan.dtype], device=device)
        decode_lanes(words.view(torch.uint8), index.view(torch.uint8), table, torch.from_numpy(raw).to(device), out,
                     numel_total=bits.numel(), steps=plan.steps, dtype=plan.dtype, group=plan.group)
        if not torch.equal(out.view(view), bits):
            raise VerificationError(f"{where}: does not decode back to its original bits")
    return words.cpu().numpy().view(np.uint16), index.cpu().numpy()


def _check_chunk(words, index, code: Code, steps, group, raw, expected, where, start) -> None:
    """Decode the chunk just encoded and compare it, in the decoder, bit for bit with its source."""
    lanes.decode_into(words, index, code.table, raw, expected.size, steps, expected,
                      where=f"{where} (chunk from weight {start})", check=True, parallel=False, group=group)


def _changed(where: str) -> SourceError:
    return SourceError(f"{where}: changed while it was being compressed (it differs from its first reading); "
                       f"compress a checkpoint that nothing writes to")


def _results(futures: list[Future]) -> list:
    return [f.result() for f in futures]


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _is_large(tensor: TensorSource | TensorPlan) -> bool:
    """Whether a tensor is a unit of work of its own, cut into tasks (a coded float over TASK_BYTES)."""
    if isinstance(tensor, TensorPlan):
        return tensor.encoding == "lanes" and tensor.nbytes > TASK_BYTES
    return tensor.is_coded and tensor.nbytes > TASK_BYTES


def _task_weights(layout: floats.FloatLayout, steps: int) -> int:
    """Weights of a task of a large tensor: whole blocks, about TASK_BYTES of source."""
    block = 2 * lanes.LANES * steps
    return max(1, TASK_BYTES // (layout.width * block)) * block
