"""Block manager and scheduler on their own: block accounting, token budget, preemption order."""

from __future__ import annotations

from infire.engine import SamplingParams
from infire.engine.block_manager import BlockManager
from infire.engine.scheduler import Scheduler
from infire.engine.sequence import Sequence, SequenceStatus


def make_scheduler(num_blocks=8, block_size=4, max_num_seqs=8, max_tokens=16) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), max_num_seqs, max_tokens, 64, (2,))


def seq(request_id: str, num_tokens: int) -> Sequence:
    return Sequence(request_id, list(range(10, 10 + num_tokens)), SamplingParams(max_tokens=20, temperature=0))


def test_block_manager_allocates_and_frees():
    manager = BlockManager(4, block_size=4)
    s = seq("a", 5)
    manager.allocate(s, 5)
    assert len(s.block_table) == 2 and manager.num_used_blocks == 2 and manager.usage == 0.5
    manager.allocate(s, 8)  # still fits in two blocks
    assert len(s.block_table) == 2
    assert not manager.can_allocate(s, 17) and manager.can_allocate(s, 16)
    manager.free(s)
    assert s.block_table == [] and manager.num_free_blocks == 4


def test_prefill_is_chunked_within_the_token_budget():
    scheduler = make_scheduler(max_tokens=6)
    for request_id, n in (("a", 10), ("b", 3)):
        scheduler.add(seq(request_id, n))
    first = scheduler.schedule()
    assert [(s.seq.request_id, s.num_new_tokens, s.samples) for s in first] == [("a", 6, False)]
    scheduler.update(first, [None])
    second = scheduler.schedule()
    assert [(s.seq.request_id, s.num_new_tokens, s.samples) for s in second] == [("a", 4, True), ("b", 2, False)]


def test_max_num_seqs_limits_the_running_batch():
    scheduler = make_scheduler(max_num_seqs=2)
    for i in range(3):
        scheduler.add(seq(f"r{i}", 2))
    assert [s.seq.request_id for s in scheduler.schedule()] == ["r0", "r1"]
    assert [s.request_id for s in scheduler.waiting] == ["r2"]


def test_newest_running_sequence_is_preempted_and_requeued_first():
    scheduler = make_scheduler(num_blocks=4)
    for request_id in ("old", "new"):
        scheduler.add(seq(request_id, 8))  # 2 blocks each: the cache is full
    step = scheduler.schedule()
    scheduler.update(step, [1, 1])  # each gained a token: the next decode needs a third block
    step = scheduler.schedule()
    assert [s.seq.request_id for s in step] == ["old"]
    new = scheduler.waiting[0]
    assert (new.request_id, new.status, new.num_computed_tokens, new.block_table) == ("new", SequenceStatus.WAITING, 0, [])
    assert scheduler.num_preemptions == 1


def test_abort_removes_and_frees():
    scheduler = make_scheduler()
    scheduler.add(seq("a", 6))
    scheduler.add(seq("b", 6))
    scheduler.schedule()
    aborted = scheduler.abort("a")
    assert aborted.finish_reason == "abort" and aborted.block_table == []
    assert scheduler.abort("a") is None
    assert [s.request_id for s in scheduler.running] == ["b"]
    assert scheduler.block_manager.num_used_blocks == 2
