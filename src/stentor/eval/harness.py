"""lm-evaluation-harness on stentor's scorer: any lm-eval task, scored by `eval.scoring.Scorer`.

    from stentor.eval.harness import StentorLM, evaluate_tasks
    lm = StentorLM.from_dir("runs/12m/final")                 # or StentorLM(model, tokenizer); fp32 by default
    results = evaluate_tasks(lm, ["blimp_anaphor_gender_agreement"], limit=100)

`StentorLM` is an lm-eval `LM` (registered as `stentor`) that tokenizes exactly as lm-eval's `hf`
model does (its `_encode_pair`, no BOS unless the context is empty, the same rolling windows), so
the numbers are the `hf` backend's; requests that share a context (a multiple-choice question's
answers) are one tree, scored with the context computed once. Generation (`generate_until`) runs on
the stentor engine. fp32 by default, so the numbers are the hf model's; `precision="bf16"` is faster
and has no re-check (log-likelihoods within ~1e-3; a pair near a tie can flip). lm-eval is an
optional dependency: `pip install 'stentor[lm-eval]'`.
"""

from __future__ import annotations

from collections.abc import Sequence

import lm_eval.models  # noqa: F401  lm-eval fills its model registry only while it is empty: its models first
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from stentor.errors import StentorError
from stentor.eval.loading import load_model_and_tokenizer, start_token_id
from stentor.eval.scoring import Scorer, Tree, encode_texts, resolve_precision


@register_model("stentor")
class StentorLM(TemplateLM):
    def __init__(self, model, tokenizer, precision: str = "fp32", batch_size: int = 64, max_length: int | None = None):
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.precision = resolve_precision(precision, model)
        self.scorer = Scorer(model, self.precision, int(batch_size))
        self._max_length = int(max_length or model.config.max_position_embeddings)
        self._generator = None

    @classmethod
    def from_dir(cls, path: str, tokenizer: str | None = None, **kwargs) -> StentorLM:
        model, tok = load_model_and_tokenizer(path, tokenizer)
        return cls(model, tok, **kwargs)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> StentorLM:
        """`lm_eval --model stentor --model_args model=DIR[,precision=bf16,batch_size=64]`."""
        args = lm_utils.simple_parse_args_string(arg_string)
        args.update({k: v for k, v in (additional_config or {}).items() if k == "batch_size" and v is not None})
        if "model" not in args:
            raise StentorError("--model_args needs model=DIR (a stentor or Hugging Face model directory)")
        return cls.from_dir(args.pop("model"), args.pop("tokenizer", None), **args)

    # -- what TemplateLM needs ---------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return start_token_id(self.tokenizer)  # BOS, else EOS: what lm-eval's hf model conditions an empty context on

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens:
            return self.tokenizer(string).input_ids
        return encode_texts(self.tokenizer, [string])[0]

    def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=kwargs.get("skip_special_tokens", True))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p, is_greedy) of each continuation; the context is cut from the left to fit, as the hf model does."""
        keep = self.max_length + 1
        groups: dict[tuple[int, ...], list[int]] = {}
        conts = []
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise StentorError(f"request {i} has an empty continuation; lm-eval scores at least one token")
            if len(continuation) >= keep:
                raise StentorError(
                    f"request {i}'s continuation is {len(continuation)} tokens, more than the model's context of "
                    f"{self.max_length}; score it with loglikelihood_rolling instead"
                )
            trunk = tuple((list(context) + list(continuation))[-keep:][: -len(continuation)])
            groups.setdefault(trunk, []).append(i)
            conts.append(list(continuation))
        trunks = list(groups)
        scores = self.scorer.score([Tree(t, [conts[i] for i in groups[t]], len(t)) for t in trunks],
                                   not disable_tqdm, "lm-eval loglikelihood")  # fmt: skip
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for trunk, score in zip(trunks, scores):
            for i, logp, greedy in zip(groups[trunk], score.branches, score.greedy):
                out[i] = (logp, greedy)
        for (pair, _, _), answer in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", pair, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in lm-eval's disjoint rolling windows of the model's context."""
        texts = [req.args[0] for req in requests]
        trees, owner = [], []
        for i, ids in enumerate(encode_texts(self.tokenizer, texts)):
            windows = lm_utils.get_rolling_token_windows(ids, self.prefix_token_id, self.max_length, 1)
            for context, continuation in map(lm_utils.make_disjoint_window, windows):
                trees.append(Tree(context, [continuation], len(context)))
                owner.append(i)
        totals = [0.0] * len(texts)
        for i, score in zip(owner, self.scorer.score(trees, not disable_tqdm, "lm-eval rolling")):
            totals[i] += score.branches[0]
        for text, total in zip(texts, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) completions on the stentor engine, cut at the first `until` string."""
        from stentor.infer.api import Stentor
        from stentor.infer.decoding import SamplingParams, fit_prompt

        if self._generator is None:
            self._generator = Stentor(self.model, self.tokenizer)
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id], skip_special_tokens=False)]
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.pop("max_gen_toks", 256))
            sample = bool(kwargs.pop("do_sample", False)) and float(kwargs.get("temperature", 1.0) or 0) > 0
            params = SamplingParams(greedy=not sample, temperature=float(kwargs.get("temperature", 1.0) or 1.0),
                                    top_p=1.0, repetition_penalty=1.0, max_new_tokens=budget)  # fmt: skip
            prompt = fit_prompt(self.tok_encode(context) or [self.prefix_token_id], budget, self.max_length)
            tokens: list[int] = []
            for step in self._generator.generate_ids([prompt], params):
                if step.tokens[0] not in self._generator.eos_ids:
                    tokens.append(step.tokens[0])
            text = self.tok_decode(tokens)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out


def evaluate_tasks(lm: StentorLM, tasks: Sequence[str], *, limit: int | float | None = None,
                   num_fewshot: int | None = None, include_path: str | None = None, **kwargs) -> dict:  # fmt: skip
    """`lm_eval.simple_evaluate` on `lm`; `include_path` adds a directory of task YAMLs (e.g. local data)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise StentorError(f"unknown lm-eval task(s): {', '.join(unknown)}; list them with `lm_eval --tasks list`")
    return simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot, task_manager=manager,
                           **kwargs)  # fmt: skip
