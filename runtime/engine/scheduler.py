"""Scheduler: continuous batching with chunked prefill and preemption by recompute.

Every step, running sequences (oldest first) get their next tokens: one for a
decode, the rest of the prompt (or as much as the token budget allows) for a
prefill. Waiting sequences then join with what budget is left. When KV blocks
run out, the newest running sequence is preempted: its blocks are freed and it
is recomputed from its tokens when it is admitted again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from infire.engine.block_manager import BlockManager
from infire.engine.outputs import RequestOutput
from infire.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    """A sequence and how many of its uncomputed tokens run in this step."""

    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this step reaches the sequence's last token, so a new token is drawn."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


class Scheduler:
    """Owns the waiting queue, the running batch and the block manager."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, eos_token_ids: tuple[int, ...]) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> Sequence | None:
        """Remove the request wherever it is and free its blocks; None if unknown."""
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    self._finish(seq, "abort")
                    return seq
        return None

    def schedule(self) -> list[ScheduledSequence]:
        budget = self.max_num_batched_tokens
        scheduled, preempted = self._schedule_running(budget)
        budget -= sum(s.num_new_tokens for s in scheduled)
        if not preempted:
            scheduled += self._schedule_waiting(budget)
        return scheduled

    def _schedule_running(self, budget: int) -> tuple[list[ScheduledSequence], bool]:
        scheduled: list[ScheduledSequence] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed_tokens, budget)
            while not self.block_manager.can_allocate(seq, seq.num_computed_tokens + num_new):
                victim = self.running.pop()  # the newest
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    return scheduled, preempted
            self.block_manager.allocate(seq, seq.num_computed_tokens + num_new)
            scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
            i += 1
        return scheduled, preempted

    def _schedule_waiting(self, budget: int) -> list[ScheduledSequence]:
        scheduled: list[ScheduledSequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.can_allocate(seq, seq.num_computed_tokens + num_new):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, seq.num_computed_tokens + num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
        return scheduled

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def update(self, scheduled: list[ScheduledSequence], sampled: list[int | None]) -> list[RequestOutput]:
        """Record a step's progress and new tokens; finish sequences that stop."""
        outputs = []
        for item, token in zip(scheduled, sampled):
            seq = item.seq
            seq.num_computed_tokens += item.num_new_tokens
            if token is None:  # a prefill chunk that does not reach the end of the prompt
                continue
            seq.append_token(token)
            reason = self._finish_reason(seq, token)
            if reason is not None:
                self.running.remove(seq)
                self._finish(seq, reason)
            outputs.append(RequestOutput(seq.request_id, [token], seq.is_finished, seq.finish_reason,
                                         seq.num_prompt_tokens, seq.num_output_tokens))
        return outputs

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
