"""Sampling parameters and the logits pipeline, numerically the same as Hugging Face's processors.

Order and arithmetic follow `transformers` generate: repetition penalty (on every token of
prompt + generated text), then temperature, top-k, top-p, min-p, then softmax + multinomial.
Each stage takes per-row parameters so one batch can mix requests with different settings.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stentor.infer.decoding import SamplingParams

__all__ = ["LogitsPipeline", "SamplingParams"]


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


def _sort_ascending(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.sort(scores)` computed with NumPy's argsort, about twice as fast for vocabulary-sized rows.

    The sorted values are the same; like torch's default sort it is not stable, which only
    matters between exactly equal logits.
    """
    order = torch.from_numpy(np.argsort(scores.numpy(), axis=-1))
    return scores.gather(1, order), order


class LogitsPipeline:
    """The per-step logits transform for a batch whose rows may use different `SamplingParams`.

    Stages that no row needs are skipped, so the card's settings cost four small ops and a sort.
    """

    def __init__(self, rows: list[SamplingParams], vocab_size: int):
        like = torch.empty(0)
        self.vocab_size = vocab_size
        self.penalty = _column([p.repetition_penalty for p in rows], like)
        self.use_penalty = any(p.repetition_penalty != 1.0 for p in rows)
        sampled = [p for p in rows if p.do_sample]
        # Warpers only apply to sampled rows; greedy rows get neutral values and take the arg-max.
        self.temperature = _column([p.temperature if p.do_sample else 1.0 for p in rows], like)
        self.use_temperature = any(p.temperature != 1.0 for p in sampled)
        self.top_k = torch.tensor([[p.top_k if p.do_sample and p.top_k else vocab_size] for p in rows]).clamp_(
            max=vocab_size
        )
        self.use_top_k = any(p.top_k for p in sampled)
        self.top_p = _column([p.top_p if p.do_sample else 1.0 for p in rows], like)
        self.use_top_p = any(p.top_p < 1.0 for p in sampled)
        self.min_p = _column([(p.min_p or 0.0) if p.do_sample else 0.0 for p in rows], like)
        self.use_min_p = any(p.min_p is not None for p in sampled)
        self.greedy_rows = torch.tensor([not p.do_sample for p in rows])
        self.all_greedy = not sampled
        self.any_greedy = len(sampled) < len(rows)

    def penalize(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """HF RepetitionPenaltyLogitsProcessor: on seen tokens divide positive logits, multiply negative ones."""
        if not self.use_penalty:
            return logits
        penalized = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
        return torch.where(seen, penalized, logits)

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, top-p and min-p as HF's warpers compute them."""
        if self.use_temperature:
            scores = scores / self.temperature
        if self.use_top_k:
            kth = _sort_ascending(scores)[0].gather(1, self.vocab_size - self.top_k)
            scores = scores.masked_fill(scores < kth, -math.inf)
        if self.use_top_p:
            sorted_logits, sorted_indices = _sort_ascending(scores)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1 - self.top_p)
            remove_sorted[:, -1] = False
            remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
            scores = scores.masked_fill(remove, -math.inf)
        if self.use_min_p:
            probs = scores.softmax(dim=-1)
            threshold = self.min_p * probs.amax(dim=-1, keepdim=True)
            remove = probs < threshold
            remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
            scores = scores.masked_fill(remove, -math.inf)
        return scores

    def choose(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
        banned: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The next token of every row, shape [batch]; `banned` ([batch, V] bool) tokens are never chosen.

        One generator draws for the whole batch in one call, as HF does; a list gives each row
        its own stream (requests with their own seed sharing a batch).
        """
        if banned is not None:
            logits = logits.masked_fill(banned, -math.inf)
        scores = self.penalize(logits, seen)
        if self.all_greedy:
            return scores.argmax(dim=-1)
        probs = self.warp(scores).softmax(dim=-1)
        if isinstance(generator, list):
            tokens = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generator)])
        else:
            tokens = torch.multinomial(probs, num_samples=1, generator=generator)
        tokens = tokens.squeeze(1)
        if self.any_greedy:
            tokens = torch.where(self.greedy_rows, scores.argmax(dim=-1), tokens)
        return tokens
