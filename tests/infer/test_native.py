"""The compiled runtime against the real HF model and the HF warpers; the lean load path in a fresh process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import stentor
from stentor.errors import StentorError
from stentor.infer.decoding import SamplingParams
from stentor.infer.native import NativeEngine, Weights
from stentor.infer.sampling import LogitsPipeline
from stentor.model.build import build_model
from stentor.model.presets import get_preset

from engine_helpers import decode_rows

WORDS = ["the", "and", "ing", "Hello", "world", "history", "of", "computing", "school", "once", "upon", "time"]


@pytest.fixture(scope="module", params=["stentor2-tiny", "stentor2-tiny-gqa"])
def pair(request):
    model = build_model(get_preset(request.param), seed=0).eval()
    return model, NativeEngine(Weights.from_model(model), threads=2)


def test_logits_match_hf(pair):
    model, engine = pair
    ids = torch.randint(0, 8000, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(ids).logits.numpy()
    assert np.abs(engine.logits(ids.numpy()) - reference).max() <= 1e-4


@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_greedy_tokens_equal_hf_generate(pair, penalty):
    model, engine = pair
    prompt = torch.randint(0, 8000, (17,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.inference_mode():
        expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 17, dtype=torch.long),
                                  do_sample=False, repetition_penalty=penalty, max_new_tokens=40,
                                  eos_token_id=None, pad_token_id=0)[0, 17:].tolist()
    params = SamplingParams(greedy=True, repetition_penalty=penalty, max_new_tokens=40, stop_at_eos=False)
    assert decode_rows(engine, [prompt], params) == [expected]


def test_rows_at_different_positions_equal_single_runs(pair):
    _, engine = pair
    prompts = [list(range(5, 30)), [7, 8, 9], list(range(1000, 1012))]
    rows = [SamplingParams(greedy=True, max_new_tokens=30, stop_at_eos=False),
            SamplingParams(greedy=True, max_new_tokens=9, stop_at_eos=False),
            SamplingParams(seed=5, max_new_tokens=20, stop_at_eos=False, top_k=5)]
    batched = decode_rows(engine, prompts, rows)
    assert [len(r) for r in batched] == [30, 9, 20]
    assert batched[:2] == [decode_rows(engine, [p], r)[0] for p, r in zip(prompts[:2], rows[:2])]


def test_more_rows_after_a_longer_prompt_stay_inside_the_cache():
    """A slot's stride is the cache's capacity: after a long one-row call, a call with more but shorter rows must
    grow the cache to slots x that capacity (it once checked the shorter length and wrote past the buffer)."""
    model = build_model(get_preset("stentor2-tiny"), seed=0).eval()
    engine, fresh = (NativeEngine(Weights.from_model(model), threads=1) for _ in range(2))
    params = SamplingParams(greedy=True, max_new_tokens=6, stop_at_eos=False)
    decode_rows(engine, [list(range(1, 200))], params)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    assert decode_rows(engine, prompts, params) == decode_rows(fresh, prompts, params)
    w = engine.weights
    assert engine._kv.size >= len(prompts) * w.layers * 2 * w.kv_heads * engine._model.capacity * w.head_dim


def test_seeded_sampling_is_reproducible_and_samples_differ(pair):
    _, engine = pair
    params = SamplingParams(seed=3, max_new_tokens=16, stop_at_eos=False)
    first = decode_rows(engine, [list(range(300, 310))] * 3, params)
    assert first == decode_rows(engine, [list(range(300, 310))] * 3, params)
    assert len({tuple(row) for row in first}) > 1


def test_stops_at_eos_and_finished_rows_leave(pair):
    _, engine = pair
    prompt = list(range(200, 210))
    free = decode_rows(engine, [prompt], SamplingParams(greedy=True, max_new_tokens=30, stop_at_eos=False))[0]
    eos = free[6]
    steps = list(engine.generate([prompt, prompt[:4]], SamplingParams(greedy=True, max_new_tokens=30),
                                 eos_ids={eos}, pad_id=-1))
    first = [s.tokens[0] for s in steps]
    assert first[: free.index(eos) + 1] == free[: free.index(eos) + 1]
    assert all(s.tokens[0] == -1 for s in steps[free.index(eos) + 1 :])


@pytest.mark.parametrize(
    ("settings", "spread"),
    [
        ({}, 3.0),  # the card's: temperature 0.8, top-p 0.7, repetition penalty 1.2
        ({}, 0.3),  # ... on flat logits (a fresh model's): top-p keeps thousands of tokens
        ({"temperature": 1.3, "top_k": 20, "min_p": 0.05}, 3.0),
        ({"temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.0}, 3.0),
    ],
)
def test_sampler_draws_the_hf_distribution(settings, spread):
    """Sweeping the uniform draw over [0, 1) must reproduce HF's warped probabilities token by token."""
    model = build_model(get_preset("stentor2-tiny"), seed=0)
    engine = NativeEngine(Weights.from_model(model), threads=1)
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(1, engine.vocab_size, generator=generator) * spread
    seen = torch.zeros(1, engine.vocab_size, dtype=torch.bool)
    seen[0, :50] = True
    params = SamplingParams(**settings)
    pipeline = LogitsPipeline([params], engine.vocab_size)
    expected = pipeline.warp(pipeline.penalize(logits, seen)).softmax(-1)[0].numpy()
    draws = 4000
    counts = np.zeros(engine.vocab_size)
    for k in range(draws):
        mask = seen.numpy().astype(np.uint8)
        token = engine.sample(logits.numpy(), [params], mask, np.array([(k + 0.5) / draws]))[0]
        counts[token] += 1
        assert mask[0, token] == 1  # the sampler marks the token seen
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(expected))
    assert np.abs(counts / draws - expected).max() <= 2 / draws


def test_unsupported_models_fall_back_to_the_torch_engine(caplog):
    cfg = get_preset("stentor2-tiny")
    model = build_model(cfg, seed=0)
    model.config.hidden_act = "gelu"
    with caplog.at_level(logging.WARNING):
        lm = stentor.infer.Stentor(model, _tokenizer_stub())
    assert lm.backend == "Engine" and "activation 'gelu'" in caplog.text


def _tokenizer_stub():
    from stentor.tokenizer.hf import StentorTokenizer

    return StentorTokenizer.from_vocab(_vocab())


def _vocab():
    from stentor.tokenizer.tokenmonster import build_vocab_from_yaml

    lines = ["charset: utf-8", "capcode: 1", "normalization: nfd", "include-256-bytes: true", "tokens:"]
    for w in WORDS:
        lines += [f'  - token: "{w}"', f'  - token: " {w}"']
    return build_vocab_from_yaml("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def stentor_dir(tmp_path_factory):
    """A tiny model saved with a real StentorTokenizer (a small TokenMonster vocabulary built here)."""
    from stentor.model.build import save_model_dir

    tokenizer = _tokenizer_stub()
    cfg = get_preset("stentor2-tiny").replace(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                              bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("native") / "model"
    return save_model_dir(build_model(cfg, seed=0), cfg, out, tokenizer=tokenizer)


def test_lean_load_needs_no_torch_and_gives_the_torch_engines_text(stentor_dir):
    script = (
        "import json, sys, stentor\n"
        f"lm = stentor.load({str(stentor_dir)!r})\n"
        "text = lm.generate('Hello world, once upon a time', greedy=True, max_new_tokens=24)\n"
        "chat = lm.encode('hello', chat=True)\n"
        "stream = ''.join(lm.stream('the history of', seed=1, max_new_tokens=24))\n"
        "again = lm.generate('the history of', seed=1, max_new_tokens=24)\n"
        "import stentor.infer.server\n"
        "from stentor.infer.speculative import speculative_generate\n"
        "draft = stentor.load(lm._source)\n"
        "ids = lm.encode('Hello world, once upon a time')\n"
        "drafted = speculative_generate(lm.engine, draft.engine, ids, 3, greedy=True, max_new_tokens=24)\n"
        "assert lm.tokenizer.decode(drafted.tokens, skip_special_tokens=True) == text, 'speculative != plain greedy'\n"
        "heavy = [m for m in ('torch', 'transformers', 'numba') if m in sys.modules]\n"
        "print(json.dumps([lm.backend, text, chat, stream == again, heavy]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    backend, text, chat, stream_ok, heavy = json.loads(out.stdout.splitlines()[-1])
    assert backend == "NativeEngine" and heavy == [] and stream_ok
    torch_lm = stentor.load(stentor_dir, engine="torch")
    assert text == torch_lm.generate("Hello world, once upon a time", greedy=True, max_new_tokens=24)
    assert chat == torch_lm.encode("hello", chat=True)


def test_codec_equals_the_hf_tokenizer(stentor_dir):
    from stentor.tokenizer.codec import TextCodec
    from stentor.tokenizer.hf import load_tokenizer

    codec, hf = TextCodec.from_dir(stentor_dir), load_tokenizer(stentor_dir)
    texts = ["Hello world", "  the history</s> of<s>computing ", "naïve café \U0001f642", ""]
    for text in texts:
        ids = hf(text)["input_ids"]
        assert codec.encode(text) == ids and codec.encode(text, add_special_tokens=False) == hf(
            text, add_special_tokens=False)["input_ids"]
        for skip in (True, False):
            assert codec.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert codec.apply_chat_template(messages) == hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                          tokenize=False)
    assert (codec.bos_token_id, codec.eos_token_id, codec.pad_token_id) == (hf.bos_token_id, hf.eos_token_id,
                                                                           hf.pad_token_id)


def test_damaged_weights_are_a_clear_error(stentor_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(stentor_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(StentorError, match="not a valid safetensors file"):
        stentor.load(broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(data)
    config["num_hidden_layers"] += 1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(StentorError, match="lack"):
        stentor.load(broken)


def test_without_the_compiled_library_stentor_runs_on_torch_with_a_notice(stentor_dir):
    script = (
        "import sys, logging\n"
        "logging.basicConfig()\n"
        "sys.modules['stentor.infer._kernels'] = None  # as an install without a C compiler\n"
        "import stentor\n"
        f"lm = stentor.load({str(stentor_dir)!r})\n"
        "print(lm.backend, lm.generate('Hello world', greedy=True, max_new_tokens=8) != '')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["Engine", "True"]
    notices = [line for line in out.stderr.splitlines() if "torch engine" in line]
    assert len(notices) == 1 and "without its compiled runtime" in notices[0]


def test_stentor_tokenizer_fast_paths_equal_transformers_own(stentor_dir):
    """The regex split of added tokens and the one-table id look-up give what transformers' trie path gives."""
    from transformers import PreTrainedTokenizer

    from stentor.tokenizer.hf import load_tokenizer

    tok = load_tokenizer(stentor_dir)
    for text in ["Hello world", "a</s>b<s><s>c <reserved_3>d</s", "  naïve\\n\\n café 日本 ", "<reserved_10><reserved_1>"]:
        assert tok.tokenize(text) == PreTrainedTokenizer.tokenize(tok, text)
        names = PreTrainedTokenizer.tokenize(tok, text)
        assert tok.convert_tokens_to_ids(names) == PreTrainedTokenizer.convert_tokens_to_ids(tok, names)
    texts = ["Hello world", "a</s>b<s><s>c <reserved_3>d</s", "  naïve\n\n café 日本 ", "", "x<reserved_10>"]
    for add in (False, True):  # the scorers' batch path skips transformers' per-text machinery, not its result
        assert tok.encode_many(texts, add_special_tokens=add) == tok(texts, add_special_tokens=add).input_ids
    tok.add_tokens(["<|user|>"])  # a token added later is split out too
    text = "hi <|user|> there"
    assert tok.tokenize(text) == PreTrainedTokenizer.tokenize(tok, text) and "<|user|>" in tok.tokenize(text)
    assert tok.convert_tokens_to_ids("<|user|>") in tok(text)["input_ids"]
    assert tok.encode_many([text]) == [tok(text)["input_ids"]]


def test_engines_used_from_two_threads_at_once_give_their_own_results(pair):
    """ctypes drops the GIL: concurrent calls take turns on the one thread pool instead of corrupting it."""
    import threading

    model, _ = pair
    engines = [NativeEngine(Weights.from_model(model), threads=t) for t in (2, 1)]  # two pool sizes, too
    params = SamplingParams(greedy=True, max_new_tokens=40, stop_at_eos=False)
    prompts = [list(range(10, 30)), list(range(500, 507))]
    expected = [decode_rows(e, [p], params)[0] for e, p in zip(engines, prompts)]
    got: list = [None, None]

    def run(i: int) -> None:
        got[i] = [decode_rows(engines[i], [prompts[i]], params)[0] for _ in range(5)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert got == [[expected[0]] * 5, [expected[1]] * 5]


def test_a_forked_child_runs_single_threaded_instead_of_hanging(pair):
    import multiprocessing

    model, engine = pair
    engine.lib.st_set_threads(2)
    params = SamplingParams(greedy=True, max_new_tokens=12, stop_at_eos=False)
    prompt = list(range(40, 52))
    expected = decode_rows(engine, [prompt], params)[0]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=lambda: queue.put(decode_rows(engine, [prompt], params)[0]))
    child.start()
    child.join(60)
    if child.is_alive():  # the hang this test is about: do not leave it behind
        child.kill()
    assert child.exitcode == 0 and queue.get(timeout=5) == expected



@pytest.mark.parametrize("layout", ["bfloat16", "float16", "sharded"])
def test_half_precision_and_sharded_directories_map_exactly(layout, tmp_path):
    """bf16/fp16 weights widen to the float32 HF computes with; a sharded save maps through its index."""
    model = build_model(get_preset("stentor2-tiny"), seed=0).eval()
    if layout == "sharded":
        model.save_pretrained(tmp_path, max_shard_size="300KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:
        model.to(getattr(torch, layout)).save_pretrained(tmp_path)
        model = model.float()
    engine = NativeEngine(Weights.from_dir(tmp_path), threads=1)
    ids = torch.randint(0, 8000, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(ids).logits.numpy()
    assert np.abs(engine.logits(ids.numpy()) - reference).max() <= 1e-4


@pytest.mark.parametrize("bf16", [False, True])
def test_scoring_stages_equal_torch(bf16):
    """The compiled scoring stages (norm, SiLU gate, log-softmax) against torch on the same inputs."""
    from stentor.infer.native import Stages

    stages = Stages(2)
    dtype = torch.bfloat16 if bf16 else torch.float32
    gen = torch.Generator().manual_seed(0)
    n, d, inner, vocab = 37, 80, 72, 500
    x = torch.randn(n, d, generator=gen)
    add = torch.randn(n, d, generator=gen).to(dtype)
    w = torch.rand(d, generator=gen) + 0.5
    y = torch.empty(n, d, dtype=dtype)
    expected_x = x + add.float()
    expected_y = (expected_x * torch.rsqrt(expected_x.pow(2).mean(-1, keepdim=True) + 1e-5) * w).to(dtype)
    stages.add_norm(n, d, bf16, x.data_ptr(), add.data_ptr(), w.data_ptr(), 1e-5, y.data_ptr())
    assert torch.allclose(x, expected_x, atol=1e-6)
    assert torch.allclose(y.float(), expected_y.float(), atol=1e-5 if not bf16 else 1e-2)

    gate_up = torch.randn(n, 2 * inner, generator=gen).to(dtype)
    out = torch.empty(n, inner, dtype=dtype)
    stages.glu(n, inner, bf16, gate_up.data_ptr(), out.data_ptr())
    g, u = gate_up.float()[:, :inner], gate_up.float()[:, inner:]
    assert torch.allclose(out.float(), (torch.nn.functional.silu(g) * u).to(dtype).float(), atol=1e-5, rtol=1e-2 if bf16 else 1e-5)

    logits = (torch.randn(n, vocab, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[0] = int(logits[0].float().argmax())
    logp = torch.empty(n, dtype=torch.float64)
    greedy = torch.empty(n, dtype=torch.bool)
    stages.logprobs(n, vocab, bf16, logits.data_ptr(), targets.data_ptr(), logp.data_ptr(), greedy.data_ptr())
    ref = torch.log_softmax(logits.double(), -1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(logp, ref, atol=1e-5)
    assert greedy.tolist() == (logits.float().argmax(1) == targets).tolist() and greedy[0]
    targets[3] = vocab
    with pytest.raises(StentorError, match="outside the vocabulary"):
        stages.logprobs(n, vocab, bf16, logits.data_ptr(), targets.data_ptr(), logp.data_ptr(), greedy.data_ptr())


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("hidden", [64, 48])  # 48: rows of 48 and 144 floats end in a masked part of 16
def test_a_row_gets_the_same_bits_alone_or_in_a_batch(int8, hidden):
    """Batched matmuls take rows four (then two, then one) at a time through each block of weights; a
    row's logits must not depend on which group it fell in (15 rows together: three fours, a two and a
    one; 3 rows alone: a two and a one)."""
    import dataclasses

    from stentor.export.quantize import QuantConfig, quantize_model

    config = dataclasses.replace(get_preset("stentor2-tiny"), hidden_size=hidden, intermediate_size=3 * hidden)
    model = build_model(config, seed=0).eval()
    if int8:
        model = quantize_model(model, QuantConfig("int8"))
    engine = NativeEngine(Weights.from_model(model), threads=2)
    sequences = [[5, 9, 200], [7, 7, 1], [1000, 3, 4], [2, 4, 8], [16, 32, 64]]
    together = engine.logits(sequences)
    for i, sequence in enumerate(sequences):
        assert np.array_equal(engine.logits([sequence])[0], together[i])
