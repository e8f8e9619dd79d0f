"""`stentor serve`: an OpenAI-compatible HTTP API over the decode engine.

Starlette + uvicorn rather than the stdlib: SSE streaming, client-disconnect handling and
graceful SIGINT/SIGTERM shutdown (stop accepting, drain in-flight requests) come built in.

One scheduler thread owns the engine. Requests wait in a queue; each round the scheduler takes
every waiting request (up to `max_batch`) and decodes them as one left-padded batch, each row
with its own sampling settings, then streams text back to the request's asyncio queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from stentor.errors import StentorError
from stentor.infer.api import Stentor, sampling_params
from stentor.infer.decoding import MAX_SEED, SamplingParams
from stentor.infer.playground import ASSETS, asset, page_config
from stentor.infer.text import StopText, streaming_decoder, token_bytes, token_pieces

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Server limits; every one is checked before a request reaches the engine."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "stentor"
    max_batch: int = 8
    max_prompt_tokens: int = 768
    max_tokens: int = 512
    default_max_tokens: int = 256
    max_body_bytes: int = 1 << 20
    batch_wait_ms: float = 5.0
    shutdown_timeout_s: float = 30.0
    request_timeout_s: float = 10.0  # a request's headers and body must arrive within this
    max_connections: int = 4096  # open at once; more are closed on arrival (idle ones are reaped)
    max_waiting_rows: int = 1024  # rows queued for the engine; beyond them a request gets 503
    api_key: str | None = None  # then every endpoint but /health and the page's files needs it
    allowed_hosts: tuple[str, ...] | None = None  # Host header names answered (None: loopback + host)
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API from a browser

    def hosts(self) -> frozenset[str] | None:
        """The Host names to answer, None for any: loopback names and the bound address by default,
        any name when bound to every interface (which names reach it is the network's business)."""
        if self.allowed_hosts is not None:
            return None if "*" in self.allowed_hosts else frozenset(h.lower() for h in self.allowed_hosts)
        if self.host in ("0.0.0.0", "::", ""):
            return None
        return frozenset({"localhost", "127.0.0.1", "::1", self.host.lower()})

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 256:
            raise StentorError(f"--max-batch {self.max_batch} must be between 1 and 256")
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise StentorError("--default-max-tokens must be between 1 and --max-tokens")
        if self.max_prompt_tokens < 1 or self.max_body_bytes < 1024:
            raise StentorError("--max-prompt-tokens must be >= 1 and --max-body-bytes >= 1024")
        if not 0 <= self.port <= 65535:
            raise StentorError(f"--port {self.port} must be between 0 and 65535")
        if self.api_key is not None and (len(self.api_key) < 8 or not self.api_key.isprintable() or " " in self.api_key):
            raise StentorError("--api-key must be at least 8 printable characters without spaces")
        if not 0.1 <= self.request_timeout_s <= 3600:
            raise StentorError(f"--request-timeout {self.request_timeout_s} must be between 0.1 and 3600 seconds")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


@dataclass
class Job:
    """One row of a batch: encoded prompt, settings, and where its text goes."""

    prompt: list[int]
    params: SamplingParams
    index: int  # the choice index within its request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    completion_tokens: int = 0
    echo: bool = False  # the prompt's text (and its tokens' logprobs, if asked) comes first
    generate: bool = True  # False for max_tokens 0 (echo only: how loglikelihood scoring asks)
    stop: StopText | None = None
    stopped: bool = False  # a stop string ended it
    began: bool = False  # an event went out: the row cannot be decoded again from scratch
    ended: bool = False  # its "done" or "error" went out

    def send(self, *event: Any) -> None:
        self.began = True
        self.ended = self.ended or event[0] in ("done", "error")
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def emit(self, piece: str, token: int | None = None, logprobs=None) -> None:
        """A token's text (through the stop strings, if any) to the client."""
        released = self.stop.push(piece, (token, logprobs)) if self.stop is not None else [(piece, (token, logprobs))]
        for text, item in released:
            token, logprobs = item or (None, None)
            if logprobs is not None:  # one event per token: the client lists every token
                self.send("token", text, token, logprobs)
            elif text:
                self.send("text", text)
        if self.stop is not None and self.stop.stopped:
            self.stopped = self.cancelled = True  # the engine ends the row at its next step

    def finish(self, tail: str, drafted: dict | None = None, eos: bool = False) -> None:
        if tail:
            self.emit(tail)
        if self.stop is not None:
            for text, _ in self.stop.flush():
                if text:
                    self.send("text", text)
        self.send("done", "stop" if eos or self.stopped else "length", self.completion_tokens, drafted)


@dataclass
class Stats:
    requests: int = 0
    rows: int = 0
    batches: int = 0
    batched_rows: int = 0  # rows that shared their batch with at least one other row
    max_batch_seen: int = 0
    tokens: int = 0
    decoding: int = 0  # rows in the batch being decoded now (0 between batches: nothing is stuck)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict:
        with self.lock:
            return {k: v for k, v in self.__dict__.items() if k != "lock"}


class Scheduler:
    """The engine's only user: collects waiting jobs and decodes them together."""

    def __init__(self, lm: Stentor, config: ServeConfig, draft=None):
        self.lm, self.config = lm, config
        self.draft = draft  # a speculative.DraftedModel: rows are then decoded one at a time with it
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.stats = Stats()
        self.stopping = False
        # Fast tokenizers are not safe to use from two threads at once (requests encode, we decode).
        self.tokenizer_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="stentor-scheduler", daemon=True)
        self._pieces: tuple[list[str], list[bytes]] | None = None
        self._max_chars: int | None = None

    def pieces(self) -> tuple[list[str], list[bytes]]:
        """Each id's text and bytes (`token_pieces`), built on the first request for logprobs."""
        if self._pieces is None:
            with self.tokenizer_lock:
                try:
                    self._pieces = token_pieces(self.lm.tokenizer, self.lm.vocab_size)
                except StentorError as exc:
                    raise BadRequest(f"logprobs are not available for this tokenizer: {exc}", "logprobs") from None
        return self._pieces

    def encode(self, body: dict, chat: bool) -> list[list[int]]:
        """A request's prompts as ids (`_prompts`), in a worker thread so the event loop never waits on it."""
        with self.tokenizer_lock:
            return _prompts(self.lm, body, chat, self.config, self.max_prompt_chars())

    def max_prompt_chars(self) -> int:
        """The longest text that could still fit --max-prompt-tokens: longer ones are refused before
        they are tokenized (a 1 MB prompt would hold the tokenizer for a fraction of a second)."""
        if self._max_chars is None:
            try:
                longest = max((len(b) for b in token_bytes(self.lm.tokenizer, self.lm.vocab_size) if b), default=1)
            except StentorError:
                longest = 64  # a tokenizer we cannot read token by token: a generous bound on one token's text
            self._max_chars = self.config.max_prompt_tokens * max(longest, 1) + CHAT_TEMPLATE_CHARS
        return self._max_chars

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish the current batch, cancel anything still waiting, and join the thread."""
        self.stopping = True
        self.waiting.put(None)
        self.thread.join(timeout=self.config.shutdown_timeout_s)
        while True:
            try:
                job = self.waiting.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.send("error", "the server is shutting down")

    def submit(self, jobs: list[Job]) -> None:
        if self.stopping:
            raise BadRequest("the server is shutting down", status=503)
        if self.waiting.qsize() + len(jobs) > self.config.max_waiting_rows:
            raise BadRequest(f"the server is busy ({self.waiting.qsize()} rows are waiting); try again shortly",
                             status=503)  # fmt: skip
        with self.stats.lock:
            self.stats.requests += 1
        for job in jobs:
            self.waiting.put(job)

    def _collect(self) -> list[Job] | None:
        first = self.waiting.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000
        while len(batch) < self.config.max_batch:
            try:
                job = self.waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.waiting.put(None)  # keep the stop signal for the next round
                break
            batch.append(job)
        return [job for job in batch if not job.cancelled]

    def _run(self) -> None:
        while not self.stopping:
            batch = self._collect()
            if batch is None:
                return
            if batch:
                with self.stats.lock:
                    self.stats.decoding = len(batch)
                try:
                    self._decode(batch)
                except Exception:  # our bug: keep serving, and keep it to the rows it belongs to
                    self._isolate(batch)
                finally:
                    with self.stats.lock:
                        self.stats.decoding = 0

    def _isolate(self, batch: list[Job]) -> None:
        """A batch failed: every row that had sent nothing yet is decoded again alone, so a row that
        fails takes only itself down; rows already under way get the error."""
        log.exception("a batch of %d rows failed; decoding its rows that had not begun one at a time", len(batch))
        for job in batch:
            if job.ended:
                continue
            if job.began or len(batch) == 1:
                job.send("error", GENERATION_FAILED)
                continue
            try:
                self._decode([job])
            except Exception:
                log.exception("a row failed on its own")
                if not job.ended:
                    job.send("error", GENERATION_FAILED)

    def _echo(self, job: Job) -> None:
        """The prompt's text first, token by token with their logprobs when asked (the first has none)."""
        lm = self.lm
        with self.tokenizer_lock:
            decoder = streaming_decoder(lm.tokenizer)
            pieces = [decoder.push([t]) for t in job.prompt]
            pieces[-1] += decoder.flush()
        if job.params.logprobs is None:
            job.send("text", "".join(pieces))
            return
        with lm.lock:
            logprobs = lm.prompt_logprobs(job.prompt, job.params.logprobs)
        for piece, token, lp in zip(pieces, job.prompt, logprobs):
            job.send("token", piece, token, lp)

    def _decode(self, batch: list[Job]) -> None:
        for job in batch:
            if job.echo:
                self._echo(job)
            if not job.generate:
                job.send("done", "length", 0, None)
        batch = [job for job in batch if job.generate]
        if not batch:
            return
        lm = self.lm
        if self.draft is not None:
            for job in batch:
                self._decode_drafted(job)
            return
        with self.stats.lock:
            self.stats.batches += 1
            self.stats.rows += len(batch)
            self.stats.batched_rows += len(batch) if len(batch) > 1 else 0
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        decoders = [streaming_decoder(lm.tokenizer) for _ in batch]
        done = [False] * len(batch)
        with lm.lock:
            # a cancelled row (its client went away) leaves the batch at once instead of decoding on
            steps = lm.generate_ids([job.prompt for job in batch], [job.params for job in batch],
                                    cancelled=lambda i: batch[i].cancelled)  # fmt: skip
            for step in steps:
                active = done.count(False)
                for i, job in enumerate(batch):
                    if done[i]:
                        continue
                    token = step.tokens[i]
                    is_eos = job.params.stop_at_eos and token in lm.eos_ids
                    self._emit(job, decoders[i], token, is_eos, step.logprobs[i] if step.logprobs is not None else None)
                    if step.finished[i] or job.cancelled:
                        done[i] = True
                        with self.tokenizer_lock:
                            tail = decoders[i].flush()
                        job.finish(tail, eos=is_eos)
                with self.stats.lock:
                    self.stats.tokens += active
                if all(done):
                    steps.close()
                    break

    def _emit(self, job: Job, decoder, token: int, eos: bool, logprobs) -> None:
        """One generated token to its row. The EOS token counts and is listed with its logprobs
        (as OpenAI and vLLM do: lm-eval's echo scoring drops the last listed token) but has no text."""
        job.completion_tokens += 1
        if eos:
            if logprobs is not None:
                job.emit("", token, logprobs)
            return
        with self.tokenizer_lock:
            piece = decoder.push([token])
        job.emit(piece, token, logprobs)

    def _decode_drafted(self, job: Job) -> None:
        """One row by speculative decoding; its "done" event carries the draft's statistics."""
        from stentor.infer.speculative import SpeculativeStats

        lm, stats, eos = self.lm, SpeculativeStats(), False
        with self.stats.lock:
            self.stats.batches += 1
            self.stats.rows += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, 1)
        decoder = streaming_decoder(lm.tokenizer)
        with lm.lock:
            for new, logprobs in self.draft.stream(job.prompt, job.params, stats, cancelled=lambda: job.cancelled):
                for j, token in enumerate(new):
                    eos = job.params.stop_at_eos and token in lm.eos_ids
                    self._emit(job, decoder, token, eos, logprobs[j] if logprobs is not None else None)
                    if eos or job.stopped:
                        break
                with self.stats.lock:
                    self.stats.tokens += len(new)
        with self.tokenizer_lock:
            tail = decoder.flush()
        job.finish(tail, stats.to_dict(), eos=eos)


# -- request parsing ---------------------------------------------------------------------------


def _number(body: dict, name: str, kind: type, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise BadRequest(f"'{name}' must be {'a number' if kind is float else 'an integer'}, got {_shown(value)}", name)
    if isinstance(value, int) and abs(value) > MAX_INT:  # JSON integers have no bound; ours do
        raise BadRequest(f"'{name}' is out of range: {_shown(value)}", name)
    return float(value) if kind is float else value


def _shown(value: Any) -> str:
    """A client's value in a message, cut short (a 4,000-digit number or a huge string stays out of logs)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _logprobs(body: dict, chat: bool) -> int | None:
    """Top alternatives asked for: completions' `logprobs` (0-5), chat's `logprobs` + `top_logprobs` (0-20)."""
    if not chat:
        value = _number(body, "logprobs", int)
        if value is not None and not 0 <= value <= 5:
            raise BadRequest(f"'logprobs' must be between 0 and 5, got {value}", "logprobs")
        return value
    wanted = body.get("logprobs", False)
    if not isinstance(wanted, bool) and wanted is not None:
        raise BadRequest(f"'logprobs' must be true or false, got {wanted!r}", "logprobs")
    top = _number(body, "top_logprobs", int)
    if top is not None and not 0 <= top <= 20:
        raise BadRequest(f"'top_logprobs' must be between 0 and 20, got {top}", "top_logprobs")
    if top is not None and not wanted:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if wanted else None


# The fields a request may carry (OpenAI's, then ours); any other is a 400 naming it, never ignored.
_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs", "stop", "seed",
           "user", "presence_penalty", "frequency_penalty", "logit_bias",
           "top_k", "min_p", "repetition_penalty", "suppress_replacement_tokens"}  # fmt: skip
FIELDS = {"completions": _COMMON | {"prompt", "echo", "best_of"}, "chat": _COMMON | {"messages",
          "max_completion_tokens", "top_logprobs"}}  # fmt: skip
MAX_STOPS, MAX_STOP_CHARS = 4, 256
MAX_ROWS = 256  # prompts x n in one request
MAX_LOGIT_BIAS = 1024  # token ids one logit_bias may name
MAX_INT = 2**63 - 1  # the largest integer any field takes (OpenAI's are int64)
CLIENT_GONE = 499  # nginx's "client closed request": what the access log shows for a request nobody awaits
GENERATION_FAILED = "generation failed on the server (the error is in its log); try again"
CHAT_ROLES = ("system", "user", "assistant")  # what the card's template says
CHAT_TEMPLATE_CHARS = 4096  # room for the template's own text around the messages


def _check_fields(body: dict, chat: bool) -> None:
    for name in body:
        if name not in FIELDS["chat" if chat else "completions"]:
            raise BadRequest(f"'{name}' is not supported by this server (the fields it takes: docs/serving.md)", name)
    if not chat and _number(body, "best_of", int) not in (None, _number(body, "n", int, 1)):
        raise BadRequest("'best_of' other than n is not supported (no server-side ranking of samples)", "best_of")


def _logit_bias(body: dict, vocab: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} map, each bias in [-100, 100], as (id, bias) pairs."""
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
        raise BadRequest(f"'logit_bias' must map at most {MAX_LOGIT_BIAS} token ids to biases", "logit_bias")
    pairs = []
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < vocab):
            raise BadRequest(f"'logit_bias' key {_shown(key)} is not a token id in [0, {vocab})", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise BadRequest(f"'logit_bias' of token {key} must be a number in [-100, 100], got {_shown(value)}",
                             "logit_bias")  # fmt: skip
        pairs.append((int(key), float(value)))
    return tuple(pairs)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"'stop' takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters", "stop")
    return stops


def _params(body: dict, config: ServeConfig, chat: bool, vocab: int) -> tuple[SamplingParams, int, int]:
    """Sampling settings, n, and max_tokens (0 only with echo: the prompt's logprobs alone)."""
    _check_fields(body, chat)
    max_tokens = config.default_max_tokens
    for key in ("max_tokens", "max_completion_tokens") if chat else ("max_tokens",):
        max_tokens = _number(body, key, int, max_tokens)
    echo = _flag(body, "echo")
    if not (0 if echo else 1) <= max_tokens <= config.max_tokens:
        low = "0 (with echo)" if echo else "1"
        raise BadRequest(f"'max_tokens' must be between {low} and {config.max_tokens}, got {max_tokens}", "max_tokens")
    n = _number(body, "n", int, 1)
    if not 1 <= n <= config.max_batch:
        raise BadRequest(f"'n' must be between 1 and {config.max_batch}, got {n}", "n")
    try:
        params = sampling_params(
            temperature=_number(body, "temperature", float),
            top_p=_number(body, "top_p", float),
            top_k=_number(body, "top_k", int),
            min_p=_number(body, "min_p", float),
            repetition_penalty=_number(body, "repetition_penalty", float),
            seed=_number(body, "seed", int),
            max_new_tokens=max(max_tokens, 1),
            suppress_replacement_tokens=_flag(body, "suppress_replacement_tokens"),
            logprobs=_logprobs(body, chat),
            presence_penalty=_number(body, "presence_penalty", float),
            frequency_penalty=_number(body, "frequency_penalty", float),
            logit_bias=_logit_bias(body, vocab),
        )
    except StentorError as exc:
        raise BadRequest(str(exc)) from None
    return params, n, max_tokens


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise BadRequest(f"'{name}' must be true or false, got {_shown(value)}", name)
    return bool(value)


def _message_text(m) -> str:
    """A message's text: a string, or OpenAI's list of text parts."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise BadRequest("each message needs a string 'role' and a 'content'", "messages")
    if m["role"] not in CHAT_ROLES:
        raise BadRequest(f"role {_shown(m['role'])} cannot be written in this model's chat template (it has "
                         f"{', '.join(CHAT_ROLES)})", "messages")  # fmt: skip
    content = m.get("content")
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content):
            raise BadRequest("message content parts must be text ({'type': 'text', 'text': ...})", "messages")
        return "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise BadRequest("each message needs a string 'role' and a string 'content'", "messages")
    return content


def _prompts(lm: Stentor, body: dict, chat: bool, config: ServeConfig, max_chars: int) -> list[list[int]]:
    """The encoded prompts: chat messages, or a string, a token-id list, or a list of either. Text
    over `max_chars` cannot fit --max-prompt-tokens and is refused before it is tokenized."""
    field = "messages" if chat else "prompt"
    limit = config.max_prompt_tokens

    def too_long(count: int, unit: str) -> BadRequest:
        return BadRequest(f"the prompt has {count} {unit}; this server accepts at most {limit} tokens", field)

    try:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
            messages = [{"role": m["role"], "content": _message_text(m)} for m in messages]
            chars = sum(len(m["content"]) for m in messages)
            if chars > max_chars:
                raise too_long(chars, "characters")
            prompts = [lm.encode_chat(messages, fit=False)]
        else:
            prompt = body.get("prompt")
            is_ids = lambda p: isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)  # noqa: E731
            if isinstance(prompt, str) or is_ids(prompt):
                prompt = [prompt]
            if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
                raise BadRequest("'prompt' must be a string, a list of token ids, or a list of either", "prompt")
            for p in prompt:
                if len(p) > (max_chars if isinstance(p, str) else limit):
                    raise too_long(len(p), "characters" if isinstance(p, str) else "tokens")
            prompts = [lm.encode(p, fit=False) for p in prompt]
    except StentorError as exc:
        raise BadRequest(str(exc), field) from None
    for ids in prompts:
        if len(ids) > limit:
            raise too_long(len(ids), "tokens")
    return prompts


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _public(path: str) -> bool:
    """What a server with --api-key serves without it: its health, and the page's own files (they hold
    no data; the page asks for the key before it calls the API)."""
    return path in ("/", "/health") or path.startswith("/playground/")


class _Guard:
    """ASGI middleware that admits a request before any route sees it: a Host the server answers (no
    DNS rebinding), a JSON body (a page elsewhere cannot post a form or text to a local server without
    CORS, which is off unless --cors-origin), and the API key when one is set."""

    def __init__(self, app, config: ServeConfig, refuse):
        self.app, self.hosts, self.refuse = app, config.hosts(), refuse
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                return await self.refuse(problem)(scope, receive, send)
        await self.app(scope, receive, send)

    def _problem(self, scope) -> BadRequest | None:
        import hmac

        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host = _host_name(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return BadRequest(f"this server does not answer for host {_shown(host)}; start it with --allowed-hosts "
                              f"{_shown(host)} to allow it", code="host_not_allowed")  # fmt: skip
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return BadRequest(f"the body must be JSON sent with Content-Type: application/json (got "
                                  f"{_shown(kind) if kind else 'none'})", status=415, code="unsupported_media_type")  # fmt: skip
        if self.key is not None and not _public(scope["path"]):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.key):
                return BadRequest("a valid API key is needed: send 'Authorization: Bearer KEY' (the server's "
                                  "--api-key)", status=401, code="invalid_api_key")  # fmt: skip
        return None


def build_app(lm: Stentor, config: ServeConfig, draft=None):
    """The Starlette application; its lifespan starts and stops the scheduler thread. With `draft`
    (a `speculative.DraftedModel`) every row is decoded speculatively, one row at a time."""
    import contextlib
    import importlib.util

    if not all(importlib.util.find_spec(name) for name in ("starlette", "uvicorn")):
        raise StentorError("stentor serve needs starlette and uvicorn: pip install 'stentor[serve]'")
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    if config.max_batch > 1 and lm.engine is None:
        raise StentorError("stentor serve batches requests on the stentor engine; drop --engine hf")
    scheduler = Scheduler(lm, config, draft)

    def error(exc: BadRequest) -> JSONResponse:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        body = {"error": {"message": str(exc), "type": kind, "param": exc.param, "code": exc.code}}
        return JSONResponse(body, status_code=exc.status)

    async def read_json(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            raise BadRequest(f"request body over {config.max_body_bytes} bytes", status=413)
        data = bytearray()
        try:
            async for chunk in request.stream():
                data += chunk
                if len(data) > config.max_body_bytes:
                    raise BadRequest(f"request body over {config.max_body_bytes} bytes", status=413)
        except ClientDisconnect:
            log.info("%s: the client went away before sending the whole body", request.client.host if request.client else "?")
            raise BadRequest("the client went away before sending the whole body", status=CLIENT_GONE) from None
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("the request body nests JSON too deeply") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model", config.model_name)
        if model != config.model_name:
            raise BadRequest(f"unknown model {_shown(model)}; this server serves {config.model_name!r}", "model",
                             code="model_not_found")
        return body

    async def completions(request: Request, chat: bool):
        try:
            body = await read_json(request)
            params, n, max_tokens = _params(body, config, chat, lm.vocab_size)
            if params.logprobs is not None:
                scheduler.pieces()
            if draft is not None:
                for name in ("suppress_replacement_tokens", "presence_penalty", "frequency_penalty", "logit_bias"):
                    if body.get(name):
                        raise BadRequest(f"'{name}' is not available on a server with --draft", name)
            stops = _stops(body)
            echo = _flag(body, "echo")
            prompts = await asyncio.get_running_loop().run_in_executor(None, scheduler.encode, body, chat)
            if len(prompts) * n > MAX_ROWS:
                raise BadRequest(f"{len(prompts)} prompts x n={n} is over {MAX_ROWS} rows; split the request", "n")
            stream = _flag(body, "stream")
            options = body.get("stream_options")
            if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
                raise BadRequest("'stream_options' is {\"include_usage\": bool}, with stream true", "stream_options")
            include_usage = _flag(options or {}, "include_usage")
            loop = asyncio.get_running_loop()
            # Rows of one request get consecutive seeds, so n seeded samples differ from each other.
            seeded = lambda i: params if params.seed is None else params.replace(seed=(params.seed + i) % (MAX_SEED + 1))  # noqa: E731
            jobs = [Job(prompt, seeded(i), k * n + i, loop, echo=echo, generate=max_tokens > 0,
                        stop=StopText(stops) if stops else None)
                    for k, prompt in enumerate(prompts) for i in range(n)]  # fmt: skip
            scheduler.submit(jobs)
        except BadRequest as exc:
            return error(exc)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        meta = {"id": rid, "created": created, "model": config.model_name}

        names, raw = scheduler.pieces() if params.logprobs is not None else (None, None)

        def logprobs_of(tokens: list[tuple[int, Any, int]]) -> dict | None:
            """OpenAI's logprobs object for (id, TokenLogprobs, text offset) triples."""
            if params.logprobs is None:
                return None
            if chat:
                def item(t: int, logprob: float) -> dict:  # "id" is ours: pieces can repeat
                    return {"token": names[t], "logprob": logprob, "bytes": list(raw[t]), "id": t}

                return {"content": [{**item(t, lp.logprob), "top_logprobs": [item(a, b) for a, b in lp.top]}
                                    for t, lp, _ in tokens]}  # fmt: skip
            return {
                "tokens": [names[t] for t, _, _ in tokens],
                "token_logprobs": [lp.logprob if lp else None for _, lp, _ in tokens],  # None: echo's first token
                "top_logprobs": [{names[a]: b for a, b in lp.top} if lp else None for _, lp, _ in tokens],
                "text_offset": [offset for _, _, offset in tokens],
                "token_ids": [t for t, _, _ in tokens],  # ours: the ids, since pieces can repeat
            }

        def choice(job: Job, text: str | None, finish: str | None, delta: bool, tokens=(), drafted=None) -> dict:
            out: dict[str, Any] = {"index": job.index, "finish_reason": finish}
            if drafted is not None:  # ours: how the draft model fared on this row (server with --draft)
                out["speculative"] = drafted
            if not chat:
                out.update(text=text or "", logprobs=logprobs_of(list(tokens)))
                return out
            if delta:
                out["delta"] = {} if text is None else {"role": "assistant", "content": text}
            else:
                out["message"] = {"role": "assistant", "content": text}
            if params.logprobs is not None:
                out["logprobs"] = logprobs_of(list(tokens))
            return out

        async def merged():
            """(job, event) pairs as rows produce them, until every row is done or failed."""
            tasks = {asyncio.ensure_future(job.events.get()): job for job in jobs}
            try:
                while tasks:
                    finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        job = tasks.pop(task)
                        event = task.result()
                        yield job, event
                        if event[0] not in ("done", "error"):
                            tasks[asyncio.ensure_future(job.events.get())] = job
            finally:
                for task in tasks:
                    task.cancel()
                for job in jobs:
                    job.cancelled = True

        offsets = {job.index: 0 for job in jobs}  # characters of completion text sent so far, per row
        prompt_tokens = sum(len(job.prompt) for job in jobs)

        def usage(completion: int) -> dict:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}  # fmt: skip

        def token_of(job: Job, event: tuple) -> tuple[int, Any, int]:
            """The (id, logprobs, text offset) of a "token" event; moves the row's offset past its text.

            A piece can begin with text held back from earlier tokens (bytes that only now made a
            character), so a token whose own text ends the piece starts where that text does."""
            _, piece, token, lp = event
            start = offsets[job.index]
            offsets[job.index] += len(piece)
            if names[token] and piece.endswith(names[token]):
                start = offsets[job.index] - len(names[token])
            return token, lp, start

        if not stream:

            async def collect():
                texts: dict[int, list[str]] = {job.index: [] for job in jobs}
                tokens: dict[int, list[tuple]] = {job.index: [] for job in jobs}
                finishes: dict[int, str] = {}
                drafted: dict[int, dict | None] = {}
                completion = 0
                async for job, event in merged():
                    if event[0] in ("text", "token"):
                        texts[job.index].append(event[1])
                        if event[0] == "token":
                            tokens[job.index].append(token_of(job, event))
                    elif event[0] == "done":
                        finishes[job.index], drafted[job.index] = event[1], event[3]
                        completion += event[2]
                    else:
                        return error(BadRequest(event[1], status=503 if "shutting" in event[1] else 500))
                choices = [choice(job, "".join(texts[job.index]), finishes[job.index], False, tokens[job.index],
                                  drafted[job.index]) for job in jobs]  # fmt: skip
                obj = "chat.completion" if chat else "text_completion"
                return JSONResponse({**meta, "object": obj, "choices": choices, "usage": usage(completion)})

            async def client_gone() -> None:  # the body is read: the next message is the disconnect
                while (await request.receive())["type"] != "http.disconnect":
                    pass

            # A client that hangs up stops its rows at once, as a stream's does (merged() cancels them).
            work, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(client_gone())
            finished, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work in finished:
                gone.cancel()
                return work.result()
            work.cancel()
            return error(BadRequest("the client went away", status=CLIENT_GONE))

        async def sse():
            obj = "chat.completion.chunk" if chat else "text_completion"
            completion = 0
            async for job, event in merged():
                if event[0] == "text":
                    chunk = {**meta, "object": obj, "choices": [choice(job, event[1], None, True)]}
                elif event[0] == "token":
                    tokens = [token_of(job, event)]
                    chunk = {**meta, "object": obj, "choices": [choice(job, event[1], None, True, tokens)]}
                elif event[0] == "done":
                    completion += event[2]
                    chunk = {**meta, "object": obj, "choices": [choice(job, None, event[1], True, (), event[3])]}
                else:
                    chunk = {"error": {"message": event[1], "type": "server_error", "param": None, "code": None}}
                yield f"data: {json.dumps(chunk)}\n\n"
            if include_usage:  # OpenAI's last chunk: no choices, the whole request's usage
                yield f"data: {json.dumps({**meta, 'object': obj, 'choices': [], 'usage': usage(completion)})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def completions_route(request: Request):
        return await completions(request, chat=False)

    async def chat_route(request: Request):
        return await completions(request, chat=True)

    async def tokenize(request: Request):
        """llama.cpp's /tokenize: {"content", "add_special"?, "with_pieces"?} -> {"tokens": [...]}."""
        try:
            body = await read_json(request)
            content = body.get("content")
            if not isinstance(content, str):
                raise BadRequest("'content' must be a string", "content")
            extra = sorted(set(body) - {"content", "add_special", "with_pieces", "model"})
            if extra:
                raise BadRequest(f"'{extra[0]}' is not a /tokenize field (content, add_special, with_pieces)", extra[0])
            special = _flag(body, "add_special")

            def encode() -> list[int]:  # off the event loop, as completions' prompts are
                with scheduler.tokenizer_lock:
                    return list(lm.tokenizer(content, add_special_tokens=special)["input_ids"])

            ids = await asyncio.get_running_loop().run_in_executor(None, encode)
            if _flag(body, "with_pieces"):
                names, _ = scheduler.pieces()
                return JSONResponse({"tokens": [{"id": t, "piece": names[t]} for t in ids]})
            return JSONResponse({"tokens": ids})
        except BadRequest as exc:
            return error(exc)

    async def detokenize(request: Request):
        """llama.cpp's /detokenize: {"tokens": [ids]} -> {"content": text} (special tokens kept)."""
        try:
            body = await read_json(request)
            ids = body.get("tokens")
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise BadRequest("'tokens' must be a list of token ids", "tokens")
            if any(not 0 <= t < lm.vocab_size for t in ids):
                raise BadRequest(f"token ids must be in [0, {lm.vocab_size})", "tokens")
            with scheduler.tokenizer_lock:
                return JSONResponse({"content": lm.tokenizer.decode(ids, skip_special_tokens=False)})
        except BadRequest as exc:
            return error(exc)

    async def page(request: Request):
        name = request.path_params.get("name", "index.html")
        if name == "config.json":
            return JSONResponse(page_config(lm.config, config.model_name, vocab_size=lm.vocab_size, context=lm.context,
                                            chat=bool(getattr(lm.tokenizer, "chat_template", None)),
                                            max_tokens=config.max_tokens,
                                            max_prompt_tokens=config.max_prompt_tokens, draft=draft is not None,
                                            needs_key=config.api_key is not None))
        if name not in ASSETS:
            return JSONResponse({"error": {"message": f"no page file {name!r}", "type": "not_found"}}, status_code=404)
        return Response(asset(name), media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    async def models(request: Request):
        entry = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "stentor"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": config.model_name, **scheduler.stats.snapshot(),
                             "waiting": scheduler.waiting.qsize()})  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, scheduler.stop)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/playground/{name}", page, methods=["GET"]),
        Route("/v1/completions", completions_route, methods=["POST"]),
        Route("/v1/chat/completions", chat_route, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", health, methods=["GET"]),
    ]
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """Our bug, not the client's: the traceback goes to the log, the client gets our words."""
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(BadRequest("the server failed on this request (the error is in its log)", status=500))

    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    # CORS outermost, so a browser page that is allowed also reads the guard's refusals.
    middleware = [Middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if config.cors_origins else []  # fmt: skip
    middleware.append(Middleware(_Guard, config=config, refuse=error))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers={Exception: unexpected})
    app.state.scheduler = scheduler
    return app


def serve(lm: Stentor, config: ServeConfig, *, open_page: bool = False, draft=None) -> int:
    """Run until SIGINT/SIGTERM; uvicorn stops accepting and drains in-flight requests, then we exit 0.

    `open_page` opens the playground in the default browser once the server listens; `draft` as in
    `build_app`.
    """
    import signal

    import resource

    import uvicorn

    from stentor.infer.connections import guarded_protocol

    app = build_app(lm, config, draft)
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = config.max_connections if descriptors == resource.RLIM_INFINITY else min(config.max_connections, descriptors - 64)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=int(config.shutdown_timeout_s),
            # No uvicorn-wide 503 cap (it counts idle sockets): connections are bounded by the guarded
            # protocol, and the engine's queue by max_waiting_rows.
            limit_concurrency=None,
            http=guarded_protocol(config.request_timeout_s, max(cap, 16)),
        )
    )
    # uvicorn re-raises the stop signal once it has shut down; a no-op handler turns that into a clean exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    if config.api_key is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model",
                    config.host)  # fmt: skip
    log.info("playground: http://%s:%d/", host, config.port)
    if open_page:
        threading.Thread(target=_open_when_up, args=(server, f"http://{host}:{config.port}/"), daemon=True).start()
    server.run()
    return 0


def _open_when_up(server, url: str) -> None:
    import webbrowser

    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    if not webbrowser.open(url):
        log.warning("no browser to open here; visit %s", url)
