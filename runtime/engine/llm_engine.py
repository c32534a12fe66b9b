"""LLMEngine: takes token-id requests, runs scheduler steps, returns token deltas.

Text, detokenization and stop strings belong to the frontend; the engine sees
token ids only.
"""

from __future__ import annotations

import logging

import torch

from infire.engine.block_manager import BlockManager
from infire.engine.config import DEFAULT_MAX_MODEL_LEN_CAP, EngineConfig
from infire.engine.model_runner import ModelRunner
from infire.engine.outputs import EngineStats, RequestOutput
from infire.engine.sampling_params import SamplingParams
from infire.engine.scheduler import ScheduledSequence, Scheduler
from infire.engine.sequence import Sequence
from infire.errors import ConfigError, EngineDeadError, InfireError, InvalidRequestError
from infire.model.config import ModelConfig

log = logging.getLogger(__name__)


class LLMEngine:
    """Continuous-batching generation over a paged KV cache, one step at a time."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        model_config = ModelConfig.from_pretrained(config.model)
        self.runner = ModelRunner(config, model_config)
        self.model_config = model_config.with_max_model_len(self._max_model_len(model_config))
        self.block_manager = BlockManager(self.runner.num_kv_blocks, config.block_size)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   self.model_config.max_model_len, self.model_config.eos_token_ids)
        self._request_ids: set[str] = set()
        self._aborted: list[RequestOutput] = []
        self._dead: BaseException | None = None
        log.info("engine ready: %s weights on %s (%s), %d KV blocks, max_model_len %d", config.weights,
                 self.runner.device, self.runner.dtype, self.runner.num_kv_blocks, self.model_config.max_model_len)

    def _max_model_len(self, model_config: ModelConfig) -> int:
        capacity = self.runner.num_kv_blocks * self.config.block_size
        if self.config.max_model_len is None:
            return min(model_config.max_model_len, DEFAULT_MAX_MODEL_LEN_CAP, capacity)
        limit = min(model_config.max_model_len, capacity)
        if self.config.max_model_len > limit:
            raise ConfigError(
                f"max_model_len={self.config.max_model_len} is invalid; allowed: <= {limit} "
                f"(model limit {model_config.max_model_len}, KV cache holds {capacity} tokens)"
            )
        return self.config.max_model_len

    # ------------------------------------------------------------------ requests

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped after an error in a step: {self._dead!r}")
        self._check_request(request_id, prompt_token_ids, params)
        generator = self.runner.sampler.new_generator(params.seed) if params.seed is not None else None
        self.scheduler.add(Sequence(request_id, prompt_token_ids, params, generator))
        self._request_ids.add(request_id)

    def _check_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"params must be SamplingParams, got {type(params).__name__}")
        if not isinstance(request_id, str):
            raise InvalidRequestError(f"request_id must be a str, got {type(request_id).__name__}")
        if request_id in self._request_ids:
            raise InvalidRequestError(f"request_id {request_id!r} is already in use")
        if not prompt_token_ids:
            raise InvalidRequestError(f"request {request_id!r}: the prompt is empty")
        max_len = self.model_config.max_model_len
        if len(prompt_token_ids) > max_len:
            raise InvalidRequestError(
                f"request {request_id!r}: the prompt has {len(prompt_token_ids)} tokens; "
                f"allowed: at most max_model_len={max_len}"
            )
        vocab = self.model_config.vocab_size
        bad = next((t for t in prompt_token_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(
                f"request {request_id!r}: token id {bad!r} is outside the vocabulary [0, {vocab})"
            )

    def abort_request(self, request_id: str) -> None:
        seq = self.scheduler.abort(request_id)
        if seq is not None:
            self._request_ids.discard(request_id)
            self._aborted.append(RequestOutput(request_id, [], True, "abort", seq.num_prompt_tokens,
                                               seq.num_output_tokens))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._aborted)

    # ------------------------------------------------------------------ steps

    def step(self) -> list[RequestOutput]:
        """Run one scheduler iteration; aborted requests report once, in the next step.

        If the model fails mid-step (e.g. out of device memory) the scheduler state no
        longer matches the KV cache: the engine is dead and every later step raises
        EngineDeadError.
        """
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped after an error in a step: {self._dead!r}")
        outputs, self._aborted = self._aborted, []
        scheduled = self.scheduler.schedule()
        if scheduled:
            try:
                sampled = self.runner.run(scheduled)
            except Exception as exc:
                self._dead = exc
                raise EngineDeadError(f"a model step failed, the engine cannot continue: {exc!r}") from exc
            outputs += self.scheduler.update(scheduled, sampled)
        for out in outputs:
            if out.finished:
                self._request_ids.discard(out.request_id)
        return outputs

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_kv_blocks_used=bm.num_used_blocks,
            num_kv_blocks_total=bm.num_blocks,
            kv_cache_usage=bm.usage,
            num_preemptions=self.scheduler.num_preemptions,
        )

    def weights_memory_bytes(self) -> int:
        return self.runner.weights_memory_bytes()

    def compute_logits(self, prompt_token_ids: list[int]) -> torch.Tensor:
        """Logits [T, vocab] (float32, on CPU) of every prompt position, through the serving path
        (paged KV cache, chunked by max_num_batched_tokens)."""
        self._check_request("compute_logits", prompt_token_ids, SamplingParams())
        seq = Sequence("compute_logits", prompt_token_ids, SamplingParams())
        if not self.block_manager.can_allocate(seq, seq.num_tokens):
            raise InfireError(f"compute_logits: {seq.num_tokens} tokens need more KV blocks than are free")
        self.block_manager.allocate(seq, seq.num_tokens)
        try:
            return torch.cat(list(self._prefill_logits(seq))).cpu()
        finally:
            self.block_manager.free(seq)

    def _prefill_logits(self, seq: Sequence):
        while seq.num_uncomputed_tokens:
            item = ScheduledSequence(seq, min(seq.num_uncomputed_tokens, self.config.max_num_batched_tokens))
            yield self.runner.run_logits([item])
            seq.num_computed_tokens += item.num_new_tokens

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Convenience for scripts and tests: run prompts to completion, return their output ids."""
        ids = [f"generate-{i}" for i in range(len(prompts))]
        for request_id, prompt in zip(ids, prompts):
            self.add_request(request_id, prompt, params)
        tokens: dict[str, list[int]] = {request_id: [] for request_id in ids}
        while self.has_unfinished_requests():
            for out in self.step():
                if out.request_id in tokens:
                    tokens[out.request_id] += out.new_token_ids
        return [tokens[request_id] for request_id in ids]
