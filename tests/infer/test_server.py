"""`stentor serve` in a subprocess on loopback, driven by the real `openai` client and httpx."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_dir):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stentor", "serve", "--model", str(tiny_dir), "--port", str(port),
         "--model-name", "tiny", "--max-tokens", "64", "--max-prompt-tokens", "100", "--max-body-bytes", "4096",
         "--batch-wait-ms", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stdout.read()}")
        time.sleep(0.2)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


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
    ],
)
def test_bad_requests_get_400_with_a_message(server, body, fragment):
    r = httpx.post(f"{server[1]}/v1/completions", content=body, timeout=30)
    assert r.status_code == 400
    assert fragment in r.json()["error"]["message"]


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


def test_sigterm_drains_and_exits_zero(server, client):
    proc, url = server
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.completions.create, model="tiny", prompt="Last one", max_tokens=48)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert pending.result(timeout=60).choices[0].text is not None
    assert proc.wait(timeout=60) == 0
