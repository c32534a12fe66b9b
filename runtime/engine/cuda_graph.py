"""Decode steps as CUDA graphs: static input buffers, batch-size buckets, capture and replay.

A decode step (one new token for each of N sequences) is padded to the smallest
captured batch size B >= N and replays that size's graph, which reads its inputs
from static device buffers and writes the logits of all B rows to a static output.
The B - N padding rows are one-token dummy sequences that live in the KV cache's
padding block, a block the block manager never hands out: they write their K/V
there and attend only to it, so they touch no real sequence's cache.

Everything inside a graph reads per-step facts from device tensors (the Triton
attention path); the torch attention path reads host lists and is never captured.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from infire.engine.attention import AttentionBatch
from infire.engine.scheduler import ScheduledSequence
from infire.errors import InfireError

log = logging.getLogger(__name__)


class DecodeInputs:
    """The static buffers a captured decode step reads, refilled before each replay.

    Host staging buffers (pinned on CUDA) mirror the device ones, so that a step's
    inputs move in two copies: one int64 buffer (token ids, positions, slots) and one
    int32 buffer (context lengths, then block tables).
    """

    def __init__(self, max_batch: int, max_blocks: int, block_size: int, pad_block: int,
                 device: torch.device) -> None:
        self.max_batch = max_batch
        self.max_blocks = max_blocks  # block table width: blocks of the longest sequence
        self.block_size = block_size
        self.pad_block = pad_block
        self.pad_slot = pad_block * block_size
        pinned = device.type == "cuda"
        self.host_long = torch.zeros(3, max_batch, dtype=torch.long, pin_memory=pinned)  # [ids; positions; slots]
        self.host_int = torch.zeros(max_batch * (1 + max_blocks), dtype=torch.int32, pin_memory=pinned)
        self.device_long = torch.zeros(3, max_batch, dtype=torch.long, device=device)
        self.device_int = torch.zeros(max_batch * (1 + max_blocks), dtype=torch.int32, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.device_long  # [max_batch] each
        self.seq_lens = self.device_int[:max_batch]  # [max_batch] int32
        self.block_tables = self.device_int[max_batch:].view(max_batch, max_blocks)  # [max_batch, max_blocks]
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)  # one token each
        self._longs = self.host_long.numpy()
        self._lens = self.host_int[:max_batch].numpy()
        self._tables = self.host_int[max_batch:].view(max_batch, max_blocks).numpy()
        # the previous step's copies have read the staging buffers once this event has passed
        self._copied = torch.cuda.Event() if pinned else None
        self._pad_longs = np.array([[0], [0], [self.pad_slot]])  # [ids; positions; slots] of a padding row
        # per row: (the sequence's block table list, number of its blocks staged), None if padding
        self._row_tables: list[tuple[list[int], int] | None] = [None] * max_batch
        self.fill([], max_batch)

    def fits(self, scheduled: list[ScheduledSequence]) -> bool:
        return len(scheduled) <= self.max_batch and all(
            len(item.seq.block_table) <= self.max_blocks for item in scheduled)

    def fill(self, scheduled: list[ScheduledSequence], num_rows: int) -> None:
        """Write the decode step of `scheduled` into rows [0, N), padding into rows [N, num_rows)."""
        if self._copied is not None:
            self._copied.synchronize()
        num_seqs = len(scheduled)
        seqs = [item.seq for item in scheduled]
        positions = [seq.num_computed_tokens for seq in seqs]  # of the one new token each
        block_size = self.block_size
        self._longs[0, :num_seqs] = [seq.token_ids[p] for seq, p in zip(seqs, positions)]
        self._longs[1, :num_seqs] = positions
        self._longs[2, :num_seqs] = [seq.block_table[p // block_size] * block_size + p % block_size
                                     for seq, p in zip(seqs, positions)]
        self._lens[:num_seqs] = self._longs[1, :num_seqs] + 1
        for row, seq in enumerate(seqs):
            self._write_table(row, seq.block_table)
        self._longs[:, num_seqs:num_rows] = self._pad_longs
        self._lens[num_seqs:num_rows] = 1
        self._tables[num_seqs:num_rows, 0] = self.pad_block
        self._row_tables[num_seqs:num_rows] = [None] * max(0, num_rows - num_seqs)
        num_ints = self.max_batch + num_rows * self.max_blocks  # context lengths, then num_rows table rows
        self.device_long.copy_(self.host_long, non_blocking=True)
        self.device_int[:num_ints].copy_(self.host_int[:num_ints], non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def _write_table(self, row: int, table: list[int]) -> None:
        """Copy only the blocks a row's staged table lacks: a sequence's table list only grows
        while it holds its blocks (freeing them replaces the list), so the same list object of a
        greater length means new blocks at the end."""
        staged, num_staged = self._row_tables[row] or (None, 0)
        if staged is not table:
            num_staged = 0
        if num_staged != len(table):
            self._tables[row, num_staged:len(table)] = table[num_staged:]
            self._row_tables[row] = (table, len(table))

    def batch(self, num_rows: int, backend: str) -> AttentionBatch:
        """The first num_rows rows as an attention batch; host lists only for the torch path."""
        host_lists = backend == "torch"
        return AttentionBatch(
            slot_mapping=self.slot_mapping[:num_rows],
            query_start_loc=self.query_start_loc[:num_rows + 1],
            seq_lens=self.seq_lens[:num_rows],
            block_tables=self.block_tables[:num_rows],
            max_query_len=1,
            query_lens_cpu=[1] * num_rows if host_lists else None,
            seq_lens_cpu=self._lens[:num_rows].tolist() if host_lists else None,
            backend=backend,
        )


class DecodeGraphs:
    """Decode steps padded to batch-size buckets, each replayed from a CUDA graph once captured.

    Until `capture()` (and on CPU, where nothing is captured) a step runs the same padded
    forward pass eagerly, which is what the tests exercise.
    """

    def __init__(self, model: torch.nn.Module, inputs: DecodeInputs, batch_sizes: tuple[int, ...],
                 vocab_size: int, backend: str) -> None:
        self.model = model
        self.inputs = inputs
        self.batch_sizes = tuple(sorted(batch_sizes))
        if self.batch_sizes[-1] > inputs.max_batch:
            raise InfireError(f"batch size {self.batch_sizes[-1]} exceeds the static buffers' {inputs.max_batch} rows")
        self.backend = backend
        device = inputs.device_long.device
        self.logits = torch.empty(self.batch_sizes[-1], vocab_size, dtype=torch.float32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def can_run(self, scheduled: list[ScheduledSequence]) -> bool:
        """True for a decode step: every sequence adds its one last token and samples."""
        return (len(scheduled) <= self.batch_sizes[-1] and self.inputs.fits(scheduled)
                and all(item.num_new_tokens == 1 and item.samples for item in scheduled))

    def bucket(self, num_seqs: int) -> int:
        return next(size for size in self.batch_sizes if size >= num_seqs)

    def run(self, scheduled: list[ScheduledSequence]) -> torch.Tensor:
        """Logits [N, vocab] (float32) of the step's N sequences; valid until the next run."""
        num_rows = self.bucket(len(scheduled))
        self.inputs.fill(scheduled, num_rows)
        graph = self.graphs.get(num_rows)
        if graph is not None:
            graph.replay()
        else:
            self._forward(num_rows)
        return self.logits[:len(scheduled)]

    def _forward(self, num_rows: int) -> None:
        inputs = self.inputs
        batch = inputs.batch(num_rows, self.backend)
        hidden = self.model(inputs.input_ids[:num_rows], inputs.positions[:num_rows], batch)  # [B, hidden]
        self.logits[:num_rows].copy_(self.model.compute_logits(hidden))

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture one graph per batch size, largest first, all in one memory pool.

        Each size runs once eagerly first (compiling kernels for its shapes, building lazy
        device state such as decode tables), on all-padding inputs.
        """
        if self.backend != "triton":
            raise InfireError("CUDA graphs need attention_backend='triton' (the torch path reads host lists); "
                              "set enforce_eager=True to run without graphs")
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        self.inputs.fill([], self.inputs.max_batch)
        for num_rows in reversed(self.batch_sizes):
            self._forward(num_rows)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._forward(num_rows)
            self.graphs[num_rows] = graph
        torch.cuda.synchronize()
        log.info("captured %d decode CUDA graphs (batch sizes %s) in %.1f s", len(self.graphs),
                 ",".join(map(str, self.batch_sizes)), time.perf_counter() - started)
