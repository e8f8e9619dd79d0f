"""`stentor.load(...)`: a model + tokenizer ready to generate text, on the compiled runtime, torch or HF.

`load` of a model directory runs on the lean path when it can: weights mapped from safetensors
into the compiled runtime (`native.py`), the tokenizer read by `TextCodec`, no torch and no
transformers imported. `.model` (the HF model) and `.hf_tokenizer` load on first use, for the
callers that need them (speculative decoding, evaluation).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from stentor.errors import StentorError
from stentor.infer.decoding import SamplingParams, Step, TokenLogprobs, chosen_logprobs
from stentor.infer.text import Utf8Guard, streaming_decoder

log = logging.getLogger(__name__)

# stentor: the compiled runtime, else the torch engine (with a notice); torch: the torch engine; hf: HF generate
ENGINES = ("stentor", "torch", "hf")
_PARAM_NAMES = {f.name for f in fields(SamplingParams)}


def sampling_params(**sampling) -> SamplingParams:
    """SamplingParams from keyword arguments, naming any unknown one (None means 'default')."""
    unknown = set(sampling) - _PARAM_NAMES
    if unknown:
        raise StentorError(
            f"unknown sampling option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_PARAM_NAMES))}"
        )
    return SamplingParams(**{k: v for k, v in sampling.items() if v is not None})


class Stentor:
    """A loaded model: `.generate()`, `.stream()`, `.tokenizer`, `.engine`, and the HF `.model`.

    `engine="stentor"` decodes on the compiled runtime (falling back to the torch `Engine` with a
    one-line notice where it cannot run), `"torch"` on the torch `Engine`, `"hf"` with
    `model.generate` and the same settings (for comparison, or for models our engines do not cover).
    """

    def __init__(self, model, tokenizer, *, engine: str = "stentor", compile: bool = False,
                 threads: int | None = None, runtime=None, source: str | None = None):
        if engine not in ENGINES:
            raise StentorError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self._model = model
        self._source = source
        self.tokenizer = tokenizer
        self.engine = runtime
        if model is not None:
            import torch

            half = getattr(model, "stentor_quantization", None) is None and model.dtype != torch.float32
            self._model = model.eval()
            if engine == "stentor" and not compile:
                if half:  # the runtime computes in fp32/int8; half weights were asked for, so keep them
                    log.info("stentor: %s weights run on the torch engine (the compiled runtime is fp32/int8)",
                             str(model.dtype).removeprefix("torch."))
                else:
                    self.engine = _native_or_none(lambda w: w.from_model(model), threads)
            if engine != "hf" and self.engine is None:
                from stentor.infer.engine import Engine

                self.engine = Engine(model, compile=compile, dtype=model.dtype if half else torch.float32)
            config = model.config
            self.vocab_size, self.context = config.vocab_size, config.max_position_embeddings
            model_eos = [getattr(model, "generation_config", None), config]
        else:
            self.vocab_size, self.context = runtime.vocab_size, runtime.max_positions
            model_eos = [runtime.weights.generation, runtime.weights.config]
        self.backend = "hf" if self.engine is None else type(self.engine).__name__
        self.eos_ids = self._eos_ids(model_eos)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _get(model_eos[-1], "pad_token_id")
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))
        self._guard: Utf8Guard | None = None
        self._hf_tokenizer = None
        self.lock = threading.Lock()  # one generation at a time per engine (its KV cache is shared)

    @property
    def model(self):
        """The HF model (loaded on first use after a lean load; needs torch and transformers)."""
        if self._model is None:
            from stentor.model.loading import load_model

            self._model = load_model(self._source)
        return self._model

    @property
    def config(self) -> dict:
        """The model's config.json as a dict (from the runtime's weights or the HF model)."""
        return dict(self.engine.weights.config) if self._model is None else self._model.config.to_dict()

    @property
    def hf_tokenizer(self):
        """The tokenizer as a transformers object (after a lean load it is loaded on first use)."""
        if hasattr(self.tokenizer, "convert_ids_to_tokens"):
            return self.tokenizer
        if self._hf_tokenizer is None:
            from stentor.tokenizer.hf import load_tokenizer

            self._hf_tokenizer = load_tokenizer(self._source)
        return self._hf_tokenizer

    def _eos_ids(self, sources: list) -> frozenset[int]:
        ids: set[int] = set()
        for source in [*sources, self.tokenizer]:
            eos = _get(source, "eos_token_id")
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return frozenset(int(i) for i in ids)

    # -- prompts -----------------------------------------------------------------------------

    def encode(self, prompt: str | list[int], *, chat: bool = False, max_new_tokens: int = 1, fit: bool = True) -> list[int]:
        """Token ids for a prompt (text, or ids as they are); `chat` applies the chat template.
        A prompt too long for the context keeps its last tokens unless `fit` is False."""
        if isinstance(prompt, str):
            if chat:
                return self.encode_chat([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, fit=fit)
            ids = list(self.tokenizer(prompt)["input_ids"])
        elif isinstance(prompt, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
            ids = list(prompt)
        else:
            raise StentorError(f"a prompt is a string or a list of token ids, not {type(prompt).__name__}")
        return self._fit(ids, max_new_tokens, fit)

    def encode_chat(self, messages: list[dict], *, max_new_tokens: int = 1, fit: bool = True) -> list[int]:
        """Apply the tokenizer's chat template with a generation prompt and tokenize the result."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise StentorError(
                f"the tokenizer ({type(self.tokenizer).__name__}) has no chat template; drop --chat / use plain prompts"
            )
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja errors: the template rejected these messages
            raise StentorError(f"the chat template rejected the messages: {exc}") from None
        return self._fit(list(self.tokenizer(text, add_special_tokens=False)["input_ids"]), max_new_tokens, fit)

    def _fit(self, ids: list[int], max_new_tokens: int, fit: bool = True) -> list[int]:
        if not ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise StentorError("the prompt is empty and the tokenizer has no BOS token; give some text")
            ids = [bos]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise StentorError(f"prompt token ids must be in [0, {self.vocab_size}); the tokenizer does not fit the model")
        if fit and self.engine is not None:
            return self.engine.fit_prompt(ids, max_new_tokens)
        return ids

    def utf8_guard(self) -> Utf8Guard:
        """What `suppress_replacement_tokens` uses (built on first use: one pass over the vocabulary)."""
        if self._guard is None:
            self._guard = Utf8Guard(self.tokenizer, self.vocab_size)
        return self._guard

    # -- generation --------------------------------------------------------------------------

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                     cancelled=None) -> Iterator[Step]:
        """Token steps for a batch of encoded prompts (one row each); `cancelled(i)` ends row i early."""
        rows = params if isinstance(params, list) else [params] * len(prompts)
        guard = self.utf8_guard() if any(p.suppress_replacement_tokens for p in rows) else None
        if self.engine is not None:
            return self.engine.generate(prompts, rows, self.eos_ids, self.pad_id, guard, cancelled)
        if len(set(rows)) != 1 or len({len(p) for p in prompts}) != 1:
            raise StentorError("the hf engine decodes one setting and one prompt length per call; use --engine stentor")
        if rows[0].logprobs is not None or rows[0].adjusts_logits:
            raise StentorError("logprobs, logit_bias and presence/frequency penalties come from the stentor and torch "
                               "engines, not hf; use --engine stentor")  # fmt: skip
        return _hf_steps(self, prompts, rows[0], guard)

    def prompt_logprobs(self, ids: list[int], top: int = 0) -> list[TokenLogprobs | None]:
        """Each token's log-probability given the ones before it, with the `top` likeliest there
        (the first token has none): the raw log-softmax, as generation's logprobs."""
        if self.engine is None:
            raise StentorError("prompt logprobs come from the stentor and torch engines, not hf; use --engine stentor")
        if self.backend == "NativeEngine":
            logits = self.engine.logits([ids])[0]
        else:
            import torch

            logits = self.engine.logits(torch.tensor([ids]))[0].float().numpy()
        rows = [SamplingParams(logprobs=top)] * (len(ids) - 1)
        return [None, *chosen_logprobs(logits[:-1], ids[1:], rows)] if len(ids) > 1 else [None]

    def _expand(self, prompt, chat: bool, sampling: dict) -> tuple[list[list[int]], SamplingParams]:
        params = sampling_params(**sampling)
        ids = self.encode(prompt, chat=chat, max_new_tokens=params.max_new_tokens)
        return [ids] * params.num_samples, params

    def generate(self, prompt: str | list[int], *, chat: bool = False, **sampling) -> str | list[str]:
        """Complete `prompt`; a string, or a list of `num_samples` strings when num_samples > 1."""
        prompts, params = self._expand(prompt, chat, sampling)
        outputs: list[list[int]] = [[] for _ in prompts]
        with self.lock:
            done = [False] * len(prompts)
            for step in self.generate_ids(prompts, params):
                for i, token in enumerate(step.tokens):
                    if not done[i] and not (params.stop_at_eos and token in self.eos_ids):
                        outputs[i].append(token)
                    done[i] = step.finished[i]
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
        return texts[0] if params.num_samples == 1 else texts

    def stream(self, prompt: str | list[int], *, chat: bool = False, **sampling) -> Iterator[str]:
        """Yield the completion of `prompt` piece by piece, as soon as each piece is valid text."""
        prompts, params = self._expand(prompt, chat, sampling)
        if params.num_samples != 1:
            raise StentorError("stream() produces one sample; use generate() for num_samples > 1")
        decoder = streaming_decoder(self.tokenizer)
        with self.lock:
            for step in self.generate_ids(prompts, params):
                token = step.tokens[0]
                if not (params.stop_at_eos and token in self.eos_ids):
                    piece = decoder.push([token])
                    if piece:
                        yield piece
        tail = decoder.flush()
        if tail:
            yield tail


def _get(source, name: str):
    """An attribute of a config object, or a key of a config dict."""
    return source.get(name) if isinstance(source, dict) else getattr(source, name, None)


def _native_or_none(make, threads: int | None):
    """A NativeEngine over `make(Weights)`, or None with a one-line notice saying why it cannot run."""
    from stentor.infer.native import NativeEngine, Unsupported, Weights

    try:
        return NativeEngine(make(Weights), threads=threads)
    except Unsupported as exc:
        log.warning("stentor: using the torch engine: %s", exc)
        return None


def _hf_steps(lm: Stentor, prompts: list[list[int]], params: SamplingParams, guard: Utf8Guard | None) -> Iterator[Step]:
    """HF `generate` with the same settings, run in a thread and turned into the engine's `Step`s."""
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
    from transformers.generation.streamers import BaseStreamer

    class _GuardProcessor(LogitsProcessor):
        """The engine's Utf8Guard as an HF processor (first in the list, as the engine applies it)."""

        def __init__(self):
            self.states = guard.start(prompts)
            self.prompt = len(prompts[0])

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] > self.prompt:
                self.states = guard.advance(self.states, input_ids[:, -1].numpy())
            last = input_ids.shape[1] - self.prompt + 1 >= config.max_new_tokens
            banned = guard.mask(self.states, [last] * len(self.states))
            return scores.masked_fill(torch.from_numpy(banned), -math.inf)

    steps: queue.Queue = queue.Queue()

    class _Collector(BaseStreamer):
        first = True

        def put(self, value):
            if self.first:  # generate() first reports the prompt
                self.first = False
                return
            steps.put(value.reshape(-1).tolist())

        def end(self):
            steps.put(None)

    sample = params.do_sample
    config = GenerationConfig(
        do_sample=sample,
        temperature=params.temperature if sample else None,
        top_p=params.top_p if sample else None,
        top_k=params.top_k if sample else None,  # explicit 0: HF would otherwise fill in its default of 50
        min_p=params.min_p if sample else None,
        repetition_penalty=params.repetition_penalty,
        max_new_tokens=min(params.max_new_tokens, lm.context - len(prompts[0])),
        eos_token_id=sorted(lm.eos_ids) if params.stop_at_eos and lm.eos_ids else None,
        pad_token_id=lm.pad_id,
    )
    processors = LogitsProcessorList([_GuardProcessor()] if guard is not None else [])
    ids = torch.tensor(prompts)
    errors: list[BaseException] = []

    def run():
        try:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                lm.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                  logits_processor=processors, streamer=collector)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            steps.put(None)

    collector = _Collector()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    finished = [False] * len(prompts)
    count = 0
    while (tokens := steps.get()) is not None:
        count += 1
        for i, token in enumerate(tokens):
            finished[i] = finished[i] or (params.stop_at_eos and token in lm.eos_ids) or count >= config.max_new_tokens
        yield Step(tokens, list(finished))
    thread.join()
    if errors:
        raise errors[0]


def load(
    path_or_hub_id: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    engine: str = "stentor",
    compile: bool = False,
    threads: int | None = None,
    dtype: str | None = None,
) -> Stentor:
    """Load a model directory (or a hub id, when online or cached) and its tokenizer.

    The weights must be safetensors; the tokenizer comes from the same place unless given.
    A `stentor quantize` directory loads with its int8/int4 layers, in every engine. With the
    default engine a Llama-shaped directory with a Stentor tokenizer loads on the lean path
    (module docstring); `threads` is the compiled runtime's thread count (default: the cores).
    Float weights load as float32 whatever they were saved in; `dtype` ("float16", "bfloat16",
    or "auto" = as saved) keeps half weights, decoded by the torch engine in that dtype.
    """
    if engine not in ENGINES:
        raise StentorError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    spec = os.fspath(path_or_hub_id)
    from stentor.hub import local_path

    path = local_path(spec)  # a hub id: downloaded, or the HF cache's copy when offline
    spec = str(path) if path.exists() else spec
    if dtype not in (None, "float32"):
        import torch

        from stentor.model.loading import torch_dtype

        if torch_dtype(dtype, path if path.is_dir() else None) != torch.float32:
            return _load_torch(spec, path, tokenizer, engine=engine, compile=compile, threads=threads, dtype=dtype)
    if engine == "stentor" and not compile and path.is_dir():
        lean = _lean_load(path, Path(tokenizer).expanduser() if tokenizer is not None else path, threads)
        if isinstance(lean, Stentor):
            return lean
        if lean == "refused":  # the runtime said why (once); the torch engine it is
            engine = "torch"
    return _load_torch(spec, path, tokenizer, engine=engine, compile=compile, threads=threads)


def _load_torch(spec: str, path: Path, tokenizer, *, dtype: str | None = None, **options) -> Stentor:
    """The HF model and tokenizer, for the torch engine, HF generate, or the runtime fed from torch."""
    from stentor.model.loading import load_model
    from stentor.tokenizer.hf import load_tokenizer

    model = load_model(spec, dtype=dtype)
    tok = load_tokenizer(tokenizer if tokenizer is not None else (str(path) if path.exists() else spec))
    return Stentor(model, tok, source=spec, **options)


def _lean_load(path: Path, tokenizer_dir: Path, threads: int | None) -> Stentor | str:
    """The model on the compiled runtime with a `TextCodec`; else "tokenizer" (not a Stentor tokenizer
    directory) or "refused" (the runtime cannot run this model here; the notice is given)."""
    from stentor.tokenizer.codec import DamagedFile, TextCodec
    from stentor.tokenizer.tokenmonster import VocabError

    try:
        codec = TextCodec.from_dir(tokenizer_dir)
    except DamagedFile as exc:  # ours, but damaged: say so rather than try another loader
        raise StentorError(f"{exc}; save the tokenizer or download the model again") from None
    except (OSError, ValueError, KeyError, TypeError, VocabError):
        return "tokenizer"  # not a Stentor tokenizer directory: the HF loader reads it (and reports what is wrong)
    runtime = _native_or_none(lambda w: w.from_dir(path), threads)
    if runtime is None:
        return "refused"
    return Stentor(None, codec, runtime=runtime, source=str(path))
