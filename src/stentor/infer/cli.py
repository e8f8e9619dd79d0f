"""`stentor generate` and `stentor serve`."""

from __future__ import annotations

import argparse
import os
import sys

from stentor.model.loading import DTYPES
from stentor.model.presets import MAX_NEW_TOKENS_DEFAULT, SAMPLING_DEFAULTS


def _load(args: argparse.Namespace):
    from stentor.errors import StentorError
    from stentor.infer.api import load

    if args.threads is not None and args.threads < 1:
        raise StentorError(f"--threads must be >= 1, got {args.threads}")
    if args.engine != "stentor":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep the terminal for the generated text
    lm = load(args.model, tokenizer=args.tokenizer, engine=args.engine, compile=args.compile, threads=args.threads,
              dtype=args.dtype)
    if args.threads is not None and "torch" in sys.modules:  # the torch engine or HF generate
        sys.modules["torch"].set_num_threads(args.threads)
    return lm


def _generate(args: argparse.Namespace) -> int:
    from stentor.infer.api import sampling_params

    sampling = dict(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        suppress_replacement_tokens=args.suppress_replacement,
    )
    sampling_params(**sampling)  # validate before loading the model
    lm = _load(args)
    if args.draft:  # speculative decoding lives in stentor.infer.speculative (deployment, issue 7)
        from stentor.infer.speculative import generate_with_draft

        echo = not (args.chat or args.no_echo)
        return generate_with_draft(lm, args.draft, args.prompt, args.draft_k, chat=args.chat, echo=echo, **sampling)
    if args.num_samples > 1 or args.no_stream:
        texts = lm.generate(args.prompt, chat=args.chat, **sampling)
        for i, text in enumerate(texts if isinstance(texts, list) else [texts]):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            print(args.prompt if not args.chat and not args.no_echo else "", text, sep="")
        return 0
    if not args.chat and not args.no_echo:
        sys.stdout.write(args.prompt)
    for piece in lm.stream(args.prompt, chat=args.chat, **sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from stentor.infer.server import ServeConfig, serve

    from stentor.errors import StentorError

    def config(max_prompt_tokens: int) -> ServeConfig:
        return ServeConfig(
            host=args.host,
            port=args.port,
            model_name=args.model_name or args.model.rstrip("/").split("/")[-1],
            max_batch=args.max_batch,
            max_prompt_tokens=max_prompt_tokens,
            max_tokens=args.max_tokens,
            default_max_tokens=min(args.default_max_tokens, args.max_tokens),
            max_body_bytes=args.max_body_bytes,
            batch_wait_ms=args.batch_wait_ms,
            request_timeout_s=args.request_timeout,
            api_key=args.api_key or None,
            allowed_hosts=tuple(args.allowed_hosts) if args.allowed_hosts else None,
            cors_origins=tuple(args.cors_origin or ()),
        )

    config(args.max_prompt_tokens or 1)  # validate the limits before loading the model
    lm = _load(args)
    max_prompt = args.max_prompt_tokens or lm.context * 3 // 4
    if max_prompt >= lm.context:
        raise StentorError(f"--max-prompt-tokens {max_prompt} must be below the model's context of {lm.context}")
    draft = None
    if args.draft:
        from stentor.infer.speculative import DraftedModel

        draft = DraftedModel(lm, args.draft, args.draft_k)
    return serve(lm, config(max_prompt), open_page=args.open, draft=draft)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (safetensors) or a hub id (needs the network or cache)")
    p.add_argument("--tokenizer", help="tokenizer directory, .vocab file or hub id (default: the model's own)")
    p.add_argument(
        "--engine",
        choices=("stentor", "torch", "hf"),
        default="stentor",
        help="stentor: the compiled CPU runtime (the torch engine where it cannot run); torch: our torch "
        "engine; hf: transformers generate, same settings (default: %(default)s)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's forward (slow start, needs a C++ compiler)")
    p.add_argument("--threads", type=int, help="CPU threads (default: the cores this process may use, at most 8)")
    p.add_argument("--dtype", choices=DTYPES, help="weights' dtype: float32 (default, whatever the checkpoint was saved "
                   "in), float16/bfloat16 (keep half; the torch engine), auto (as saved)")


def _draft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--draft",
        help="a smaller model with the same tokenizer that drafts tokens for the model to check (speculative "
        "decoding: same output distribution, fewer forwards of --model; see docs/deployment.md)",
    )
    p.add_argument("--draft-k", default="4", help="tokens drafted per step: a number or 'adaptive' (default: %(default)s)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a prompt, streamed to the terminal",
        description=(
            "Complete a prompt with the card's recommended sampling (temperature 0.8, top-p 0.7, repetition\n"
            "penalty 1.2); generation stops at the EOS token or after --max-new-tokens. Text is printed as it\n"
            "is produced. A prompt longer than the context keeps its last tokens (with a warning).\n"
            "Examples:\n"
            "  stentor generate --model runs/my-model \"The history of computing\"\n"
            "  stentor generate --model runs/my-model --greedy --max-new-tokens 50 \"Once upon a time\"\n"
            "  stentor generate --model runs/my-model --chat -n 3 --seed 1 \"What is a school?\""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_args(p)
    p.add_argument("prompt", help="the text to continue (with --chat: the user message)")
    p.add_argument("--temperature", type=float, default=SAMPLING_DEFAULTS["temperature"], help="default: %(default)s")
    p.add_argument("--top-p", type=float, default=SAMPLING_DEFAULTS["top_p"], help="nucleus mass in (0, 1]; 1 = off (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off (default: %(default)s)")
    p.add_argument("--min-p", type=float, help="drop tokens below min_p x the top probability (default: off)")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=SAMPLING_DEFAULTS["repetition_penalty"],
        help="HF-style penalty on every token already in the text; 1 = off (default: %(default)s)",
    )
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    p.add_argument("--seed", type=int, help="sampling seed, for reproducible output")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="independent samples to print (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS_DEFAULT, help="ceiling on new tokens (default: %(default)s)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template as a user message")
    p.add_argument("--no-stream", action="store_true", help="print the whole completion at the end instead of streaming")
    p.add_argument("--no-echo", action="store_true", help="print only the completion, not the prompt before it")
    p.add_argument(
        "--suppress-replacement",
        action="store_true",
        help="never emit tokens whose bytes can only decode to U+FFFD (the card's PDF tokens); see docs/inference.md",
    )
    _draft_args(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description=(
            "Serve a playground page at / (prompt, sampling controls, chat, token view; --open opens it),\n"
            "/v1/completions, /v1/chat/completions (both with stream: true as server-sent events),\n"
            "/v1/models, /health and /metrics. Concurrent requests are decoded together in one batch\n"
            "(with --draft: one at a time, speculatively, each reply reporting the draft's acceptance).\n"
            "Besides OpenAI's fields, requests may set top_k, min_p, repetition_penalty and\n"
            "suppress_replacement_tokens; unset fields use the card's defaults. Ctrl-C / SIGTERM stops\n"
            "accepting requests, finishes the ones in flight, and exits 0.\n"
            "Example:\n"
            "  stentor serve --model runs/my-model --open      # the playground in your browser\n"
            "  stentor serve --model runs/my-model --port 8000\n"
            "  curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
            "       -d '{\"prompt\": \"The history of\", \"max_tokens\": 50}'\n"
            "Bodies are JSON sent as Content-Type: application/json (so no web page can post to a local\n"
            "server); --api-key, --allowed-hosts and --cors-origin guard a server others can reach.\n"
            "Every request field: docs/serving.md."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument("--model-name", help="the model id clients send (default: the model directory's name)")
    p.add_argument("--max-batch", type=int, default=8, help="most rows decoded together (default: %(default)s)")
    p.add_argument(
        "--max-prompt-tokens", type=int, help="longer prompts get a 400 (default: 3/4 of the model's context)"
    )
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask (default: %(default)s)")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request sets none (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default: %(default)s)")
    p.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long an idle server waits to gather a batch (default: %(default)s)"
    )
    p.add_argument(
        "--request-timeout", type=float, default=10.0,
        help="seconds a request's headers and body may take to arrive; slower connections are closed (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--api-key",
        default=os.environ.get("STENTOR_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every endpoint but /health and the page's files "
        "(default: $STENTOR_API_KEY; none)",
    )
    p.add_argument(
        "--allowed-hosts", nargs="+", metavar="HOST",
        help="Host header values to answer (default: localhost, 127.0.0.1, ::1 and --host; any with --host 0.0.0.0); "
        "'*' for any. Stops DNS-rebinding pages from reaching a local server",
    )  # fmt: skip
    p.add_argument(
        "--cors-origin", action="append", metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://example.org) call the API; repeatable (default: none)",
    )  # fmt: skip
    p.add_argument("--open", action="store_true", help="open the playground page (GET /) in the default browser")
    _draft_args(p)
    p.set_defaults(func=_serve)
