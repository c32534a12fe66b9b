"""ModelRunner: one rank's model shard, its KV cache and the sampler; turns a
scheduled batch into input tensors, runs the model and samples.

On CUDA, decode steps replay CUDA graphs (cuda_graph.py) captured at start-up;
prefill and mixed steps, and everything on CPU, run eagerly.

Tensor/pipeline parallelism will run one ModelRunner per rank (tp_size/tp_rank
are passed to the model); today the engine creates a single runner.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from infire.engine.attention import AttentionBatch
from infire.engine.config import DEFAULT_MAX_MODEL_LEN_CAP, EngineConfig
from infire.engine.cuda_graph import DecodeGraphs, DecodeInputs
from infire.engine.kv_cache import KVCache, kv_block_bytes
from infire.engine.sampler import Sampler
from infire.engine.scheduler import ScheduledSequence
from infire.errors import ConfigError, InfireError
from infire.model.config import ModelConfig
from infire.model.loader import load_model, random_model

log = logging.getLogger(__name__)


@dataclass
class StepInputs:
    """The flattened tokens of a step and the rows whose logits are needed."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    batch: AttentionBatch
    logits_indices: torch.Tensor  # [N] int64, rows of the tokens that sample


class ModelRunner:
    """Runs steps of the model on one device."""

    def __init__(self, config: EngineConfig, model_config: ModelConfig, tp_size: int = 1, tp_rank: int = 0) -> None:
        self.config = config
        self.model_config = model_config
        self.device = config.torch_device
        self.block_size = config.block_size
        self.attention_backend = config.resolved_attention_backend()
        self.tp_size = tp_size
        dtype = config.torch_dtype(model_config.torch_dtype)
        if config.load_format == "dummy":
            self.loaded = random_model(model_config, self.device, dtype, config.seed, tp_size, tp_rank)
        else:
            self.loaded = load_model(model_config, config.model, self.device, dtype, config.weights, tp_size, tp_rank)
        self.model = self.loaded.model
        self.dtype = dtype
        self.ops_backend = self._resolve_ops_backend()
        self.model.set_ops_backend(self.ops_backend)
        self.sampler = Sampler(self.device, config.seed)
        self.num_kv_blocks = config.num_kv_blocks or self._auto_num_kv_blocks()
        # one block more than the block manager hands out: the padding rows of graph batches use it
        self.pad_block = self.num_kv_blocks
        self.kv_cache = KVCache(model_config, self.num_kv_blocks + 1, self.block_size, dtype, self.device, tp_size)
        self.kv_cache.bind(self.model)
        log.info("KV cache: %d blocks of %d tokens (%.1f MiB)", self.num_kv_blocks, self.block_size,
                 self.kv_cache.nbytes / 2**20)
        self.graphs = self._capture_graphs() if self._uses_cuda_graphs() else None

    def _uses_cuda_graphs(self) -> bool:
        if not self.config.uses_cuda_graphs:
            return False
        if self.attention_backend != "triton":
            log.info("attention_backend=%r reads host lists, so decode steps run without CUDA graphs",
                     self.attention_backend)
            return False
        return True

    def _resolve_ops_backend(self) -> str:
        """The configured ops backend; "auto" drops to torch ops if the fused kernels fail their check."""
        backend = self.config.resolved_ops_backend()
        if backend != "triton" or self.device.type != "cuda":
            return backend
        from infire.model.triton_ops import check_fused_ops

        problem = check_fused_ops(self.model_config, self.device, self.dtype, self.tp_size)
        if problem is None:
            return backend
        if self.config.ops_backend == "triton":
            raise InfireError(f"ops_backend='triton': {problem}; set ops_backend='torch' to run without them")
        log.warning("fused Triton ops disabled, using torch ops: %s", problem)
        return "torch"

    def _capture_graphs(self) -> DecodeGraphs:
        sizes = self.config.graph_batch_sizes
        max_model_len = min(self.model_config.max_model_len, self.config.max_model_len or DEFAULT_MAX_MODEL_LEN_CAP,
                            self.num_kv_blocks * self.block_size)
        inputs = DecodeInputs(sizes[-1], -(-max_model_len // self.block_size), self.block_size, self.pad_block,
                              self.device)
        graphs = DecodeGraphs(self.model, inputs, sizes, self.model_config.vocab_size, self.attention_backend)
        try:
            graphs.capture()
        except Exception as exc:
            raise InfireError(f"CUDA graph capture of decode steps failed ({exc!r}); "
                              "set enforce_eager=True to run without graphs") from exc
        return graphs

    @contextmanager
    def eager_mode(self) -> Iterator[None]:
        """Run every step eagerly inside the block (to compare against graph replay)."""
        graphs, self.graphs = self.graphs, None
        try:
            yield
        finally:
            self.graphs = graphs

    # ------------------------------------------------------------------ memory

    def _auto_num_kv_blocks(self) -> int:
        block_bytes = kv_block_bytes(self.model_config, self.block_size, self.dtype, self.tp_size)
        if self.device.type == "cuda":
            budget = self._cuda_kv_budget()
        else:
            budget = self.config.kv_cache_bytes
        num_blocks = budget // block_bytes - 1  # less the padding block
        if num_blocks < 1:
            raise ConfigError(
                f"the KV cache budget ({budget} bytes) holds fewer than 2 blocks of {block_bytes} bytes (one is "
                "kept for padding); raise gpu_memory_utilization/kv_cache_bytes, or set num_kv_blocks"
            )
        return num_blocks

    def _cuda_kv_budget(self) -> int:
        """What gpu_memory_utilization leaves after weights and a worst-case step's activations."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._profile_step()
        free, total = torch.cuda.mem_get_info(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        current = torch.cuda.memory_allocated(self.device)
        return int(total * self.config.gpu_memory_utilization) - (total - free) - (peak - current)

    @torch.inference_mode()
    def _profile_step(self) -> None:
        """Run one step of max_num_batched_tokens through a throwaway cache to find peak memory."""
        num_tokens = min(self.config.max_num_batched_tokens, self.model_config.max_model_len)
        num_blocks = -(-num_tokens // self.block_size)
        cache = KVCache(self.model_config, num_blocks, self.block_size, self.dtype, self.device, self.tp_size)
        cache.bind(self.model)
        batch = self._batch([num_tokens], [num_tokens], [list(range(num_blocks))], list(range(num_tokens)))
        ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        hidden = self.model(ids, torch.arange(num_tokens, device=self.device), batch)
        num_rows = min(num_tokens, self.config.max_num_seqs)
        self.model.compute_logits(hidden[:num_rows]).softmax(-1)
        del cache, hidden
        torch.cuda.synchronize(self.device)

    def weights_memory_bytes(self) -> int:
        return self.loaded.weights_memory_bytes()

    # ------------------------------------------------------------------ steps

    def prepare(self, scheduled: list[ScheduledSequence], all_logits: bool = False) -> StepInputs:
        """Flatten the scheduled tokens (prefill chunks and decodes alike) into one batch."""
        input_ids, positions, slots, logits_rows = [], [], [], []
        query_lens, seq_lens = [], []
        for item in scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            first_row = len(input_ids)
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            slots += [seq.block_table[p // self.block_size] * self.block_size + p % self.block_size
                      for p in range(start, end)]
            query_lens.append(item.num_new_tokens)
            seq_lens.append(end)
            if all_logits:
                logits_rows += range(first_row, len(input_ids))
            elif item.samples:
                logits_rows.append(len(input_ids) - 1)
        batch = self._batch(query_lens, seq_lens, [s.seq.block_table for s in scheduled], slots)
        return StepInputs(self._to_device(input_ids, torch.long), self._to_device(positions, torch.long),
                          batch, self._to_device(logits_rows, torch.long))

    def _batch(self, query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]],
               slots: list[int]) -> AttentionBatch:
        width = max(len(t) for t in block_tables)
        padded = [t + [0] * (width - len(t)) for t in block_tables]
        starts = [0]
        for n in query_lens:
            starts.append(starts[-1] + n)
        return AttentionBatch(
            slot_mapping=self._to_device(slots, torch.long),
            query_start_loc=self._to_device(starts, torch.int32),
            seq_lens=self._to_device(seq_lens, torch.int32),
            block_tables=self._to_device(padded, torch.int32),
            max_query_len=max(query_lens),
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
            backend=self.attention_backend,
        )

    def _to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        pinned = self.device.type == "cuda"
        return torch.tensor(values, dtype=dtype, pin_memory=pinned).to(self.device, non_blocking=pinned)

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSequence]) -> list[int | None]:
        """One forward pass; returns a token per scheduled sequence (None: prefill not done)."""
        if self.graphs is not None and self.graphs.can_run(scheduled):
            logits = self.graphs.run(scheduled)  # [N, vocab]: every sequence samples
            seqs = [item.seq for item in scheduled]
            return self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs])
        inputs = self.prepare(scheduled)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.batch)  # [T, hidden]
        sampling = [item for item in scheduled if item.samples]
        if not sampling:
            return [None] * len(scheduled)
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [N, vocab]
        tokens = iter(self.sampler(logits, [s.seq.params for s in sampling], [s.seq.generator for s in sampling]))
        return [next(tokens) if item.samples else None for item in scheduled]

    @torch.inference_mode()
    def run_logits(self, scheduled: list[ScheduledSequence]) -> torch.Tensor:
        """One forward pass returning the logits [T, vocab] of every scheduled token."""
        inputs = self.prepare(scheduled, all_logits=True)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.batch)
        return self.model.compute_logits(hidden)
