"""`stentor serve` against hostile clients: one request cannot hurt another, and mistakes get our words."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serving import stentor_serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir):
    with stentor_serve(tiny_dir, "--model-name", "tiny", "--max-tokens", "250", "--max-prompt-tokens", "100",
                       "--max-body-bytes", "2000000", "--batch-wait-ms", "50") as running:  # fmt: skip
        yield running


def test_a_poisoned_request_among_good_ones_fails_alone(server):
    url = server[1]
    good = {"prompt": "Once upon a time", "max_tokens": 20}
    poisons = [{"top_k": 2**63}, {"seed": 2**64}, {"temperature": 1e-308}, {"repetition_penalty": 1e-308}]
    with ThreadPoolExecutor(10) as pool:
        for poison in poisons:
            calls = [pool.submit(httpx.post, f"{url}/v1/completions", json=good, timeout=60) for _ in range(6)]
            bad = pool.submit(httpx.post, f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3, **poison})
            assert bad.result().status_code == 400, poison
            assert [c.result().status_code for c in calls] == [200] * 6, poison


def test_a_row_that_fails_in_the_engine_takes_only_itself_down(tiny):
    """The safety net under validation: a batch that fails is decoded again row by row."""
    from stentor.infer.decoding import SamplingParams
    from stentor.infer.server import Job, Scheduler, ServeConfig

    async def run() -> list[tuple]:
        loop = asyncio.get_running_loop()
        scheduler = Scheduler(tiny, ServeConfig(batch_wait_ms=300))
        params = SamplingParams(max_new_tokens=6, stop_at_eos=False, seed=1)
        jobs = [Job(tiny.encode("Once upon"), params, i, loop) for i in range(3)]
        jobs.append(Job([1, 2, tiny.vocab_size + 5], params, 3, loop))  # an id the engine refuses mid-batch
        scheduler.start()
        scheduler.submit(jobs)
        last = []
        for job in jobs:
            while (event := await asyncio.wait_for(job.events.get(), 60))[0] not in ("done", "error"):
                pass
            last.append(event)
        await loop.run_in_executor(None, scheduler.stop)
        return last

    last = asyncio.run(run())
    assert [e[0] for e in last] == ["done", "done", "done", "error"]
    assert all(e[2] == 6 for e in last[:3]) and "in its log" in last[3][1]


def _post_and_leave(port: int, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))  # fmt: skip
    return sock


def test_abandoned_plain_requests_stop_decoding(server):
    url = server[1]
    port = int(url.rsplit(":", 1)[1])
    tokens = lambda: httpx.get(f"{url}/health").json()["tokens"]  # noqa: E731
    before = tokens()
    socks = [_post_and_leave(port, {"prompt": "Once upon a time", "max_tokens": 250, "temperature": 1.0,
                                    "stop": ["never-seen-stop"], "repetition_penalty": 1.0}) for _ in range(64)]  # fmt: skip
    time.sleep(0.1)  # leave early: at 0.3 s the runtime had decoded 9,715 of the 16,000 tokens
    for sock in socks:
        sock.close()
    time.sleep(1.0)
    settled = tokens()
    time.sleep(0.7)
    assert tokens() == settled  # nothing is decoding for clients that left
    assert settled - before < 64 * 250 // 2  # most of the work was never done
    t = time.monotonic()
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 5}, timeout=60).status_code == 200
    assert time.monotonic() - t < 5


def test_a_huge_text_prompt_is_refused_before_it_is_tokenized(server):
    r = httpx.post(f"{server[1]}/v1/completions", json={"prompt": "word " * 200_000}, timeout=60)
    assert r.status_code == 400 and "1000000 characters" in r.json()["error"]["message"]
    chat = {"messages": [{"role": "user", "content": "word " * 200_000}]}
    r = httpx.post(f"{server[1]}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 400 and "at most 100 tokens" in r.json()["error"]["message"]


def test_a_client_that_leaves_mid_body_costs_one_log_line_not_a_traceback(tiny_dir):
    with stentor_serve(tiny_dir, "--model-name", "tiny") as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"prompt\": ")  # fmt: skip
            time.sleep(0.1)
            sock.close()
        time.sleep(0.3)
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log = proc.stdout.read()
    assert "Traceback" not in log and log.count("went away before sending the whole body") == 3, log[-3000:]


def test_idle_and_half_sent_connections_are_closed_and_never_crowd_out_real_work(tiny_dir):
    with stentor_serve(tiny_dir, "--model-name", "tiny", "--request-timeout", "2") as (_, url):
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(1100)]
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"pro")  # fmt: skip
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200  # 1,100 silent sockets did not turn it into a 503
        t = time.monotonic()
        assert all(_closed_by_server(sock, within=8) for sock in (half, body, idle[0], idle[-1]))
        assert time.monotonic() - t < 6  # closed at the 2 s timeout, not held open
        for sock in idle:
            sock.close()


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes this connection within `within` seconds (anything it says first is read)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass  # closed abortively: still closed
    except TimeoutError:
        return False
    return True


@pytest.fixture(scope="module")
def guarded(tiny_dir):
    with stentor_serve(tiny_dir, "--model-name", "tiny", "--api-key", "sesame-0123",
                       "--cors-origin", "https://app.example") as running:  # fmt: skip
        yield running[1]


def test_the_api_key_guards_every_endpoint_but_health_and_the_page(guarded):
    from openai import AuthenticationError, OpenAI

    wrong = OpenAI(base_url=f"{guarded}/v1", api_key="sesame-9999", max_retries=0)
    with pytest.raises(AuthenticationError, match="Authorization: Bearer KEY"):
        wrong.completions.create(model="tiny", prompt="Hi", max_tokens=2)
    right = OpenAI(base_url=f"{guarded}/v1", api_key="sesame-0123", max_retries=0)
    assert right.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices[0].finish_reason
    assert [m.id for m in right.models.list().data] == ["tiny"]
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(guarded + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(f"{guarded}/tokenize", json={"content": "x"}).status_code == 401
    assert httpx.get(f"{guarded}/health").status_code == 200 and httpx.get(f"{guarded}/").status_code == 200
    assert httpx.get(f"{guarded}/playground/config.json").json()["needs_key"] is True


def test_pages_elsewhere_cannot_use_a_local_server(guarded, server):
    url = server[1]  # no key, loopback: what a browser on this machine could reach
    rebound = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi"}, headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 400 and "--allowed-hosts" in rebound.json()["error"]["message"]
    form = httpx.post(f"{url}/v1/completions", content=b'{"prompt": "Hi"}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415 and "application/json" in form.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/completions", content=b'{"prompt": "Hi", "max_tokens": 2}').status_code == 415
    assert "access-control-allow-origin" not in httpx.get(f"{url}/health", headers={"Origin": "https://a.example"}).headers
    preflight = httpx.options(f"{guarded}/v1/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})  # fmt: skip
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(f"{guarded}/v1/completions", headers={"Origin": "https://evil.example",
                                                                 "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_a_full_queue_is_a_503_not_a_backlog(tiny):
    from stentor.infer.decoding import SamplingParams
    from stentor.infer.server import BadRequest, Job, Scheduler, ServeConfig

    scheduler = Scheduler(tiny, ServeConfig(max_waiting_rows=2))  # not started: jobs stay queued
    loop = asyncio.new_event_loop()
    jobs = [Job([1, 2], SamplingParams(), i, loop) for i in range(3)]
    scheduler.submit(jobs[:2])
    with pytest.raises(BadRequest, match="busy") as refused:
        scheduler.submit(jobs[2:])
    assert refused.value.status == 503
    loop.close()


def test_serve_warns_when_it_listens_beyond_loopback_without_a_key(tiny_dir):
    with stentor_serve(tiny_dir, "--host", "0.0.0.0") as (proc, url):
        assert httpx.get(f"{url}/health").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log = proc.stdout.read()
    assert "without --api-key: anyone who can reach this address can use the model" in log
