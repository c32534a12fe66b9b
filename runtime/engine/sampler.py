"""Sampler: greedy, temperature, top-k and top-p over a batch of logits.

Sampling uses the exponential-race form of Gumbel-max: argmax(p / E) with
E ~ Exp(1) picks token i with probability p_i. Each seeded request draws its E
from its own generator, so its tokens do not depend on the rest of the batch.
"""

from __future__ import annotations

import torch

from infire.engine.sampling_params import SamplingParams


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set logits [N, V] outside each row's top-k, then outside its top-p mass, to -inf.

    top_k [N] int (0 = off), top_p [N] float (1 = off); top-p applies to the
    distribution left after top-k, and the most likely token always survives.
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab)  # [N]
    remove = ranks[None, :] >= k[:, None]  # [N, V]
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the better-ranked tokens
    remove |= (mass_before > top_p[:, None]) & (top_p[:, None] < 1)
    remove[:, 0] = False
    mask = torch.empty_like(remove).scatter_(-1, order, remove)
    return logits.masked_fill(mask, float("-inf"))


class Sampler:
    """Picks one token per row of logits, honouring each row's SamplingParams."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def new_generator(self, seed: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> list[int]:
        """logits [N, V] float32 -> N token ids."""
        tokens = logits.argmax(dim=-1)  # [N], kept for greedy rows
        if all(p.is_greedy for p in params):
            return tokens.tolist()  # one device-to-host copy
        rows = [i for i, p in enumerate(params) if not p.is_greedy]
        if rows:
            chosen = [params[i] for i in rows]
            sampled = self._sample(logits[rows], chosen, [generators[i] for i in rows])
            tokens[rows] = sampled
        return tokens.tolist()

    def _sample(self, logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
        device = logits.device
        temperature = torch.tensor([p.temperature for p in params], device=device, dtype=torch.float32)
        logits = logits / temperature[:, None]
        if any(p.top_k > 0 or p.top_p < 1 for p in params):
            top_k = torch.tensor([p.top_k for p in params], device=device)
            top_p = torch.tensor([p.top_p for p in params], device=device, dtype=torch.float32)
            logits = apply_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)  # [N, V]
        return (probs / self._exponentials(probs, generators)).argmax(dim=-1)

    def _exponentials(self, probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
        """Exp(1) noise [N, V]: seeded rows from their own generator, the rest from the shared one."""
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for i, generator in enumerate(generators):
            if generator is not None:
                noise[i].exponential_(generator=generator)
        return noise.clamp_min_(torch.finfo(probs.dtype).tiny)
