"""LLMEngine behaviour: greedy generation against transformers, continuous batching,
chunked prefill, preemption, abort, limits and request validation."""

from __future__ import annotations

import pytest
import torch

from infire.engine import EngineStats, RequestOutput, SamplingParams
from infire.errors import ConfigError, InvalidRequestError

from .conftest import build_tiny_model, hf_greedy, hf_model, make_engine, run_all

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
PROMPTS = {
    "a": [5, 17, 99, 3, 250, 42, 7],
    "b": [11, 12, 13],
    "c": [200, 100, 50, 25, 12, 6, 3, 1, 0, 9, 8, 7, 6, 5, 4],
    "d": [77],
}


@pytest.fixture(scope="module")
def alone(llama_engine):
    """Each prompt's greedy tokens when it runs by itself."""
    return {rid: run_all(llama_engine, {rid: (p, GREEDY)})[rid] for rid, p in PROMPTS.items()}


@pytest.mark.parametrize("variant", ["llama", "qwen3"])
def test_greedy_matches_transformers_generate(tiny_model_dir, variant):
    path = tiny_model_dir(variant)
    engine = make_engine(path)
    model = hf_model(path)
    for prompt in (PROMPTS["a"], PROMPTS["c"]):
        expected = hf_greedy(model, prompt, 10)
        assert engine.generate([prompt], SamplingParams(max_tokens=10, temperature=0)) == [expected]


def test_batch_equals_alone(llama_engine, alone):
    tokens = run_all(llama_engine, {rid: (p, GREEDY) for rid, p in PROMPTS.items()})
    assert tokens == alone


def test_requests_joining_mid_run_get_the_same_tokens(llama_engine, alone):
    engine = llama_engine
    assert run_with_late_joins(engine) == alone


def test_chunked_prefill_gives_the_same_tokens(llama_dir, alone):
    engine = make_engine(llama_dir, max_num_batched_tokens=4)
    engine.add_request("c", PROMPTS["c"], GREEDY)
    first = engine.step()  # 4 of the 15 prompt tokens: nothing to report yet
    assert first == [] and engine.stats().num_running == 1
    tokens = run_all(engine, {rid: (p, GREEDY) for rid, p in PROMPTS.items() if rid != "c"})
    assert tokens == alone


def test_chunked_prefill_then_decode_matches(llama_dir, alone):
    engine = make_engine(llama_dir, max_num_batched_tokens=3)
    assert run_all(engine, {rid: (p, GREEDY) for rid, p in PROMPTS.items()}) == alone


def test_preemption_under_tiny_kv_budget(llama_dir, alone):
    # 10 blocks of 4 slots; at their longest the four requests need 5 + 4 + 7 + 3 blocks
    engine = make_engine(llama_dir, num_kv_blocks=10, max_model_len=40)
    tokens = run_all(engine, {rid: (p, GREEDY) for rid, p in PROMPTS.items()})
    assert tokens == alone
    stats = engine.stats()
    assert stats.num_preemptions > 0
    assert stats.num_kv_blocks_used == 0 and stats.num_running == stats.num_waiting == 0


def test_abort_frees_blocks_and_reports_once(llama_engine):
    engine = llama_engine
    engine.add_request("x", PROMPTS["c"], GREEDY)
    engine.add_request("y", PROMPTS["a"], GREEDY)
    engine.step()
    engine.step()
    used_by_both = engine.stats().num_kv_blocks_used
    engine.abort_request("x")
    engine.abort_request("no-such-request")  # unknown ids are ignored
    assert engine.stats().num_kv_blocks_used < used_by_both
    outputs = {out.request_id: out for out in engine.step()}
    assert outputs["x"].finished and outputs["x"].finish_reason == "abort" and outputs["x"].new_token_ids == []
    engine.abort_request("y")
    assert engine.stats().num_kv_blocks_used == 0
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.stats() == EngineStats(0, 0, 0, 64, 0.0, 0)


def test_length_limit_at_max_model_len(llama_dir):
    engine = make_engine(llama_dir, max_model_len=10)
    engine.add_request("r", PROMPTS["a"], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert [len(o.new_token_ids) for o in outputs] == [1, 1, 1]
    assert outputs[-1] == RequestOutput("r", outputs[-1].new_token_ids, True, "length", 7, 3)
    assert not any(o.finished for o in outputs[:-1])


def test_max_tokens_and_stop_tokens(llama_engine, alone):
    engine = llama_engine
    expected = alone["a"]
    stop = expected[4]
    first_stop = expected.index(stop)
    tokens = run_all(engine, {
        "len": (PROMPTS["a"], SamplingParams(max_tokens=3, temperature=0)),
        "stop": (PROMPTS["a"], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(stop,))),
    })
    assert tokens["len"] == expected[:3]
    assert tokens["stop"] == expected[:first_stop + 1]  # the stop token is reported, then the request ends


def test_eos_stops_unless_ignored(llama_engine, alone, tmp_path):
    # the same random weights, with the third greedy token of prompt "b" declared EOS
    eos = alone["b"][2]
    engine = make_engine(build_tiny_model(tmp_path, "llama", eos_token_id=eos))
    assert engine.model_config.eos_token_ids == (eos,)
    tokens = run_all(engine, {
        "stops": (PROMPTS["b"], SamplingParams(max_tokens=12, temperature=0)),
        "ignores": (PROMPTS["b"], GREEDY),
    })
    assert tokens["stops"] == alone["b"][:alone["b"].index(eos) + 1]
    assert tokens["ignores"] == alone["b"]


def test_model_config_is_exposed(llama_engine):
    config = llama_engine.model_config
    assert (config.max_model_len, config.vocab_size, config.eos_token_ids) == (256, 256, (2,))


@pytest.mark.parametrize("prompt, match", [
    ([], "empty"),
    (list(range(257)), "max_model_len"),
    ([1, 256], "vocabulary"),
    ([1, -1], "vocabulary"),
])
def test_invalid_prompts(llama_engine, prompt, match):
    with pytest.raises(InvalidRequestError, match=match):
        llama_engine.add_request("bad", prompt, GREEDY)
    assert not llama_engine.has_unfinished_requests()


def test_prompt_of_max_model_len_is_served_with_one_token(llama_dir):
    engine = make_engine(llama_dir, max_model_len=8)
    assert engine.generate([list(range(8))], GREEDY)[0].__len__() == 1


def test_duplicate_request_id(llama_engine):
    llama_engine.add_request("dup", [1, 2], GREEDY)
    with pytest.raises(InvalidRequestError, match="dup"):
        llama_engine.add_request("dup", [1, 2], GREEDY)
    llama_engine.abort_request("dup")
    llama_engine.step()


@pytest.mark.parametrize("field, value", [
    ("max_tokens", 0), ("max_tokens", -3), ("temperature", -0.5), ("temperature", float("nan")),
    ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("seed", "x"), ("stop_token_ids", (1, -2)),
])
def test_invalid_sampling_params_name_the_field(field, value):
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("changes, match", [
    ({"weights": "sparse"}, "weights"),
    ({"device": "tpu"}, "device"),
    ({"block_size": 0}, "block_size"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"dtype": "int8"}, "dtype"),
    ({"max_num_seqs": 64, "max_num_batched_tokens": 32}, "max_num_batched_tokens"),
    ({"load_format": "dummy", "weights": "compressed"}, "load_format"),
])
def test_invalid_engine_config_names_the_field(changes, match):
    from infire.engine import EngineConfig

    with pytest.raises(ConfigError, match=match):
        EngineConfig(model="/nowhere", **changes)


def test_max_model_len_beyond_kv_capacity_is_rejected(llama_dir):
    with pytest.raises(ConfigError, match="max_model_len"):
        make_engine(llama_dir, num_kv_blocks=4, max_model_len=64)


def test_failed_step_kills_the_engine(llama_dir):
    from infire.errors import EngineDeadError

    engine = make_engine(llama_dir)
    engine.add_request("r", PROMPTS["a"], GREEDY)
    engine.runner.model.model.layers[1].self_attn.k_cache = None  # a fault inside the model step
    with pytest.raises(EngineDeadError, match="step failed"):
        engine.step()
    with pytest.raises(EngineDeadError):
        engine.step()
    with pytest.raises(EngineDeadError):
        engine.add_request("s", PROMPTS["b"], GREEDY)


def test_engine_config_from_dict_rejects_unknown_keys():
    from infire.engine import EngineConfig

    assert EngineConfig.from_dict({"model": "/m", "block_size": 32}).block_size == 32
    with pytest.raises(ConfigError, match="blocksize"):
        EngineConfig.from_dict({"model": "/m", "blocksize": 32})


def test_triton_attention_on_cpu_needs_the_interpreter(llama_dir, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="attention_backend"):
        make_engine(llama_dir, attention_backend="triton")


# ---------------------------------------------------------------------------- padded decode batches (CUDA graphs)


def padded_decode(engine, batch_sizes: tuple[int, ...], backend: str = "torch"):
    """Route decode steps through the static, padded inputs that CUDA graphs replay from. On the CPU
    nothing is captured, so each step runs the same padded forward pass eagerly."""
    from infire.engine.cuda_graph import DecodeGraphs, DecodeInputs

    runner = engine.runner
    max_blocks = -(-engine.model_config.max_model_len // runner.block_size)
    inputs = DecodeInputs(max(batch_sizes), max_blocks, runner.block_size, runner.pad_block, runner.device)
    runner.graphs = DecodeGraphs(runner.model, inputs, batch_sizes, engine.model_config.vocab_size, backend)
    return runner.graphs


def test_padded_decode_steps_give_the_same_tokens(llama_dir, alone):
    engine = make_engine(llama_dir)
    graphs = padded_decode(engine, (2, 8))
    steps, run = [], graphs.run

    def counted(scheduled):
        steps.append(len(scheduled))
        return run(scheduled)

    graphs.run = counted
    assert run_with_late_joins(engine) == alone  # each join is a prefill: an eager step
    assert {1, 2, 3, 4} <= set(steps)  # padded to 2, 2, 8 and 8 rows


def test_padding_rows_write_only_the_padding_block(llama_dir):
    engine = make_engine(llama_dir)
    graphs = padded_decode(engine, (4,))
    for rid in "abc":
        engine.add_request(rid, PROMPTS[rid], GREEDY)
    engine.step()  # the three prefills, each sampling its first token
    new_token_slots = {engine.block_manager.slot(seq, seq.num_tokens - 1) for seq in engine.scheduler.running}
    cache = engine.runner.kv_cache
    before = cache.data.clone()
    engine.step()  # one decode step of three sequences in four rows
    assert graphs.inputs.slot_mapping[3] == graphs.inputs.pad_slot
    written = (cache.data != before).any(dim=5).any(dim=4).any(dim=1).any(dim=0).flatten()  # [blocks * block_size]
    slots = set(written.nonzero().flatten().tolist())
    pad_slots = set(range(engine.runner.pad_block * cache.block_size, (engine.runner.pad_block + 1) * cache.block_size))
    assert slots - pad_slots == new_token_slots and slots & pad_slots
    for rid in "abc":
        engine.abort_request(rid)


def test_padding_block_is_never_handed_out(llama_dir):
    engine = make_engine(llama_dir, num_kv_blocks=10)
    assert engine.runner.graphs is None  # the CPU always runs eagerly
    assert engine.runner.pad_block == 10 and engine.runner.kv_cache.num_blocks == 11
    assert engine.stats().num_kv_blocks_total == 10
    engine.add_request("c", PROMPTS["c"] * 2, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    engine.step()
    assert max(engine.scheduler.running[0].block_table) < 10


def test_cuda_graph_settings():
    from infire.engine import EngineConfig

    config = EngineConfig(model="/m", max_num_seqs=100, max_num_batched_tokens=128)
    assert config.graph_batch_sizes == (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 100)
    assert EngineConfig.from_dict({"model": "/m", "cuda_graph_batch_sizes": [8, 1]}).graph_batch_sizes == (1, 8)
    assert not EngineConfig(model="/m", device="cpu").uses_cuda_graphs
    for sizes in ([], [0], [300], ["4"], [True]):
        with pytest.raises(ConfigError, match="cuda_graph_batch_sizes"):
            EngineConfig(model="/m", cuda_graph_batch_sizes=sizes)
    with pytest.raises(ConfigError, match="enforce_eager"):
        EngineConfig(model="/m", enforce_eager="yes")
    with pytest.raises(ConfigError, match="ops_backend"):
        EngineConfig(model="/m", ops_backend="cuda")


def test_fused_ops_on_cpu_need_the_interpreter(llama_dir, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="ops_backend"):
        make_engine(llama_dir, ops_backend="triton")


def test_decode_inputs_restage_block_tables_that_grow_move_or_are_replaced():
    from infire.engine.cuda_graph import DecodeInputs
    from infire.engine.scheduler import ScheduledSequence
    from infire.engine.sequence import Sequence

    inputs = DecodeInputs(max_batch=4, max_blocks=3, block_size=2, pad_block=9, device=torch.device("cpu"))
    a, b = Sequence("a", [1, 2, 3], GREEDY), Sequence("b", [4, 5, 6], GREEDY)
    a.block_table, b.block_table = [5, 6], [7]
    a.num_computed_tokens, b.num_computed_tokens = 2, 1

    def staged(seqs, num_rows):
        inputs.fill([ScheduledSequence(s, 1) for s in seqs], num_rows)
        return inputs.block_tables[:len(seqs)].tolist(), inputs.slot_mapping[:num_rows].tolist()

    assert staged([a, b], 4) == ([[5, 6, 0], [7, 0, 0]], [12, 15, 18, 18])
    b.block_table.append(3)  # grows: only the new block is written
    b.num_computed_tokens = 2
    assert staged([b, a], 2)[0] == [[7, 3, 0], [5, 6, 0]]  # rows swapped
    a.block_table = [1]  # freed and allocated again: a new list
    a.num_computed_tokens = 0
    assert staged([a], 2) == ([[1, 3, 0]], [2, 18])  # stale columns beyond the table are never read
    assert inputs.seq_lens[:2].tolist() == [1, 1] and inputs.input_ids[:1].tolist() == [1]


def run_with_late_joins(engine) -> dict[str, list[int]]:
    """Greedy tokens of PROMPTS when "a" starts alone and the others join a running batch."""
    engine.add_request("a", PROMPTS["a"], GREEDY)
    tokens = {rid: [] for rid in PROMPTS}
    joins = {2: "b", 3: "c", 6: "d"}  # step index -> request that joins before it
    step = 0
    while engine.has_unfinished_requests() or joins:
        if step in joins:
            rid = joins.pop(step)
            engine.add_request(rid, PROMPTS[rid], GREEDY)
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
        step += 1
    return tokens
