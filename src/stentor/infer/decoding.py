"""What every decode engine shares, without torch: sampling settings, the step record, the plan of a call."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from stentor.errors import StentorError
from stentor.model.presets import MAX_NEW_TOKENS_DEFAULT, SAMPLING_DEFAULTS

MAX_LOGPROBS = 20  # top alternatives a step may report (OpenAI chat allows 20; completions 5)
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
MAX_PENALTY = 100.0  # repetition_penalty in [1/100, 100]
MAX_INT32 = 2**31 - 1
MAX_SEED = 2**63 - 1  # OpenAI's seed is an int64; torch and numpy take it


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Defaults are the card's recommended settings.

    `greedy` takes the arg-max after the repetition penalty (HF `do_sample=False`);
    `top_k=0`, `top_p=1`, `min_p=None`, `repetition_penalty=1` switch a stage off.
    """

    temperature: float = SAMPLING_DEFAULTS["temperature"]
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = SAMPLING_DEFAULTS["repetition_penalty"]
    greedy: bool = False
    seed: int | None = None
    num_samples: int = 1
    max_new_tokens: int = MAX_NEW_TOKENS_DEFAULT
    stop_at_eos: bool = True
    suppress_replacement_tokens: bool = False
    logprobs: int | None = None  # report each chosen token's log-probability and this many top alternatives
    # OpenAI's adjustments, applied before the repetition penalty (see `LogitAdjust`); off by default.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)

    def __post_init__(self) -> None:
        def bad(name: str, value, rule: str) -> StentorError:
            return StentorError(f"invalid sampling setting {name}={value!r}: {rule}")

        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, value, "must be a finite number")
        # Bounds keep every value inside what the samplers compute in float32 (a temperature or penalty
        # of 1e-308 would divide the logits into infinities) and what their integer fields hold.
        if self.temperature != 0 and not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise bad("temperature", self.temperature, f"must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", self.top_p, "must be in (0, 1]; use 1 to switch top-p off")
        if not 1 / MAX_PENALTY <= self.repetition_penalty <= MAX_PENALTY:
            raise bad("repetition_penalty", self.repetition_penalty,
                      f"must be in [{1 / MAX_PENALTY}, {MAX_PENALTY}]; use 1 to switch it off")  # fmt: skip
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 0 <= self.top_k <= MAX_INT32:
            raise bad("top_k", self.top_k, f"must be an integer in [0, {MAX_INT32}]; use 0 to switch top-k off")
        if self.min_p is not None and (
            isinstance(self.min_p, bool) or not isinstance(self.min_p, (int, float)) or not 0 <= self.min_p <= 1
        ):
            raise bad("min_p", self.min_p, "must be in [0, 1] or unset")
        for name in ("max_new_tokens", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INT32:
                raise bad(name, value, "must be a positive integer")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED
        ):
            raise bad("seed", self.seed, f"must be an integer in [0, {MAX_SEED}]")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise bad("logprobs", self.logprobs, f"must be an integer in [0, {MAX_LOGPROBS}] or unset")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -2 <= value <= 2:
                raise bad(name, value, "must be a number in [-2, 2] (0 switches it off)")
        if not isinstance(self.logit_bias, tuple) or not all(
            isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], int) and not isinstance(pair[0], bool)
            and pair[0] >= 0 and isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool)
            and -100 <= pair[1] <= 100 for pair in self.logit_bias
        ):  # fmt: skip
            raise bad("logit_bias", self.logit_bias, "must be (token id, bias in [-100, 100]) pairs")

    @property
    def adjusts_logits(self) -> bool:
        """Whether `LogitAdjust` has work for this row."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    @property
    def do_sample(self) -> bool:
        return not self.greedy and self.temperature > 0

    def replace(self, **changes) -> SamplingParams:
        return replace(self, **changes)


@dataclass
class Step:
    """One decode step: the new token of every row and which rows are finished (EOS or length).

    `logprobs[i]` is set for the rows whose params ask for logprobs (see `chosen_logprobs`).
    """

    tokens: list[int]
    finished: list[bool]
    logprobs: list[TokenLogprobs | None] | None = None


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's log-probability and the `k` most likely tokens with theirs, most likely first.

    They are the log-softmax of the model's raw logits: before the repetition penalty, temperature
    and truncation (vLLM's default), so they describe the model, not the sampler.
    """

    logprob: float
    top: list[tuple[int, float]]


def chosen_logprobs(logits, chosen: list[int], params: list[SamplingParams]) -> list[TokenLogprobs | None] | None:
    """`TokenLogprobs` of each row of `logits` ([rows, V] raw, numpy) that asks for them, else None."""
    if all(p.logprobs is None for p in params):
        return None
    import numpy as np

    out: list[TokenLogprobs | None] = []
    for row, token, p in zip(logits, chosen, params):
        if p.logprobs is None:
            out.append(None)
            continue
        row = row.astype(np.float64)
        shifted = row - row.max()
        logp = shifted - np.log(np.exp(shifted).sum())
        k = p.logprobs
        best = np.argpartition(-logp, k)[:k] if 0 < k < len(logp) else np.arange(len(logp) if k else 0)
        best = best[np.argsort(-logp[best], kind="stable")]
        out.append(TokenLogprobs(float(logp[token]), [(int(t), float(logp[t])) for t in best]))
    return out


class LogitAdjust:
    """OpenAI's logit_bias, presence_penalty and frequency_penalty for the rows of one `generate` call.

    Row i's logit of token j moves by bias[j] - frequency * c[j] - presence * (c[j] > 0), where c[j]
    counts the times the row has generated j (its own tokens, not the prompt's: vLLM's reading).
    Engines add `offsets` to the raw logits before their sampler, whose repetition penalty comes
    after; reported logprobs stay those of the raw logits.
    """

    def __init__(self, rows: list[SamplingParams], vocab: int):
        import numpy as np

        self.bias = np.zeros((len(rows), vocab), dtype=np.float32)
        for i, p in enumerate(rows):
            for token, value in p.logit_bias:
                if token >= vocab:
                    raise StentorError(f"logit_bias names token {token}, outside the vocabulary [0, {vocab})")
                self.bias[i, token] += value
        self.counts = np.zeros((len(rows), vocab), dtype=np.float32)
        self.frequency = np.array([[p.frequency_penalty] for p in rows], dtype=np.float32)
        self.presence = np.array([[p.presence_penalty] for p in rows], dtype=np.float32)

    @classmethod
    def of(cls, rows: list[SamplingParams], vocab: int) -> LogitAdjust | None:
        """The adjustment of these rows, or None when no row asks for one (the common case costs nothing)."""
        return cls(rows, vocab) if any(p.adjusts_logits for p in rows) else None

    def offsets(self, rows):
        """What to add to the logits [len(rows), V] of these rows (indices into the call's rows)."""
        counts = self.counts[rows]
        return self.bias[rows] - self.frequency[rows] * counts - self.presence[rows] * (counts > 0)

    def observe(self, rows, tokens) -> None:
        """Rows `rows` just generated `tokens`."""
        self.counts[rows, tokens] += 1


def plan_rows(
    prompts: list[list[int]], params: SamplingParams | list[SamplingParams], context: int
) -> tuple[list[SamplingParams], list[int]]:
    """Per-row settings and new-token budgets for a `generate` call, or a StentorError.

    Prompts must already fit the context (see `fit_prompt`); a row's budget is its
    max_new_tokens, cut at the end of the context.
    """
    rows = params if isinstance(params, list) else [params] * len(prompts)
    if len(rows) != len(prompts) or not prompts:
        raise StentorError("generate needs at least one prompt and one SamplingParams per prompt")
    if any(not p for p in prompts):
        raise StentorError("empty prompt: give at least one token (e.g. the BOS token)")
    width = max(len(p) for p in prompts)
    if width > context:
        raise StentorError(f"sequence of {width} tokens exceeds the model's context of {context}; shorten the input")
    budget = [min(p.max_new_tokens, context - len(prompt)) for p, prompt in zip(rows, prompts)]
    if min(budget) <= 0:
        raise StentorError(f"a prompt fills the whole {context}-token context; shorten it")
    return rows, budget


def fit_prompt(prompt: list[int], max_new_tokens: int, context: int) -> list[int]:
    """Keep the last tokens of a prompt that does not fit the context, with a warning.

    A prompt of at least the context length keeps its last `context - room` tokens, where
    room = min(max_new_tokens, context // 2) is left for the answer.
    """
    if len(prompt) < context:
        return prompt
    keep = context - min(max_new_tokens, context // 2)
    logging.getLogger(__name__).warning(
        "prompt of %d tokens does not fit the %d-token context; keeping its last %d tokens", len(prompt), context, keep
    )
    return prompt[-keep:]
