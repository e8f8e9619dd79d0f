"""The playground page: static files shipped in `infer/web/` plus the settings it starts from.

The page is plain HTML/CSS/JS with no build step and no network beyond the server that hosts
it. It reads `config.json` (what `page_config` returns) for the model's name and size and the
card's sampling defaults, ranges and example prompts, then talks to the OpenAI-compatible
endpoints of `stentor serve`.
"""

from __future__ import annotations

from importlib import resources

from stentor.model.presets import MAX_NEW_TOKENS_DEFAULT, SAMPLING_DEFAULTS, SAMPLING_RANGES, WIDGET_PROMPTS

# name -> media type; nothing else under web/ is served
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}


def asset(name: str) -> bytes:
    """One of the page's files, read from the installed package."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("stentor.infer").joinpath("web", name).read_bytes()


def page_config(config: dict, model_name: str, *, vocab_size: int, context: int, chat: bool, max_tokens: int,
                max_prompt_tokens: int, draft: bool = False, needs_key: bool = False) -> dict:
    """What the page needs to know: the model (its config.json as a dict), the limits of whatever runs it
    (the server, or the browser tab of `stentor export web`), the card's sampling guidance."""
    from stentor.model.params import config_parameters

    return {
        "model": model_name,
        "parameters": config_parameters(config),
        "vocab_size": vocab_size,
        "context": context,
        "chat": chat,
        "max_tokens": max_tokens,
        "max_prompt_tokens": max_prompt_tokens,
        "draft": draft,  # rows are decoded speculatively; each reply reports the draft's acceptance rate
        "needs_key": needs_key,  # the API wants 'Authorization: Bearer KEY': the page asks for it
        "defaults": {**SAMPLING_DEFAULTS, "max_tokens": min(max_tokens, MAX_NEW_TOKENS_DEFAULT)},
        "ranges": {name: {"low": lo, "high": hi, "below": below, "above": above}
                   for name, (lo, hi, below, above) in SAMPLING_RANGES.items()},  # fmt: skip
        "examples": [{"title": title, "prompt": prompt} for title, prompt in WIDGET_PROMPTS],
    }
