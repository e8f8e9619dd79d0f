"""`stentor serve` in a subprocess on loopback, driven by the real `openai` client and httpx."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serving import stentor_serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir):
    with stentor_serve(tiny_dir, "--model-name", "tiny", "--max-tokens", "64", "--max-prompt-tokens", "100",
                       "--max-body-bytes", "4096", "--batch-wait-ms", "20") as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server[1]}/v1", api_key="unused", timeout=60, max_retries=0)


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{server[1]}/health").json()["status"] == "ok"


def test_completion(client):
    out = client.completions.create(model="tiny", prompt="The history of", max_tokens=12, seed=1)
    choice = out.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 0
    again = client.completions.create(model="tiny", prompt="The history of", max_tokens=12, seed=1)
    assert again.choices[0].text == choice.text


def test_streamed_completion_matches_plain(client):
    plain = client.completions.create(model="tiny", prompt="Once upon", max_tokens=16, seed=5).choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=16, seed=5, stream=True))
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_plain_and_streamed(client):
    messages = [{"role": "user", "content": "hello"}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, seed=2)
    assert plain.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, seed=2, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == plain.choices[0].message.content
    two = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, seed=2, n=2)
    assert sorted(c.index for c in two.choices) == [0, 1]


def test_sse_wire_format(server):
    body = {"model": "tiny", "prompt": "School", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server[1]}/v1/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def hf_logprobs(model_dir, ids: list[int], start: int):
    """log-softmax of the HF model's raw logits at each position from `start` on (float64)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1)[start - 1 : len(ids) - 1]


def test_completion_logprobs_are_the_models_raw_log_softmax(client, tiny_dir):
    from transformers import AutoTokenizer

    out = client.completions.create(model="tiny", prompt="The history of", max_tokens=10, seed=3, logprobs=3)
    lp = out.choices[0].logprobs
    ids = lp.model_extra["token_ids"]
    assert len(ids) == len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    prompt = tok("The history of").input_ids
    ref = hf_logprobs(tiny_dir, prompt + ids, len(prompt))  # sampled at temperature 0.8 with a penalty: raw logits
    for k, token in enumerate(ids):
        assert lp.token_logprobs[k] == pytest.approx(float(ref[k, token]), abs=1e-4)
        best = ref[k].topk(3)
        assert list(lp.top_logprobs[k].values()) == pytest.approx(best.values.tolist(), abs=1e-4)
    offsets, text = lp.text_offset, out.choices[0].text
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] <= len(text)
    for k, piece in enumerate(lp.tokens):  # a whole-character piece sits at its offset in the text
        if not piece.startswith("<"):
            assert text[offsets[k] :].startswith(piece), (k, piece)
    streamed = client.completions.create(model="tiny", prompt="The history of", max_tokens=10, seed=3, logprobs=3,
                                         stream=True)  # fmt: skip
    chunks = [c.choices[0].logprobs for c in streamed if c.choices[0].logprobs]
    assert [i for c in chunks for i in c.model_extra["token_ids"]] == ids
    assert [x for c in chunks for x in c.token_logprobs] == lp.token_logprobs


def test_chat_logprobs_and_their_limits(client, server):
    messages = [{"role": "user", "content": "hello"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, seed=2, logprobs=True,
                                         top_logprobs=2)  # fmt: skip
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    assert all(t.logprob <= 0 for t in content)
    assert all(bytes(t.bytes).decode() == t.token for t in content if not t.token.startswith("<"))
    assert client.chat.completions.create(model="tiny", messages=messages, max_tokens=3).choices[0].logprobs is None
    for body, fragment in [({"prompt": "x", "logprobs": 6}, "between 0 and 5"),
                           ({"messages": messages, "top_logprobs": 2}, "needs 'logprobs': true"),
                           ({"messages": messages, "logprobs": True, "top_logprobs": 21}, "between 0 and 20"),
                           ({"messages": messages, "logprobs": 3}, "true or false")]:  # fmt: skip
        path = "chat/completions" if "messages" in body else "completions"
        r = httpx.post(f"{server[1]}/v1/{path}", json=body, timeout=30)
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], body


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), "unknown model"),
        (json.dumps({"prompt": 5}).encode(), "'prompt' must be"),
        (json.dumps({"prompt": "x", "max_tokens": "ten"}).encode(), "'max_tokens' must be an integer"),
        (json.dumps({"prompt": "x", "max_tokens": 65}).encode(), "between 1 and 64"),
        (json.dumps({"prompt": "x", "temperature": -1}).encode(), "temperature"),
        (json.dumps({"prompt": "x", "top_p": 0}).encode(), "top_p"),
        (json.dumps({"prompt": "x", "repetition_penalty": 0}).encode(), "repetition_penalty"),
        (json.dumps({"prompt": "x " * 150}).encode(), "at most 100"),
        (json.dumps({"prompt": "x", "stream": "yes"}).encode(), "'stream' must be"),
        (json.dumps({"prompt": list(range(300))}).encode(), "the prompt has 300 tokens"),  # counted before any cut
        # values that once passed validation and then failed inside the decode step, taking the batch down
        (json.dumps({"prompt": "x", "top_k": 2**63}).encode(), "'top_k' is out of range"),
        (json.dumps({"prompt": "x", "top_k": 2**40}).encode(), "top_k"),
        (json.dumps({"prompt": "x", "seed": 2**64}).encode(), "'seed' is out of range"),
        (json.dumps({"prompt": "x", "temperature": 1e-308}).encode(), "temperature"),
        (json.dumps({"prompt": "x", "repetition_penalty": 1e-308}).encode(), "repetition_penalty"),
        (json.dumps({"prompt": "x", "temperature": 10**400}).encode(), "'temperature' is out of range"),
        (b'{"prompt": "x", "temperature": 1e400}', "finite"),
        (b"[" * 3000, "nests JSON too deeply"),
    ],
)
def test_bad_requests_get_400_with_a_message(server, body, fragment):
    r = httpx.post(f"{server[1]}/v1/completions", content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert fragment in message and len(message) < 300, message  # our words, the client's value cut short


def test_bad_chat_and_oversized_body(server):
    r = httpx.post(f"{server[1]}/v1/chat/completions", json={"messages": [{"role": "user"}]}, timeout=30)
    assert r.status_code == 400 and "content" in r.json()["error"]["message"]
    r = httpx.post(f"{server[1]}/v1/completions", json={"prompt": "x" * 5000}, timeout=30)
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]


def test_concurrent_requests_are_batched(client, server):
    before = httpx.get(f"{server[1]}/health").json()

    def one(i: int) -> str:
        out = client.completions.create(model="tiny", prompt=f"Request {i} about schools", max_tokens=24, seed=i)
        return out.choices[0].finish_reason

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        reasons = list(pool.map(one, range(16), timeout=120))
    assert time.monotonic() - start < 120
    assert len(reasons) == 16 and all(r in ("stop", "length") for r in reasons)
    after = httpx.get(f"{server[1]}/health").json()
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16  # some requests shared a batch
    assert after["max_batch_seen"] > 1


def test_stop_strings_cut_the_text_across_tokens_in_plain_and_streamed_replies(client):
    base = dict(model="tiny", prompt="The history of", max_tokens=40, temperature=1.0, top_p=1.0, seed=5, logprobs=0)
    full = client.completions.create(**base).choices[0]
    pieces = full.logprobs.tokens
    plain = lambda piece: piece and "<" not in piece and piece.isascii() and piece.strip() == piece  # noqa: E731
    k = next(k for k in range(1, len(pieces)) if plain(pieces[k - 1]) and plain(pieces[k]))
    stop = pieces[k - 1][-1] + pieces[k][0]  # the last character of one token and the first of the next
    cut = full.text.index(stop)
    stopped = client.completions.create(**base, stop=[stop, "never-seen"]).choices[0]
    assert stopped.text == full.text[:cut] and stopped.finish_reason == "stop"
    streamed = list(client.completions.create(**base, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == full.text[:cut]
    assert streamed[-1].choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=30,
                                          temperature=0)  # fmt: skip
    text = chat.choices[0].message.content
    if len(text) > 3:
        short = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=30, temperature=0, stop=text[2:4])  # fmt: skip
        assert short.choices[0].message.content == text[: text.index(text[2:4])]
        assert short.choices[0].finish_reason == "stop"


def test_a_stop_string_whose_character_spans_several_tokens(client, tiny):
    """€ is three byte tokens for the tiny byte-level BPE; biased to be all the model may say, the reply is a
    run of those bytes. Stops on € (and on € plus what follows) cut the decoded text, never a byte early."""
    euro = tiny.encode("€")
    assert tiny.tokenizer.decode(euro) == "€" and len(set(euro)) == 3
    base = dict(model="tiny", prompt="The history of", max_tokens=48, temperature=1.0, top_p=1.0,
                logit_bias={str(t): 100 for t in euro})  # fmt: skip
    for seed in range(20):
        full = client.completions.create(**base, seed=seed).choices[0].text
        if full.find("€", 1) > 0:  # some bytes first, so the stop falls inside the reply
            break
    else:
        pytest.fail("no seed made a € after other bytes")
    base["seed"] = seed
    cut = full.index("€")
    for stop in ("€", full[cut : cut + 2]):
        stopped = client.completions.create(**base, stop=stop).choices[0]
        assert stopped.text == full[:cut] and stopped.finish_reason == "stop"
        chunks = list(client.completions.create(**base, stop=[stop], stream=True))
        assert "".join(c.choices[0].text for c in chunks) == full[:cut]
        assert chunks[-1].choices[0].finish_reason == "stop"
    unmatched = list(client.completions.create(**base, stop="€Z", stream=True))  # € is held back, then let go
    assert "".join(c.choices[0].text for c in unmatched) == full and unmatched[-1].choices[0].finish_reason == "length"


def test_echo_penalties_and_logit_bias_stream_as_they_answer(client, tiny):
    def streamed(**body) -> tuple[str, list[int], list]:
        chunks = [c for c in client.completions.create(**body, stream=True) if c.choices]
        lps = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
        ids = [t for lp in lps for t in lp.model_extra["token_ids"]]
        return "".join(c.choices[0].text for c in chunks), ids, [x for lp in lps for x in lp.token_logprobs]

    echo = dict(model="tiny", prompt="The history of", max_tokens=5, echo=True, seed=1, logprobs=1)
    plain = client.completions.create(**echo).choices[0]
    text, ids, lps = streamed(**echo)
    assert text == plain.text and text.startswith("The history of")
    assert ids == plain.logprobs.model_extra["token_ids"] and lps[0] is None
    assert lps[1:] == pytest.approx(plain.logprobs.token_logprobs[1:], abs=1e-5)
    assert streamed(**{**echo, "logprobs": None})[0] == plain.text
    penalized = dict(model="tiny", prompt="The history of", max_tokens=16, temperature=0.9, seed=7,
                     presence_penalty=0.8, frequency_penalty=1.3)  # fmt: skip
    assert streamed(**penalized)[0] == client.completions.create(**penalized).choices[0].text
    forced = tiny.encode("and")[-1]
    _, ids, _ = streamed(model="tiny", prompt="Once upon", max_tokens=8, seed=3, logit_bias={str(forced): 100}, logprobs=0)
    assert ids == [forced] * 8
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                          logit_bias={str(forced): 100}, seed=1, stream=True, logprobs=True)  # fmt: skip
    assert [t.id for c in chat if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content] == [forced] * 6


def test_several_choices_stops_and_max_completion_tokens_stream_as_they_answer(client, tiny):
    def joined(chunks, chat: bool) -> dict[int, str]:
        texts: dict[int, str] = {}
        for chunk in chunks:
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + ((c.delta.content or "") if chat else c.text)
        return texts

    listed = dict(model="tiny", prompt=["Once upon", "The history of"], max_tokens=6, n=2, seed=3)
    plain = client.completions.create(**listed)
    assert joined(client.completions.create(**listed, stream=True), chat=False) == {c.index: c.text for c in plain.choices}
    chat = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=12, n=2, seed=4)
    replies = client.chat.completions.create(**chat)
    want = {c.index: c.message.content for c in replies.choices}
    assert joined(client.chat.completions.create(**chat, stream=True), chat=True) == want
    text = next(t for t in want.values() if len(t) > 3)
    stop = text[2:4]
    stopped = client.chat.completions.create(**chat, stop=[stop])
    cut = {c.index: c.message.content for c in stopped.choices}
    assert cut == {i: t[: t.index(stop)] if stop in t else t for i, t in want.items()}
    assert joined(client.chat.completions.create(**chat, stop=[stop], stream=True), chat=True) == cut
    forced = tiny.encode("and")[-1]
    capped = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_completion_tokens=5, logit_bias={str(forced): 100}, seed=1)  # fmt: skip
    assert capped.usage.completion_tokens == 5 and capped.choices[0].finish_reason == "length"
    assert capped.choices[0].message.content == tiny.tokenizer.decode([forced] * 5)


def test_echo_with_max_tokens_0_gives_the_prompts_loglikelihood_as_stentor_eval(client, tiny_dir):
    from stentor.eval import load_model_and_tokenizer
    from stentor.eval.blimp import sentence_logprobs
    from stentor.eval.loading import start_token_id

    model, tokenizer = load_model_and_tokenizer(str(tiny_dir))
    sentences = ["The cat sat on a mat.", "Schools teach students."]
    prompts = [[start_token_id(tokenizer), *tokenizer(t, add_special_tokens=False).input_ids] for t in sentences]
    out = client.completions.create(model="tiny", prompt=prompts, max_tokens=0, echo=True, logprobs=1)
    assert [c.index for c in out.choices] == [0, 1] and out.usage.completion_tokens == 0
    assert out.usage.prompt_tokens == sum(len(p) for p in prompts)
    scored = sentence_logprobs(model, tokenizer, sentences, progress=False)
    for choice, ids, want in zip(out.choices, prompts, scored):
        lp = choice.logprobs
        assert lp.token_logprobs[0] is None and lp.model_extra["token_ids"] == ids and choice.finish_reason == "length"
        assert sum(lp.token_logprobs[1:]) == pytest.approx(want, abs=1e-3)
    echoed = client.completions.create(model="tiny", prompt="The history of", max_tokens=5, echo=True, seed=1)
    plain = client.completions.create(model="tiny", prompt="The history of", max_tokens=5, seed=1)
    assert echoed.choices[0].text == "The history of" + plain.choices[0].text


def test_a_list_of_prompts_gives_a_choice_each_and_streams_can_end_with_usage(client):
    out = client.completions.create(model="tiny", prompt=["Once upon", "The history of"], max_tokens=4, n=2, seed=3)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    one = client.completions.create(model="tiny", prompt="The history of", max_tokens=4, seed=3)
    assert next(c.text for c in out.choices if c.index == 2) == one.choices[0].text  # prompt 1, sample 0
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=6, seed=2, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0
    plain = client.completions.create(model="tiny", prompt="Once upon", max_tokens=6, seed=2)
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in client.completions.create(model="tiny", prompt="x", max_tokens=2, stream=True))


def test_presence_frequency_penalties_and_logit_bias_reach_the_engine(client, tiny):
    base = dict(model="tiny", prompt="The history of", max_tokens=16, temperature=0.9, seed=7)
    adjusted = dict(presence_penalty=0.8, frequency_penalty=1.3)
    out = client.completions.create(**base, **adjusted).choices[0].text
    want = tiny.generate("The history of", max_new_tokens=16, temperature=0.9, seed=7, **adjusted)
    assert out == want and out != client.completions.create(**base).choices[0].text
    forced = tiny.encode("and")[-1]
    biased = client.completions.create(**base, logit_bias={str(forced): 100}, logprobs=0).choices[0]
    assert set(biased.logprobs.model_extra["token_ids"]) == {forced}  # +100 outweighs every other logit
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                          logit_bias={str(forced): 100}, logprobs=True, seed=1)  # fmt: skip
    assert {t.id for t in chat.choices[0].logprobs.content} == {forced}
    eos = sorted(tiny.eos_ids)[0]  # biased to come first: listed with its logprob, as lm-eval's echo scoring needs
    ended = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=1, echo=True, logprobs=1,
                                      logit_bias={str(eos): 100}, temperature=0)  # fmt: skip
    choice = ended.choices[0]
    assert choice.finish_reason == "stop" and choice.logprobs.model_extra["token_ids"] == [5, 6, 7, eos]
    assert len(choice.logprobs.token_logprobs) == 4 and ended.usage.completion_tokens == 1
    assert choice.text == tiny.tokenizer.decode([5, 6, 7])


def test_tokenize_and_detokenize_in_llama_cpps_shapes(server, tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    url = server[1]
    ids = httpx.post(f"{url}/tokenize", json={"content": "Café and 東京"}).json()["tokens"]
    assert ids == tok("Café and 東京", add_special_tokens=False).input_ids
    special = httpx.post(f"{url}/tokenize", json={"content": "hi", "add_special": True}).json()["tokens"]
    assert special == tok("hi", add_special_tokens=True).input_ids
    pieces = httpx.post(f"{url}/tokenize", json={"content": "and", "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tok("and", add_special_tokens=False).input_ids and "".join(p["piece"] for p in pieces) == "and"
    assert httpx.post(f"{url}/detokenize", json={"tokens": ids}).json()["content"] == "Café and 東京"
    assert httpx.post(f"{url}/detokenize", json={"tokens": [10**6]}).status_code == 400


@pytest.mark.parametrize(
    "path, body, fragment",
    [
        ("completions", {"prompt": "x", "suffix": "y"}, "'suffix' is not supported"),
        ("completions", {"prompt": "x", "best_of": 3}, "'best_of' other than n"),
        ("completions", {"prompt": "x", "frequency_penalty": 2.5}, "frequency_penalty=2.5: must be a number in [-2, 2]"),
        ("completions", {"prompt": "x", "logit_bias": {"99999": 10}}, "not a token id"),
        ("completions", {"prompt": "x", "logit_bias": {"5": 101}}, "must be a number in [-100, 100]"),
        ("completions", {"prompt": "x", "logit_bias": [5]}, "must map at most"),
        ("completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ("completions", {"prompt": "x", "stop": [""]}, "'stop' must be"),
        ("completions", {"prompt": "x", "max_tokens": 0}, "between 1 and 64"),
        ("completions", {"prompt": [], "max_tokens": 2}, "'prompt' must be"),
        ("completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "with stream true"),
        ("completions", {"prompt": "x", "echo": "yes"}, "'echo' must be true or false"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": []}, "'tools' is not supported"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True}, "'echo' is not supported"),
        ("chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "role 'tool' cannot be written"),
        ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "must be text"),
    ],
)
def test_fields_the_server_does_not_implement_are_400s_naming_them(server, path, body, fragment):
    r = httpx.post(f"{server[1]}/v1/{path}", json=body, timeout=30)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.json()


def test_chat_content_may_be_a_list_of_text_parts(client):
    parts = [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]
    a = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": parts}], max_tokens=5,
                                       seed=4)  # fmt: skip
    b = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5,
                                       seed=4)  # fmt: skip
    assert a.choices[0].message.content == b.choices[0].message.content


def test_the_playground_files_and_nothing_else(server):
    url = server[1]
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="playground/playground.js"' in page.text
    assert httpx.get(f"{url}/playground/playground.js").headers["content-type"].startswith("text/javascript")
    config = httpx.get(f"{url}/playground/config.json").json()
    assert config["model"] == "tiny" and config["max_tokens"] == 64 and config["max_prompt_tokens"] == 100
    assert config["defaults"]["temperature"] == 0.8 and config["parameters"] > 0 and len(config["examples"]) == 4
    for name in ("server.py", "..%2Fserver.py", "web", "playground.py"):
        assert httpx.get(f"{url}/playground/{name}").status_code == 404, name


def test_sigterm_drains_and_exits_zero(server, client):
    proc, url = server
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.completions.create, model="tiny", prompt="Last one", max_tokens=48)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert pending.result(timeout=60).choices[0].text is not None
    assert proc.wait(timeout=60) == 0
