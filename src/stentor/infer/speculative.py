"""Speculative decoding: a small draft model proposes tokens, the target model checks them in one forward.

Exact speculative sampling (Leviathan et al. 2023; Chen et al. 2023). Per step the draft samples
x_1..x_k from its processed distributions q_j; the target scores all k + 1 positions at once,
giving p_j. Token x_j is kept with probability min(1, p_j(x_j) / q_j(x_j)); at the first
rejection we sample from norm(max(0, p_j - q_j)) and stop; if all k are kept, a bonus token
comes from p_{k+1}. Each emitted token is then distributed exactly as target-only sampling.

"Processed" means the same `LogitsPipeline` the engine uses (repetition penalty, temperature,
top-k, top-p, min-p) on both models. The repetition penalty depends on the tokens before a
position, so position j of both models is penalized with the prompt + emitted tokens + x_1..x_{j-1}
— exactly the prefix target-only decoding would have at that point. The guarantee is therefore
exactness with respect to the *processed* target distribution, penalty included; the draft's
own processing only affects speed (acceptance), never the output distribution.

Greedy: keep x_j while it equals the target's arg-max, then take the target's arg-max — the
same tokens as target-only greedy decoding. The draft length k is fixed or "adaptive": +1 after
a step that kept every draft token, -1 after a step that kept fewer than half (1 <= k <= max_k).

The models are two `NativeEngine`s (the compiled runtime: the KV cache is indexed by position,
so trimming after a rejection is free, and the target checks the k drafts in one step of k + 1
rows), or two Hugging Face causal LMs with a `DynamicCache` each; one prompt at a time (batch 1).
The runtime draws from NumPy's generator and HF models from torch's, as in plain decoding.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from stentor.errors import StentorError
from stentor.infer.decoding import SamplingParams, TokenLogprobs, chosen_logprobs

DEFAULT_K = 4
MAX_K = 16


@dataclass
class SpeculativeStats:
    """How the draft fared: acceptance rate and tokens emitted per target forward."""

    new_tokens: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    proposed: int = 0
    accepted: int = 0
    seconds: float = 0.0
    k_history: list[int] = field(default_factory=list)
    last_kept: int = 0  # draft tokens the latest step kept

    def to_dict(self) -> dict:
        """What a server reports per request."""
        return {"acceptance_rate": round(self.acceptance_rate, 4), "accepted": self.accepted, "proposed": self.proposed,
                "target_calls": self.target_calls, "tokens_per_target_call": round(self.tokens_per_target_call, 3)}

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.new_tokens} tokens in {self.seconds:.2f}s ({self.tokens_per_second:.1f} tok/s); "
            f"draft acceptance {self.acceptance_rate:.1%} ({self.accepted}/{self.proposed}), "
            f"{self.tokens_per_target_call:.2f} tokens per target forward"
        )


@dataclass
class SpeculativeResult:
    tokens: list[int]  # the new tokens only
    stats: SpeculativeStats


def _vocab_size(model) -> int:
    return model.config.vocab_size if hasattr(model, "config") else model.vocab_size


def _context(model) -> int:
    return model.config.max_position_embeddings if hasattr(model, "config") else model.max_positions


def check_compatible(target, draft, target_tokenizer=None, draft_tokenizer=None) -> None:
    """Raise a StentorError unless draft and target share one vocabulary (ids mean the same tokens)."""
    t_size, d_size = _vocab_size(target), _vocab_size(draft)
    if t_size != d_size:
        raise StentorError(
            f"the draft's vocabulary has {d_size} ids but the target's has {t_size}: speculative decoding needs the "
            "same tokenizer for both; pick a draft trained with the target's tokenizer"
        )
    if target_tokenizer is None or draft_tokenizer is None:
        return
    if not hasattr(target_tokenizer, "get_vocab"):  # two TextCodecs: the vocabulary and the added tokens
        if (target_tokenizer.vocab.to_bytes(), target_tokenizer.added) != (
                draft_tokenizer.vocab.to_bytes(), draft_tokenizer.added):
            raise StentorError("the draft and target tokenizers differ: a drafted id would mean a different token; "
                               "pick a draft trained with the target's tokenizer")
        return
    t_vocab, d_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if t_vocab != d_vocab:
        t_by_id = {i: s for s, i in t_vocab.items()}
        d_by_id = {i: s for s, i in d_vocab.items()}
        differing = sorted(i for i in set(t_by_id) | set(d_by_id) if t_by_id.get(i) != d_by_id.get(i))
        first = differing[0]
        raise StentorError(
            f"the draft and target tokenizers differ ({len(differing)} ids, e.g. id {first} is "
            f"{t_by_id.get(first)!r} for the target but {d_by_id.get(first)!r} for the draft): a drafted id would "
            "mean a different token; pick a draft trained with the target's tokenizer"
        )


def _trim(cache, keep: int) -> None:
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)


class _Pipelines:
    """LogitsPipeline objects for 1..k+1 rows with the same params (its tensors are per row)."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        self.params, self.vocab_size, self._by_rows = params, vocab_size, {}

    def __call__(self, rows: int):
        from stentor.infer.sampling import LogitsPipeline

        if rows not in self._by_rows:
            self._by_rows[rows] = LogitsPipeline([self.params] * rows, self.vocab_size)
        return self._by_rows[rows]

    def scores(self, logits, seen):
        """Penalized logits (what greedy takes the arg-max of), one row per position."""
        return self(logits.shape[0]).penalize(logits.float(), seen)

    def probs(self, scores):
        return self(scores.shape[0]).warp(scores).softmax(dim=-1)


class _TorchPair:
    """Target (side 0) and draft (side 1) as HF models: a DynamicCache each, the torch engine's
    pipeline and torch's RNG. `seen` is a bool row [1, V] of the tokens so far. (torch is imported
    where it is used: the native pair below runs without it.)"""

    def __init__(self, target, draft, params: SamplingParams, vocab: int):
        import torch
        from transformers import DynamicCache

        self.models, self.caches = (target, draft), (DynamicCache(), DynamicCache())
        self.pipelines = _Pipelines(params, vocab)
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.vocab = vocab

    def cached(self, side: int) -> int:
        return self.caches[side].get_seq_length()

    def logits(self, side: int, ids: list[int]):
        import torch

        return self.models[side](input_ids=torch.tensor([ids]), cache=self.caches[side], use_cache=True).logits[0]

    def trim(self, side: int, keep: int) -> None:
        _trim(self.caches[side], keep)

    def seen(self, tokens: list[int]):
        import torch

        seen = torch.zeros(1, self.vocab, dtype=torch.bool)
        seen[0, tokens] = True
        return seen

    @staticmethod
    def with_drafts(seen, drafts: list[int]):
        """Rows 0..len(drafts): row j has also seen the drafts before j (the prefix of that position)."""
        rows = seen.repeat(len(drafts) + 1, 1)
        for j, token in enumerate(drafts):
            rows[j + 1 :, token] = True
        return rows

    def greedy(self, logits, seen) -> list[int]:
        return self.pipelines.scores(logits, seen).argmax(dim=-1).tolist()

    @staticmethod
    def raw(logits) -> np.ndarray:
        return logits.float().numpy().copy()

    @staticmethod
    def no_grad():
        import torch

        return torch.inference_mode()

    def probs(self, logits, seen):
        return self.pipelines.probs(self.pipelines.scores(logits, seen))

    def pick(self, probs) -> int:
        import torch

        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self) -> float:
        import torch

        return float(torch.rand((), generator=self.generator))

    @staticmethod
    def residual(p, q):
        return (p - q).clamp(min=0)


class _NativePair:
    """Target and draft as NativeEngines, with _TorchPair's methods: the cache is indexed by position
    (trimming is a length), the target engine's sampler (one vocabulary), NumPy's RNG."""

    def __init__(self, target, draft, params: SamplingParams, vocab: int):
        self.models, self.lengths, self.params, self.vocab = (target, draft), [0, 0], params, vocab
        self.rng = np.random.Generator(np.random.PCG64(params.seed))
        for engine in self.models:
            engine._ensure_cache(1, engine.max_positions)

    def cached(self, side: int) -> int:
        return self.lengths[side]

    def logits(self, side: int, ids: list[int]) -> np.ndarray:
        start, rows = self.lengths[side], np.arange(len(ids))
        out = self.models[side].forward(np.asarray(ids), np.zeros(len(ids)), start + rows, rows)
        self.lengths[side] += len(ids)
        return out

    def trim(self, side: int, keep: int) -> None:
        self.lengths[side] = min(self.lengths[side], keep)

    def seen(self, tokens: list[int]) -> np.ndarray:
        seen = np.zeros((1, self.vocab), dtype=np.uint8)
        seen[0, tokens] = 1
        return seen

    @staticmethod
    def with_drafts(seen, drafts: list[int]):
        rows = np.repeat(seen, len(drafts) + 1, axis=0)
        for j, token in enumerate(drafts):
            rows[j + 1 :, token] = 1
        return rows

    @staticmethod
    def raw(logits) -> np.ndarray:
        return np.array(logits, dtype=np.float32)

    @staticmethod
    def no_grad():
        return contextlib.nullcontext()

    def greedy(self, logits, seen) -> list[int]:
        params = [self.params.replace(greedy=True)] * len(logits)
        return self.models[0].sample(logits, params, seen.copy(), np.zeros(len(logits))).tolist()

    def probs(self, logits, seen):
        return self.models[0].distributions(logits, self.params, seen)

    def pick(self, probs) -> int:
        cumulative = np.cumsum(probs, dtype=np.float64)
        index = np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")
        return int(min(index, len(probs) - 1))

    def uniform(self) -> float:
        return float(self.rng.random())

    @staticmethod
    def residual(p, q):
        return np.maximum(p - q, 0)


def speculative_generate(
    target,
    draft,
    input_ids,
    k: int | str = DEFAULT_K,
    *,
    params: SamplingParams | None = None,
    eos_ids: set[int] | frozenset[int] | None = None,
    max_k: int = MAX_K,
    target_tokenizer=None,
    draft_tokenizer=None,
    **sampling,
) -> SpeculativeResult:
    """Continue one prompt with `target`, drafting with `draft`; keyword sampling options as SamplingParams.

    `target` and `draft` are two HF causal LMs or two `NativeEngine`s; `input_ids` a list of ids or
    a [1, T] / [T] tensor or array. Returns the new tokens and `SpeculativeStats`. EOS ids default
    to the target config's.
    """
    if params is None:
        from stentor.infer.api import sampling_params

        params = sampling_params(**sampling)
    elif sampling:
        raise StentorError("pass either params=SamplingParams(...) or sampling keywords, not both")
    check_compatible(target, draft, target_tokenizer, draft_tokenizer)
    stats = SpeculativeStats()
    out = [t for new, _ in speculative_stream(target, draft, input_ids, k, params, eos_ids, max_k, stats) for t in new]
    return SpeculativeResult(out, stats)


def speculative_stream(
    target, draft, input_ids, k: int | str, params: SamplingParams, eos_ids=None, max_k: int = MAX_K,
    stats: SpeculativeStats | None = None, cancelled: Callable[[], bool] | None = None,
) -> Iterator[tuple[list[int], list[TokenLogprobs] | None]]:
    """The new tokens of each verify step, with their logprobs when `params.logprobs` asks (the
    target's raw log-softmax, as in plain decoding); `stats` fills in as it goes; `cancelled()`
    turning true ends the stream after the current step. Models as in `speculative_generate`,
    whose vocabulary check the caller has made."""
    if params.adjusts_logits:
        raise StentorError("logit_bias and presence/frequency penalties are not available with a draft model")
    adaptive = k == "adaptive"
    if not adaptive and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise StentorError(f"draft length k must be a positive integer or 'adaptive', got {k!r}")
    prompt = [int(t) for t in (input_ids.reshape(-1).tolist() if hasattr(input_ids, "reshape") else input_ids)]
    if getattr(input_ids, "ndim", 1) == 2 and input_ids.shape[0] != 1:
        raise StentorError("speculative decoding takes one prompt at a time (batch 1)")
    if not prompt:
        raise StentorError("empty prompt: give at least one token (e.g. the BOS token)")
    context = min(_context(target), _context(draft))
    budget = min(params.max_new_tokens, context - len(prompt))
    if budget <= 0:
        raise StentorError(f"the prompt of {len(prompt)} tokens fills the {context}-token context; shorten it")
    native = not hasattr(target, "config")
    if eos_ids is None:
        eos = target.weights.config.get("eos_token_id") if native else target.config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    pair = (_NativePair if native else _TorchPair)(target, draft, params, _vocab_size(target))
    return _steps(pair, prompt, budget, params, eos_ids, k, max_k, stats or SpeculativeStats(), cancelled)


def _steps(pair, prompt: list[int], budget: int, params: SamplingParams, eos_ids, k, max_k: int,
           stats: SpeculativeStats, cancelled) -> Iterator[tuple[list[int], list[TokenLogprobs] | None]]:
    """The draft-and-verify loop over either pair of models (see the module docstring)."""
    adaptive = k == "adaptive"
    greedy = not params.do_sample
    committed, emitted = list(prompt), 0
    seen = pair.seen(prompt)
    k_now = DEFAULT_K if adaptive else k
    start = time.perf_counter()
    while emitted < budget and not (cancelled and cancelled()):
        with pair.no_grad():
            new, raw = _step(pair, committed, seen, budget - emitted, params, eos_ids, k_now, greedy, stats)
        steps, kept = stats.k_history[-1], stats.last_kept
        committed += new
        emitted += len(new)
        seen[0, new] = True
        # Caches keep every committed token but the last (it is fed on the next step).
        pair.trim(0, len(committed) - 1)
        pair.trim(1, len(committed) - 1)
        if adaptive and steps == k_now:
            k_now = min(k_now + 1, max_k) if kept == steps else max(1, k_now - 1) if kept < steps / 2 else k_now
        stats.seconds = time.perf_counter() - start
        stats.new_tokens = emitted
        logprobs = chosen_logprobs(raw[: len(new)], new, [params] * len(new)) if raw is not None else None
        yield new, logprobs
        if params.stop_at_eos and new and new[-1] in eos_ids:
            break


def _step(pair, committed: list[int], seen, room: int, params: SamplingParams, eos_ids, k_now: int, greedy: bool,
          stats: SpeculativeStats):
    """One draft-and-verify step: the tokens it commits (at most `room`), and the target's raw logits
    for them when logprobs are asked for."""
    steps = min(k_now, room - 1)
    # Draft: k tokens, each from its processed distribution given everything before it.
    drafts, q_rows = [], []
    d_seen = pair.with_drafts(seen, [])  # a copy that takes each draft token in turn
    feed = committed[pair.cached(1) :]
    for _ in range(steps):
        logits = pair.logits(1, feed)[-1:]
        if greedy:
            token = pair.greedy(logits, d_seen)[0]
        else:
            q = pair.probs(logits, d_seen)[0]
            token = pair.pick(q)
            q_rows.append(q)
        drafts.append(token)
        d_seen[0, token] = True
        feed = [token]
    stats.draft_calls += steps
    # Target: one forward over the last committed token and the drafts -> steps + 1 distributions.
    t_logits = pair.logits(0, committed[pair.cached(0) :] + drafts)[-(steps + 1) :]
    raw = pair.raw(t_logits) if params.logprobs is not None else None  # before the sampler touches them
    t_seen = pair.with_drafts(seen, drafts)
    kept = 0
    if greedy:
        choice = pair.greedy(t_logits, t_seen)
        while kept < steps and drafts[kept] == choice[kept]:
            kept += 1
        extra = choice[kept]
    else:
        p_rows = pair.probs(t_logits, t_seen)
        extra = None
        for j, token in enumerate(drafts):
            if pair.uniform() * q_rows[j][token] < p_rows[j][token]:
                kept += 1
                continue
            residual = pair.residual(p_rows[j], q_rows[j])
            extra = pair.pick(residual if residual.sum() > 0 else p_rows[j])
            break
        if extra is None:  # every draft token kept: a bonus token from the target
            extra = pair.pick(p_rows[steps])
    stats.target_calls += 1
    stats.proposed += steps
    stats.accepted += kept
    stats.last_kept = kept
    stats.k_history.append(steps)
    new = (drafts[:kept] + [extra])[:room]
    if params.stop_at_eos:
        stop = next((i for i, t in enumerate(new) if t in eos_ids), None)
        new = new if stop is None else new[: stop + 1]
    return new, raw


def parse_k(value: str | int) -> int | str:
    """`--draft-k`: a positive integer or 'adaptive'."""
    if value == "adaptive":
        return value
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if k < 1:
        raise StentorError(f"--draft-k must be a positive integer or 'adaptive', got {value!r}")
    return k


class DraftedModel:
    """A loaded target (`stentor.load`) with a draft model of the same vocabulary, decoding one prompt
    at a time speculatively: both on the compiled runtime when the target is, else both as HF models."""

    def __init__(self, lm, draft_path: str, k: str | int = DEFAULT_K):
        from stentor.infer.api import load

        self.lm, self.k = lm, parse_k(k)
        draft = load(draft_path, engine="stentor" if lm.backend == "NativeEngine" else "hf")
        if lm.backend == draft.backend == "NativeEngine":
            self.models = lm.engine, draft.engine
            same_kind = hasattr(lm.tokenizer, "get_vocab") == hasattr(draft.tokenizer, "get_vocab")
            tokenizers = (lm.tokenizer, draft.tokenizer) if same_kind else (lm.hf_tokenizer, draft.hf_tokenizer)
        else:
            self.models, tokenizers = (lm.model, draft.model), (lm.hf_tokenizer, draft.hf_tokenizer)
        check_compatible(*self.models, *tokenizers)

    def stream(self, ids: list[int], params: SamplingParams, stats: SpeculativeStats | None = None,
               cancelled: Callable[[], bool] | None = None):
        """`speculative_stream` of one encoded prompt with the target's EOS ids."""
        if params.suppress_replacement_tokens:
            raise StentorError("suppressing replacement tokens is not available with a draft model; drop one of them")
        return speculative_stream(*self.models, ids, self.k, params, self.lm.eos_ids, stats=stats, cancelled=cancelled)


def generate_with_draft(lm, draft_path: str, prompt: str, k: str | int, *, chat: bool, echo: bool, **sampling) -> int:
    """`stentor generate --draft DRAFT`: stream the completion, then the draft's statistics on stderr."""
    import sys

    from stentor.infer.api import sampling_params
    from stentor.infer.text import streaming_decoder

    params = sampling_params(**sampling)
    if params.num_samples != 1:
        raise StentorError("--draft produces one sample at a time; drop -n/--num-samples")
    drafted = DraftedModel(lm, draft_path, k)
    ids = lm.encode(prompt, chat=chat, max_new_tokens=params.max_new_tokens)
    stats, decoder = SpeculativeStats(), streaming_decoder(lm.tokenizer)
    sys.stdout.write(prompt if echo else "")
    for new, _ in drafted.stream(ids, params, stats):
        sys.stdout.write(decoder.push([t for t in new if t not in lm.eos_ids]))
        sys.stdout.flush()
    print(decoder.flush())
    print(f"speculative decoding: {stats.summary()}", file=sys.stderr)
    return 0
