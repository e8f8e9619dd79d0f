"""The decode engine against the real HF model: logits, greedy and seeded-sampling tokens."""

from __future__ import annotations

import logging

import pytest
import torch

from stentor.errors import StentorError
from stentor.infer.engine import Engine
from stentor.infer.sampling import SamplingParams
from stentor.model.build import build_model
from stentor.model.presets import get_preset

from engine_helpers import decode_rows

PRESETS = ["stentor2-tiny", "stentor2-tiny-gqa"]


@pytest.fixture(scope="module", params=PRESETS)
def pair(request):
    model = build_model(get_preset(request.param), seed=0).eval()
    return model, Engine(model)


def hf_generate(model, prompt: list[int], seed: int | None = None, n: int = 1, **kwargs) -> list[list[int]]:
    ids = torch.tensor([prompt])
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), eos_token_id=None, pad_token_id=0, num_return_sequences=n, **kwargs
        )
    return out[:, len(prompt) :].tolist()


def test_logits_match_hf_with_left_padding(pair):
    model, engine = pair
    ids = torch.randint(0, 8000, (3, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[2, :17] = 0
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
    logits = engine.logits(ids, mask)
    assert (reference - logits)[mask.bool()].abs().max().item() <= 1e-4


@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_greedy_tokens_equal_hf_generate(pair, penalty):
    model, engine = pair
    prompt = torch.randint(0, 8000, (17,), generator=torch.Generator().manual_seed(2)).tolist()
    expected = hf_generate(model, prompt, do_sample=False, repetition_penalty=penalty, max_new_tokens=24)
    params = SamplingParams(greedy=True, repetition_penalty=penalty, max_new_tokens=24, stop_at_eos=False)
    assert decode_rows(engine, [prompt], params) == expected


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the card's settings: temperature 0.8, top-p 0.7, repetition penalty 1.2
        {"top_k": 20, "min_p": 0.02, "temperature": 1.3},
    ],
)
def test_seeded_sampling_equals_hf_generate(pair, settings):
    model, engine = pair
    params = SamplingParams(seed=7, max_new_tokens=24, stop_at_eos=False, **settings)
    prompt = list(range(100, 112))
    expected = hf_generate(
        model,
        prompt,
        seed=7,
        do_sample=True,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        max_new_tokens=24,
    )
    assert decode_rows(engine, [prompt], params) == expected


def test_num_samples_equal_hf_num_return_sequences(pair):
    model, engine = pair
    prompt = list(range(300, 310))
    expected = hf_generate(model, prompt, seed=3, n=3, do_sample=True, temperature=0.8, top_p=0.7, top_k=0,
                           repetition_penalty=1.2, max_new_tokens=12)
    got = decode_rows(engine, [prompt] * 3, SamplingParams(seed=3, max_new_tokens=12, stop_at_eos=False))
    assert got == expected
    assert len({tuple(row) for row in got}) > 1


def test_left_padded_batch_rows_equal_single_runs(pair):
    _, engine = pair
    prompts = [list(range(5, 30)), [7, 8, 9], list(range(1000, 1012))]
    params = SamplingParams(greedy=True, max_new_tokens=30, stop_at_eos=False)
    batched = decode_rows(engine, prompts, params)
    assert batched == [decode_rows(engine, [p], params)[0] for p in prompts]


def test_per_row_settings_in_one_batch(pair):
    _, engine = pair
    prompts = [list(range(40, 50)), list(range(60, 66))]
    rows = [SamplingParams(greedy=True, max_new_tokens=12, stop_at_eos=False),
            SamplingParams(seed=5, max_new_tokens=7, stop_at_eos=False, top_k=5)]
    batched = decode_rows(engine, prompts, rows)
    assert [len(r) for r in batched] == [12, 7]
    assert batched[0] == decode_rows(engine, prompts[:1], rows[0])[0]
    assert batched[1] == decode_rows(engine, prompts[1:], rows[1])[0]


def test_stops_at_eos(pair):
    _, engine = pair
    prompt = list(range(200, 210))
    free = decode_rows(engine, [prompt], SamplingParams(greedy=True, max_new_tokens=30, stop_at_eos=False))[0]
    eos = free[6]
    stopped = decode_rows(engine, [prompt], SamplingParams(greedy=True, max_new_tokens=30), eos_ids={eos})[0]
    assert stopped == free[: free.index(eos) + 1]


def test_long_prompt_keeps_its_last_tokens(pair, caplog):
    _, engine = pair
    prompt = list(range(engine.max_positions + 40))
    with caplog.at_level(logging.WARNING):
        kept = engine.fit_prompt(prompt, max_new_tokens=16)
    assert kept == prompt[-(engine.max_positions - 16) :]
    assert "keeping its last" in caplog.text
    assert engine.fit_prompt(prompt[:10], 16) == prompt[:10]
    steps = list(engine.generate([prompt[-(engine.max_positions - 3) :]], SamplingParams(max_new_tokens=50, seed=0)))
    assert len(steps) <= 3  # generation stops at the end of the context


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"repetition_penalty": 0.0},
        {"max_new_tokens": 0},
        {"top_k": -1},
        {"min_p": 2.0},
        {"num_samples": 0},
        {"temperature": float("nan")},
        {"presence_penalty": 2.5},
        {"frequency_penalty": True},
        {"logit_bias": ((1, 200.0),)},
        {"logit_bias": {1: 2.0}},
    ],
)
def test_bad_sampling_settings_raise(bad):
    with pytest.raises(StentorError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_rejects_non_llama_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(StentorError, match="--engine hf"):
        Engine(model)


@pytest.fixture(scope="module", params=["torch", "native"])
def any_engine(request):
    model = build_model(get_preset("stentor2-tiny-gqa"), seed=0).eval()
    if request.param == "torch":
        return model, Engine(model)
    from stentor.infer.native import NativeEngine, Weights

    return model, NativeEngine(Weights.from_model(model))


def test_logprobs_are_the_raw_log_softmax_whatever_the_sampler_does(any_engine):
    model, engine = any_engine
    prompts = [list(range(10, 30)), [5, 6, 7]]
    rows = [SamplingParams(seed=3, max_new_tokens=6, stop_at_eos=False, logprobs=4, temperature=0.7, top_k=9),
            SamplingParams(greedy=True, max_new_tokens=6, stop_at_eos=False)]  # fmt: skip
    steps = list(engine.generate(prompts, rows))
    assert all(s.logprobs[1] is None for s in steps)
    new = [s.tokens[0] for s in steps]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0] + new])).logits[0].double()
    ref = torch.log_softmax(logits, -1)[len(prompts[0]) - 1 : -1]
    for k, step in enumerate(steps):
        lp = step.logprobs[0]
        assert lp.logprob == pytest.approx(float(ref[k, new[k]]), abs=1e-4)
        best = ref[k].topk(4)
        assert [t for t, _ in lp.top] == best.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_rows_go_on_after_the_only_row_asking_for_logprobs_has_finished(any_engine):
    """Found by `bench_serve.py load`: the batch's remaining rows, none asking for logprobs, broke the step."""
    _, engine = any_engine
    rows = [SamplingParams(greedy=True, max_new_tokens=2, stop_at_eos=False, logprobs=1),
            SamplingParams(greedy=True, max_new_tokens=5, stop_at_eos=False)]  # fmt: skip
    steps = list(engine.generate([[5, 6, 7], [8, 9]], rows))
    assert len(steps) == 5 and all(s.logprobs[0] is not None for s in steps[:2])
    assert [s.tokens[1] for s in steps] == decode_rows(engine, [[8, 9]], rows[1])[0]


def test_a_cancelled_row_ends_at_once_and_the_others_go_on(any_engine):
    _, engine = any_engine
    prompts = [list(range(40, 50)), list(range(60, 66))]
    params = SamplingParams(greedy=True, max_new_tokens=20, stop_at_eos=False)
    alone = decode_rows(engine, prompts[1:], params)[0]
    seen = []

    def cancelled(i: int) -> bool:
        seen.append(i)
        return i == 0 and len(seen) > 6  # row 0's client leaves after a few steps

    rows = decode_rows(engine, prompts, params, cancelled=cancelled)
    assert 3 <= len(rows[0]) < 20 and rows[1] == alone


def openai_adjusted_greedy(model, prompt: list[int], steps: int, bias: dict, presence: float, frequency: float,
                           repetition: float) -> list[int]:  # fmt: skip
    """OpenAI's logit_bias and presence/frequency penalties (over generated tokens) then HF's repetition
    penalty and the arg-max, one full forward per step: the reference the engines must equal."""
    from transformers import RepetitionPenaltyLogitsProcessor

    ids, counts = list(prompt), torch.zeros(model.config.vocab_size)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].clone()
        for token, value in bias.items():
            logits[token] += value
        logits -= frequency * counts + presence * (counts > 0).float()
        logits = RepetitionPenaltyLogitsProcessor(repetition)(torch.tensor([ids]), logits[None])[0]
        ids.append(int(logits.argmax()))
        counts[ids[-1]] += 1
    return ids[len(prompt):]


def test_logit_bias_and_presence_frequency_penalties_as_openai_defines_them(any_engine):
    model, engine = any_engine
    prompts = [list(range(10, 30)), [5, 6, 7], [5, 6, 7]]
    settings = [dict(bias={}, presence=0.0, frequency=1.5), dict(bias={77: 6.0, 78: -100.0}, presence=1.0, frequency=0.0),
                dict(bias={}, presence=0.0, frequency=0.0)]  # fmt: skip
    rows = [SamplingParams(greedy=True, max_new_tokens=12, stop_at_eos=False, repetition_penalty=1.2,
                           presence_penalty=s["presence"], frequency_penalty=s["frequency"],
                           logit_bias=tuple(s["bias"].items())) for s in settings]  # fmt: skip
    expected = [openai_adjusted_greedy(model, p, 12, repetition=1.2, **s) for p, s in zip(prompts, settings)]
    assert decode_rows(engine, prompts, rows) == expected
    assert expected[1] != expected[2] and 77 in expected[1]  # the adjustments changed what was picked
    plain = openai_adjusted_greedy(model, prompts[0], 12, {}, 0.0, 0.0, 1.2)
    assert plain != expected[0]
    with pytest.raises(StentorError, match="outside the vocabulary"):
        list(engine.generate([[1, 2]], SamplingParams(logit_bias=((10**6, 1.0),))))
