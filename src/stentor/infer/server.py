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
from stentor.infer.decoding import SamplingParams
from stentor.infer.playground import ASSETS, asset, page_config
from stentor.infer.text import StopText, streaming_decoder, token_pieces

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

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 256:
            raise StentorError(f"--max-batch {self.max_batch} must be between 1 and 256")
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise StentorError("--default-max-tokens must be between 1 and --max-tokens")
        if self.max_prompt_tokens < 1 or self.max_body_bytes < 1024:
            raise StentorError("--max-prompt-tokens must be >= 1 and --max-body-bytes >= 1024")
        if not 0 <= self.port <= 65535:
            raise StentorError(f"--port {self.port} must be between 0 and 65535")


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

    def send(self, *event: Any) -> None:
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

    def pieces(self) -> tuple[list[str], list[bytes]]:
        """Each id's text and bytes (`token_pieces`), built on the first request for logprobs."""
        if self._pieces is None:
            with self.tokenizer_lock:
                try:
                    self._pieces = token_pieces(self.lm.tokenizer, self.lm.vocab_size)
                except StentorError as exc:
                    raise BadRequest(f"logprobs are not available for this tokenizer: {exc}", "logprobs") from None
        return self._pieces

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
                try:
                    self._decode(batch)
                except Exception as exc:  # report to the clients, keep serving
                    log.exception("batch failed")
                    for job in batch:
                        job.send("error", f"generation failed: {exc}")

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
        raise BadRequest(f"'{name}' must be {'a number' if kind is float else 'an integer'}, got {value!r}", name)
    return value


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
CHAT_ROLES = ("system", "user", "assistant")  # what the card's template says


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
            raise BadRequest(f"'logit_bias' key {key!r} is not a token id in [0, {vocab})", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise BadRequest(f"'logit_bias' of token {key} must be a number in [-100, 100], got {value!r}",
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
        raise BadRequest(f"'{name}' must be true or false, got {value!r}", name)
    return bool(value)


def _message_text(m) -> str:
    """A message's text: a string, or OpenAI's list of text parts."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise BadRequest("each message needs a string 'role' and a 'content'", "messages")
    if m["role"] not in CHAT_ROLES:
        raise BadRequest(f"role {m['role']!r} cannot be written in this model's chat template (it has "
                         f"{', '.join(CHAT_ROLES)})", "messages")  # fmt: skip
    content = m.get("content")
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content):
            raise BadRequest("message content parts must be text ({'type': 'text', 'text': ...})", "messages")
        return "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise BadRequest("each message needs a string 'role' and a string 'content'", "messages")
    return content


def _prompts(lm: Stentor, body: dict, chat: bool, config: ServeConfig) -> list[list[int]]:
    """The encoded prompts: chat messages, or a string, a token-id list, or a list of either."""
    field = "messages" if chat else "prompt"
    try:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
            prompts = [lm.encode_chat([{"role": m["role"], "content": _message_text(m)} for m in messages])]
        else:
            prompt = body.get("prompt")
            is_ids = lambda p: isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)  # noqa: E731
            if isinstance(prompt, str) or is_ids(prompt):
                prompt = [prompt]
            if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
                raise BadRequest("'prompt' must be a string, a list of token ids, or a list of either", "prompt")
            prompts = [lm.encode(p) for p in prompt]
    except StentorError as exc:
        raise BadRequest(str(exc), field) from None
    for ids in prompts:
        if len(ids) > config.max_prompt_tokens:
            raise BadRequest(f"the prompt has {len(ids)} tokens; this server accepts at most {config.max_prompt_tokens}",
                             field)  # fmt: skip
    return prompts


def build_app(lm: Stentor, config: ServeConfig, draft=None):
    """The Starlette application; its lifespan starts and stops the scheduler thread. With `draft`
    (a `speculative.DraftedModel`) every row is decoded speculatively, one row at a time."""
    import contextlib
    import importlib.util

    if not all(importlib.util.find_spec(name) for name in ("starlette", "uvicorn")):
        raise StentorError("stentor serve needs starlette and uvicorn: pip install 'stentor[serve]'")
    from starlette.applications import Starlette
    from starlette.requests import Request
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
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > config.max_body_bytes:
                raise BadRequest(f"request body over {config.max_body_bytes} bytes", status=413)
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model", config.model_name)
        if model != config.model_name:
            raise BadRequest(f"unknown model {model!r}; this server serves {config.model_name!r}", "model",
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
            with scheduler.tokenizer_lock:
                prompts = _prompts(lm, body, chat, config)
            if len(prompts) * n > MAX_ROWS:
                raise BadRequest(f"{len(prompts)} prompts x n={n} is over {MAX_ROWS} rows; split the request", "n")
            stream = _flag(body, "stream")
            options = body.get("stream_options")
            if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
                raise BadRequest("'stream_options' is {\"include_usage\": bool}, with stream true", "stream_options")
            include_usage = _flag(options or {}, "include_usage")
            loop = asyncio.get_running_loop()
            # Rows of one request get consecutive seeds, so n seeded samples differ from each other.
            jobs = [
                Job(prompt, params if params.seed is None else params.replace(seed=params.seed + i), k * n + i, loop,
                    echo=echo, generate=max_tokens > 0, stop=StopText(stops) if stops else None)
                for k, prompt in enumerate(prompts) for i in range(n)
            ]  # fmt: skip
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

        usage_completion = 0
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
            texts: dict[int, list[str]] = {job.index: [] for job in jobs}
            tokens: dict[int, list[tuple]] = {job.index: [] for job in jobs}
            finishes: dict[int, str] = {}
            drafted: dict[int, dict | None] = {}
            async for job, event in merged():
                if event[0] in ("text", "token"):
                    texts[job.index].append(event[1])
                    if event[0] == "token":
                        tokens[job.index].append(token_of(job, event))
                elif event[0] == "done":
                    finishes[job.index], drafted[job.index] = event[1], event[3]
                    usage_completion += event[2]
                else:
                    return error(BadRequest(event[1], status=503 if "shutting" in event[1] else 500))
            choices = [choice(job, "".join(texts[job.index]), finishes[job.index], False, tokens[job.index],
                              drafted[job.index]) for job in jobs]  # fmt: skip
            obj = "chat.completion" if chat else "text_completion"
            return JSONResponse({**meta, "object": obj, "choices": choices, "usage": usage(usage_completion)})

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
            with scheduler.tokenizer_lock:
                ids = list(lm.tokenizer(content, add_special_tokens=_flag(body, "add_special"))["input_ids"])
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
            return JSONResponse(page_config(lm, config.model_name, max_tokens=config.max_tokens,
                                            max_prompt_tokens=config.max_prompt_tokens, draft=draft is not None))
        if name not in ASSETS:
            return JSONResponse({"error": {"message": f"no page file {name!r}", "type": "not_found"}}, status_code=404)
        return Response(asset(name), media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    async def models(request: Request):
        entry = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "stentor"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": config.model_name, **scheduler.stats.snapshot()})

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
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.scheduler = scheduler
    return app


def serve(lm: Stentor, config: ServeConfig, *, open_page: bool = False, draft=None) -> int:
    """Run until SIGINT/SIGTERM; uvicorn stops accepting and drains in-flight requests, then we exit 0.

    `open_page` opens the playground in the default browser once the server listens; `draft` as in
    `build_app`.
    """
    import signal

    import uvicorn

    app = build_app(lm, config, draft)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=int(config.shutdown_timeout_s),
            limit_concurrency=1024,
        )
    )
    # uvicorn re-raises the stop signal once it has shut down; a no-op handler turns that into a clean exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
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
