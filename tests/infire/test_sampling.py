"""Sampling: seeded reproducibility, top-k/top-p support sets, and the sampled distribution."""

from __future__ import annotations

import pytest
import torch

from infire.engine import SamplingParams
from infire.engine.sampler import Sampler, apply_top_k_top_p

from .conftest import make_engine, run_all

PROMPT = [5, 17, 99, 3, 250, 42, 7]


def sample_many(logits: torch.Tensor, params: SamplingParams, n: int = 400) -> torch.Tensor:
    sampler = Sampler(torch.device("cpu"), seed=1)
    rows = logits.expand(n, -1).clone()
    return torch.tensor(sampler(rows, [params] * n, [None] * n))


def test_seeded_request_is_reproducible_regardless_of_batch(llama_dir):
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True)
    alone = run_all(make_engine(llama_dir), {"s": (PROMPT, seeded)})["s"]
    again = run_all(make_engine(llama_dir, seed=99), {"s": (PROMPT, seeded)})["s"]
    others = {f"o{i}": ([3 + i, 9, 27], SamplingParams(max_tokens=6 + i, temperature=1.0)) for i in range(3)}
    batched = run_all(make_engine(llama_dir), {**others, "s": (PROMPT, seeded)})["s"]
    other_seed = run_all(make_engine(llama_dir), {"s": (PROMPT, SamplingParams(
        max_tokens=10, temperature=1.0, seed=4321, ignore_eos=True))})["s"]
    assert alone == again == batched
    assert other_seed != alone


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(5, 50)
    tokens = Sampler(torch.device("cpu"))(logits, [SamplingParams(temperature=0)] * 5, [None] * 5)
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_only_picks_the_k_best():
    logits = torch.randn(1, 64)
    allowed = set(logits[0].topk(3).indices.tolist())
    picked = set(sample_many(logits, SamplingParams(temperature=1.5, top_k=3)).tolist())
    assert picked <= allowed and len(picked) > 1


def test_top_p_only_picks_the_nucleus():
    # probabilities 0.5, 0.25, 0.125, ... : top_p=0.7 keeps the first two, 0.8 the first three
    probs = torch.tensor([0.5 ** (i + 1) for i in range(12)])
    logits = probs.log()[None, :]
    assert set(sample_many(logits, SamplingParams(top_p=0.7)).tolist()) == {0, 1}
    assert set(sample_many(logits, SamplingParams(top_p=0.8)).tolist()) == {0, 1, 2}


def test_top_k_and_top_p_combine_per_row():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]] * 3)
    masked = apply_top_k_top_p(logits, torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.01, 1.0]))
    keep = masked.isfinite()
    assert keep.tolist() == [[True, True, False, False, False], [True, False, False, False, False], [True] * 5]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_frequencies_follow_the_distribution(temperature):
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    tokens = sample_many(logits, SamplingParams(temperature=temperature), n=4000)
    expected = (logits[0] / temperature).softmax(-1)
    observed = torch.bincount(tokens, minlength=3).float() / len(tokens)
    assert (observed - expected).abs().max() < 0.04
