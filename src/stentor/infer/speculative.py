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

Both models are Hugging Face causal LMs run with a `DynamicCache` each, trimmed after a
rejection; one prompt at a time (batch 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from stentor.errors import StentorError
from stentor.infer.sampling import LogitsPipeline, SamplingParams

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


def check_compatible(target, draft, target_tokenizer=None, draft_tokenizer=None) -> None:
    """Raise a StentorError unless draft and target share one vocabulary (ids mean the same tokens)."""
    t_size, d_size = target.config.vocab_size, draft.config.vocab_size
    if t_size != d_size:
        raise StentorError(
            f"the draft's vocabulary has {d_size} ids but the target's has {t_size}: speculative decoding needs the "
            "same tokenizer for both; pick a draft trained with the target's tokenizer"
        )
    if target_tokenizer is None or draft_tokenizer is None:
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

    def __call__(self, rows: int) -> LogitsPipeline:
        if rows not in self._by_rows:
            self._by_rows[rows] = LogitsPipeline([self.params] * rows, self.vocab_size)
        return self._by_rows[rows]

    def scores(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Penalized logits (what greedy takes the arg-max of), one row per position."""
        return self(logits.shape[0]).penalize(logits.float(), seen)

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        return self(scores.shape[0]).warp(scores).softmax(dim=-1)


def _forward(model, ids: list[int], cache) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True).logits[0]


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    input_ids: list[int] | torch.Tensor,
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

    Returns the new tokens and `SpeculativeStats`. EOS ids default to the target config's.
    """
    if params is None:
        from stentor.infer.api import sampling_params

        params = sampling_params(**sampling)
    elif sampling:
        raise StentorError("pass either params=SamplingParams(...) or sampling keywords, not both")
    adaptive = k == "adaptive"
    if not adaptive and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise StentorError(f"draft length k must be a positive integer or 'adaptive', got {k!r}")
    check_compatible(target, draft, target_tokenizer, draft_tokenizer)
    prompt = input_ids.reshape(-1).tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[0] != 1:
        raise StentorError("speculative decoding takes one prompt at a time (batch 1)")
    if not prompt:
        raise StentorError("empty prompt: give at least one token (e.g. the BOS token)")
    context = min(target.config.max_position_embeddings, draft.config.max_position_embeddings)
    budget = min(params.max_new_tokens, context - len(prompt))
    if budget <= 0:
        raise StentorError(f"the prompt of {len(prompt)} tokens fills the {context}-token context; shorten it")
    if eos_ids is None:
        eos = target.config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    from transformers import DynamicCache

    vocab = target.config.vocab_size
    pipelines = _Pipelines(params, vocab)
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    greedy = not params.do_sample
    committed, out = list(prompt), []
    seen = torch.zeros(1, vocab, dtype=torch.bool)
    seen[0, prompt] = True
    t_cache, d_cache = DynamicCache(), DynamicCache()
    stats = SpeculativeStats()
    k_now = DEFAULT_K if adaptive else k
    start = time.perf_counter()
    while len(out) < budget:
        steps = min(k_now, budget - len(out) - 1)
        # Draft: k tokens, each from its processed distribution given everything before it.
        drafts, q_rows = [], []
        d_seen = seen.clone()
        feed = committed[d_cache.get_seq_length() :]
        for _ in range(steps):
            scores = pipelines.scores(_forward(draft, feed, d_cache)[-1:], d_seen)
            if greedy:
                token = int(scores.argmax())
            else:
                q = pipelines.probs(scores)[0]
                token = _sample(q, generator)
                q_rows.append(q)
            drafts.append(token)
            d_seen[0, token] = True
            feed = [token]
        stats.draft_calls += steps
        # Target: one forward over the last committed token and the drafts -> steps + 1 distributions.
        t_logits = _forward(target, committed[t_cache.get_seq_length() :] + drafts, t_cache)[-(steps + 1) :]
        t_seen = seen.repeat(steps + 1, 1)
        for j, token in enumerate(drafts):
            t_seen[j + 1 :, token] = True
        t_scores = pipelines.scores(t_logits, t_seen)
        kept = 0
        if greedy:
            choice = t_scores.argmax(dim=-1).tolist()
            while kept < steps and drafts[kept] == choice[kept]:
                kept += 1
            extra = choice[kept]
        else:
            p_rows = pipelines.probs(t_scores)
            extra = None
            for j, token in enumerate(drafts):
                u = torch.rand((), generator=generator)
                if u * q_rows[j][token] < p_rows[j][token]:
                    kept += 1
                    continue
                residual = (p_rows[j] - q_rows[j]).clamp(min=0)
                extra = _sample(residual if residual.sum() > 0 else p_rows[j], generator)
                break
            if extra is None:  # every draft token kept: a bonus token from the target
                extra = _sample(p_rows[steps], generator)
        stats.target_calls += 1
        stats.proposed += steps
        stats.accepted += kept
        new = (drafts[:kept] + [extra])[: budget - len(out)]
        if params.stop_at_eos:
            stop = next((i for i, t in enumerate(new) if t in eos_ids), None)
            new = new if stop is None else new[: stop + 1]
        committed += new
        out += new
        seen[0, new] = True
        # Caches keep every committed token but the last (it is fed on the next step).
        _trim(t_cache, len(committed) - 1)
        _trim(d_cache, len(committed) - 1)
        stats.k_history.append(steps)
        if adaptive and steps == k_now:
            k_now = min(k_now + 1, max_k) if kept == steps else max(1, k_now - 1) if kept < steps / 2 else k_now
        if params.stop_at_eos and new and new[-1] in eos_ids:
            break
    stats.seconds = time.perf_counter() - start
    stats.new_tokens = len(out)
    return SpeculativeResult(out, stats)


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


def generate_with_draft(lm, draft_path: str, prompt: str, k: str | int, *, chat: bool, echo: bool, **sampling) -> int:
    """`stentor generate --draft DRAFT`: print the completion, then the draft's statistics on stderr."""
    import sys

    from stentor.infer.api import load, sampling_params

    params = sampling_params(**sampling)
    k = parse_k(k)
    if params.num_samples != 1:
        raise StentorError("--draft produces one sample at a time; drop -n/--num-samples")
    if params.suppress_replacement_tokens:
        raise StentorError("--suppress-replacement is not available with --draft; drop one of them")
    draft = load(draft_path, engine="hf")
    ids = lm.encode(prompt, chat=chat, max_new_tokens=params.max_new_tokens)
    result = speculative_generate(
        lm.model, draft.model, ids, k, params=params, eos_ids=lm.eos_ids,
        target_tokenizer=lm.hf_tokenizer, draft_tokenizer=draft.tokenizer,
    )
    text = lm.tokenizer.decode([t for t in result.tokens if t not in lm.eos_ids], skip_special_tokens=True)
    print((prompt if echo else "") + text)
    print(f"speculative decoding: {result.stats.summary()}", file=sys.stderr)
    return 0
