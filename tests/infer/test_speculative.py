"""Speculative decoding with real tiny HF Llama models: greedy equality, exact sampling, vocabulary checks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from stentor.errors import StentorError
from stentor.eval.loading import load_model
from stentor.infer.sampling import LogitsPipeline, SamplingParams
from stentor.infer.speculative import speculative_generate
from stentor.model import get_preset
from stentor.model.build import build_model


def _model(seed: int, vocab: int = 384, **arch):
    cfg = get_preset("stentor2-tiny").replace(vocab_size=vocab, bos_token_id=1, eos_token_id=0, pad_token_id=0, **arch)
    return build_model(cfg, seed=seed).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small are dominated by per-op overhead; extra threads only add contention on shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    target = _model(0, num_hidden_layers=3)
    draft = _model(1, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    return target, draft


PROMPT = [1, 17, 200, 45, 9, 300]


@pytest.mark.parametrize(("k", "penalty"), [(1, 1.3), (4, 1.0), ("adaptive", 1.3)])
def test_greedy_equals_target_only_greedy(pair, k, penalty):
    target, draft = pair
    with torch.no_grad():
        want = target.generate(
            torch.tensor([PROMPT]), max_new_tokens=24, do_sample=False, repetition_penalty=penalty, eos_token_id=None
        )[0, len(PROMPT) :].tolist()
    params = SamplingParams(greedy=True, repetition_penalty=penalty, max_new_tokens=24, stop_at_eos=False)
    result = speculative_generate(target, draft, PROMPT, k, params=params)
    assert result.tokens == want
    assert result.stats.new_tokens == 24 and result.stats.target_calls < 24 + 1
    assert result.stats.proposed >= result.stats.accepted >= 0


def test_a_perfect_draft_is_always_accepted_and_k_grows(pair):
    target, _ = pair
    result = speculative_generate(target, target, PROMPT, "adaptive", temperature=0.8, top_p=0.9, seed=3, max_new_tokens=30)
    stats = result.stats
    assert stats.acceptance_rate == 1.0 and len(result.tokens) == 30
    assert stats.k_history[:4] == [4, 5, 6, 7] and stats.tokens_per_target_call > 4
    assert "acceptance 100.0%" in stats.summary()


def test_seeded_sampling_is_reproducible(pair):
    target, draft = pair
    runs = [speculative_generate(target, draft, PROMPT, 3, seed=11, max_new_tokens=20).tokens for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 20


def test_transformers_assistant_model_greedy_matches(pair):
    target, draft = pair
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        plain = target.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None)
        assisted = target.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None, assistant_model=draft)
    assert assisted.tolist() == plain.tolist()


def _processed_target(model, prefix: list[int], params: SamplingParams) -> torch.Tensor:
    """Target-only next-token distribution after the sampling pipeline (penalty over the whole prefix)."""
    pipeline = LogitsPipeline([params], model.config.vocab_size)
    seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool)
    seen[0, prefix] = True
    with torch.no_grad():
        logits = model(torch.tensor([prefix])).logits[:, -1].float()
    return pipeline.warp(pipeline.penalize(logits, seen)).softmax(-1)[0]


def _chi2(counts: Counter, expected: dict, n: int) -> tuple[float, int]:
    """Pearson chi-square with bins of expected count < 5 pooled; returns (statistic, degrees of freedom)."""
    stat, pooled_obs, pooled_exp, bins = 0.0, 0, 0.0, 0
    for key, p in expected.items():
        if p * n < 5:
            pooled_obs, pooled_exp = pooled_obs + counts.get(key, 0), pooled_exp + p * n
            continue
        stat += (counts.get(key, 0) - p * n) ** 2 / (p * n)
        bins += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        bins += 1
    return stat, bins - 1


def _native(model):
    from stentor.infer.native import NativeEngine, Weights

    return NativeEngine(Weights.from_model(model), threads=1)


@pytest.mark.parametrize("runtime", ["torch", "native"])
def test_sampled_tokens_follow_the_target_distribution(runtime):
    """Vocab 16, sharply different draft and target, repetition penalty on: the first token and the first
    two tokens (draft k=1: the accept + bonus, reject + residual and target-only paths all run), sampled
    1,200 times with a fixed seed, pass a chi-square test against the target-only
    processed distribution, while the draft's own distribution fails it by far."""
    tiny = dict(vocab=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, tie_word_embeddings=False)
    target, draft = _model(0, **tiny), _model(5, **tiny)
    with torch.no_grad():  # sharpen both output distributions so that they differ clearly
        target.lm_head.weight.mul_(10)
        draft.lm_head.weight.mul_(10)
    params = SamplingParams(temperature=0.9, top_p=0.95, repetition_penalty=1.5, max_new_tokens=2, stop_at_eos=False)
    prompt = [1, 5, 9]
    p1 = _processed_target(target, prompt, params)
    q1 = _processed_target(draft, prompt, params)
    assert 0.5 * (p1 - q1).abs().sum() > 0.3  # the draft alone would be easy to tell apart

    torch.manual_seed(0)  # the runs below draw from the global generator (seed=None)
    n = 1200
    firsts, pairs, accepted = Counter(), Counter(), 0
    models = (target, draft) if runtime == "torch" else (_native(target), _native(draft))
    for i in range(n):
        result = speculative_generate(*models, prompt, 1, params=params if runtime == "torch" else params.replace(seed=i))
        firsts[result.tokens[0]] += 1
        pairs[tuple(result.tokens[:2])] += 1
        accepted += result.stats.accepted
    expected_first = {t: float(p1[t]) for t in range(16)}
    stat, df = _chi2(firsts, expected_first, n)
    assert stat < df + 4 * (2 * df) ** 0.5, (stat, df)
    expected_pairs = {
        (a, b): float(p1[a]) * float(_processed_target(target, prompt + [a], params)[b])
        for a in range(16) if p1[a] > 0 for b in range(16)
    }
    stat, df = _chi2(pairs, expected_pairs, n)
    assert stat < df + 4 * (2 * df) ** 0.5, (stat, df)
    wrong, wrong_df = _chi2(firsts, {t: float(q1[t]) for t in range(16)}, n)
    assert wrong > 10 * (wrong_df + 4 * (2 * wrong_df) ** 0.5)
    assert 0.1 * n < accepted < 0.9 * n  # both acceptance and rejection paths ran often


@pytest.mark.parametrize(("k", "penalty"), [(1, 1.3), (4, 1.0), ("adaptive", 1.3)])
def test_on_the_runtime_greedy_equals_target_only_greedy(pair, k, penalty):
    target, draft = pair
    engine = _native(target)
    params = SamplingParams(greedy=True, repetition_penalty=penalty, max_new_tokens=24, stop_at_eos=False)
    want = [step.tokens[0] for step in engine.generate([PROMPT], params)]
    result = speculative_generate(engine, _native(draft), PROMPT, k, params=params)
    assert result.tokens == want and result.stats.target_calls < 24 + 1
    perfect = speculative_generate(engine, _native(target), PROMPT, "adaptive", temperature=0.8, seed=3,
                                   max_new_tokens=30, stop_at_eos=False)
    assert perfect.stats.acceptance_rate == 1.0 and len(perfect.tokens) == 30


def test_incompatible_vocabularies_are_refused(pair):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    target, _ = pair
    other = _model(2, vocab=512)
    with pytest.raises(StentorError, match="512 ids but the target's has 384"):
        speculative_generate(target, other, PROMPT, 4, greedy=True, max_new_tokens=4)

    def bpe(text: str):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text * 50], trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    a, b = bpe("the cat sat on the mat. "), bpe("dogs run in the park! ")
    with pytest.raises(StentorError, match=r"tokenizers differ \(\d+ ids, e\.g\. id \d+"):
        speculative_generate(target, pair[1], PROMPT, 4, greedy=True, target_tokenizer=a, draft_tokenizer=b)
    result = speculative_generate(target, pair[1], PROMPT, 4, greedy=True, max_new_tokens=3, target_tokenizer=a, draft_tokenizer=a)
    assert len(result.tokens) <= 3


def test_bad_arguments(pair):
    target, draft = pair
    with pytest.raises(StentorError, match="positive integer or 'adaptive'"):
        speculative_generate(target, draft, PROMPT, 0)
    with pytest.raises(StentorError, match="unknown sampling option"):
        speculative_generate(target, draft, PROMPT, 2, temprature=0.5)
    with pytest.raises(StentorError, match="batch 1"):
        speculative_generate(target, draft, torch.ones(2, 3, dtype=torch.long), 2)
    with pytest.raises(StentorError, match="empty prompt"):
        speculative_generate(target, draft, [], 2)


@pytest.fixture(scope="module")
def draft_dir(tiny_dir, tmp_path_factory):
    """A 1-layer draft for `tiny_dir`, with the target's tokenizer files."""
    import shutil

    from stentor.model.build import save_model_dir

    target_cfg = load_model(str(tiny_dir)).config
    cfg = get_preset("stentor2-tiny").replace(
        vocab_size=target_cfg.vocab_size, bos_token_id=target_cfg.bos_token_id, eos_token_id=target_cfg.eos_token_id,
        pad_token_id=target_cfg.pad_token_id, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    )
    out = save_model_dir(build_model(cfg, seed=4), cfg, tmp_path_factory.mktemp("draft") / "draft")
    for item in tiny_dir.iterdir():
        if item.name.startswith("tokenizer") or item.name == "special_tokens_map.json":
            shutil.copy2(item, out / item.name)
    return out


def test_cli_generate_with_draft_matches_plain_greedy(tiny_dir, draft_dir, capsys):
    """`stentor generate --draft`: greedy text is unchanged, the draft's statistics go to stderr."""
    from stentor.cli import main

    common = ["generate", "--model", str(tiny_dir), "--greedy", "--max-new-tokens", "12", "--no-echo"]
    assert main([*common, "Once upon a time"]) == 0
    plain = capsys.readouterr().out
    assert main([*common, "--draft", str(draft_dir), "--draft-k", "adaptive", "Once upon a time"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == plain.strip() and "draft acceptance" in captured.err
    assert main([*common, "--draft", str(draft_dir), "--draft-k", "zero", "hi"]) == 2
    assert "--draft-k must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_with_a_draft_keeps_the_text_and_reports_the_acceptance(tiny_dir, draft_dir):
    import json

    import httpx
    from serving import stentor_serve

    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "logprobs": 2}
    with stentor_serve(tiny_dir) as (_, plain), stentor_serve(tiny_dir, "--draft", str(draft_dir)) as (_, drafted):
        want = httpx.post(f"{plain}/v1/completions", json=body, timeout=60).json()["choices"][0]
        got = httpx.post(f"{drafted}/v1/completions", json=body, timeout=60).json()["choices"][0]
        with httpx.stream("POST", f"{drafted}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        refused = [httpx.post(f"{drafted}/v1/completions", json={**body, name: value}) for name, value in
                   (("suppress_replacement_tokens", True), ("frequency_penalty", 0.5), ("logit_bias", {"5": 1}))]
        page = httpx.get(f"{drafted}/playground/config.json").json()
    assert got["text"] == want["text"] and got["logprobs"]["token_ids"] == want["logprobs"]["token_ids"]
    assert got["logprobs"]["token_logprobs"] == pytest.approx(want["logprobs"]["token_logprobs"], abs=1e-4)
    spec = got["speculative"]
    assert spec["proposed"] > 0 and 0 <= spec["accepted"] <= spec["proposed"]
    assert spec["acceptance_rate"] == pytest.approx(spec["accepted"] / spec["proposed"], abs=1e-4)
    assert "speculative" not in want
    assert chunks[-1]["choices"][0]["speculative"] == spec  # the stream's last chunk carries it too
    assert "".join(c["choices"][0]["text"] for c in chunks) == want["text"]
    assert all(r.status_code == 400 and "--draft" in r.json()["error"]["message"] for r in refused)
    assert page["draft"] is True
