"""The playground page of `stentor serve`, driven in real headless Chromium (Debian's package) by Playwright.

The model (tests/browser.py) is a tiny Llama trained here for a few seconds on a TokenMonster
vocabulary; its context is long enough that a generation lasts for seconds, so Stop and a dropped
connection can be seen mid-stream.
"""

from __future__ import annotations

import time

import httpx
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, need_browser
from serving import stentor_serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server(story_model):
    need_browser()
    with stentor_serve(story_model, "--model-name", "story", "--max-tokens", "16000", "--max-prompt-tokens", "200") as s:
        yield s


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 850})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server[1] + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    yield page
    context.close()
    assert not errors, errors  # no uncaught script errors on any page


def runs(page) -> int:
    """Generations the page has finished (it counts them in body[data-runs])."""
    return int(page.evaluate("document.body.dataset.runs || '0'"))


def wait_idle(page, before: int, timeout: float = 60_000) -> None:
    page.wait_for_function(f"Number(document.body.dataset.runs || 0) > {before}", timeout=timeout)


def generate(page, prompt: str, *, seed: str = "", max_tokens: str = "40", **fields) -> str:
    page.fill("#prompt", prompt)
    page.fill("#seed", seed)
    page.fill("#max_tokens", max_tokens)
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    before = runs(page)
    page.click("#generate")
    wait_idle(page, before)
    return page.text_content("#completion")


def vocab_size(model_dir) -> int:
    import json

    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def test_the_page_shows_the_model_and_streams_an_example(page, story_model, tmp_path_factory):
    info = page.text_content("#model-info")
    assert info.startswith("story") and f"vocabulary {vocab_size(story_model)}" in info
    assert "context 16,384 tokens" in info and "M parameters" in info
    assert [b.text_content() for b in page.query_selector_all("#examples button")] == [
        "Story Generation", "Toy Explanation (Often Wrong)", "Code Continuation", "Science Continuation"]  # fmt: skip
    assert page.input_value("#temperature") == "0.8" and page.input_value("#top_p") == "0.7"
    assert page.input_value("#repetition_penalty") == "1.2"
    assert page.is_hidden("#fig-draft-box")  # no --draft on this server
    # record every length the completion passes through while it streams
    page.evaluate("""() => { window.lengths = [];
        new MutationObserver(() => window.lengths.push(document.getElementById('completion').textContent.length))
          .observe(document.getElementById('completion'), {childList: true, subtree: true, characterData: true}); }""")
    page.fill("#max_tokens", "1200")
    page.check("#show-tokens")
    page.click("#examples button >> text=Story Generation")
    wait_idle(page, 0)
    assert page.input_value("#prompt") == "Once upon a time"
    lengths = page.evaluate("window.lengths")
    assert len(set(lengths)) > 10 and lengths == sorted(lengths)  # it grew piece by piece, never re-rendered
    assert page.text_content("#completion") and int(page.text_content("#fig-tokens")) > 10
    assert page.text_content("#fig-ttft").endswith(" ms") and float(page.text_content("#fig-rate")) > 0
    shot = tmp_path_factory.mktemp("artifacts") / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_token_chips_carry_the_tokenizers_ids_and_pieces(page, story_model):
    from stentor.infer.text import token_pieces
    from stentor.tokenizer.hf import load_tokenizer

    page.check("#show-tokens")
    text = generate(page, "the cat sat on", seed="1")
    chips = page.query_selector_all("#tokens .chip")
    ids = [int(c.get_attribute("data-id")) for c in chips]
    tokenizer = load_tokenizer(story_model)
    names, _ = token_pieces(tokenizer, vocab_size(story_model))
    assert ids and tokenizer.decode(ids) == text
    assert [c.text_content() for c in chips] == [names[i].replace("\n", "\u21b5") or "\u2205" for i in ids]
    probabilities = [float(c.get_attribute("data-p")) for c in chips]
    assert all(0 < p <= 1 for p in probabilities) and len(set(probabilities)) > 1
    assert "id " in chips[0].get_attribute("title") and "likeliest" in chips[0].get_attribute("title")


def test_the_same_seed_gives_the_same_text_and_settings_change_it(page):
    first = generate(page, "the dog", seed="7", temperature="1.0")
    assert first and generate(page, "the dog", seed="7", temperature="1.0") == first
    assert generate(page, "the dog", seed="8", temperature="1.0") != first
    assert generate(page, "the dog", seed="7", temperature="1.5") != first


def test_warnings_follow_the_cards_ranges(page):
    warning = page.locator('.field[data-name="temperature"] .warn')
    assert warning.is_hidden()
    page.fill("#temperature", "0.4")
    assert warning.is_visible() and "PDF tokens" in warning.text_content()
    page.fill("#repetition_penalty", "1.0")
    assert "loops" in page.text_content('.field[data-name="repetition_penalty"] .warn')
    page.click("#reset")
    assert warning.is_hidden() and page.input_value("#temperature") == "0.8"


def test_an_invalid_value_is_shown_in_plain_words(page):
    generate(page, "the cat", temperature="-1")
    error = page.text_content("#error")
    assert page.is_visible("#error") and error.startswith("The server refused the request:")
    assert "temperature" in error and "must be 0 (greedy)" in error and "Traceback" not in error
    page.fill("#temperature", "0.8")
    assert generate(page, "the cat", seed="2") and page.is_hidden("#error")  # the next good request clears it


def test_stop_ends_the_stream_and_the_server_stops_decoding(page, server):
    url = server[1]
    decoded = lambda: httpx.get(f"{url}/health").json()["tokens"]  # noqa: E731
    # A seed whose 16,000 tokens hold no EOS (checked through the API with the page's own settings), so the
    # run cannot end by itself before Stop is pressed: unseeded, it sometimes did, and Stop was disabled.
    page.fill("#prompt", "once upon a time")
    page.fill("#max_tokens", "16000")
    page.fill("#seed", "3")
    body = {"prompt": "once upon a time", "max_tokens": 16000, "seed": 3, "logprobs": 5, "suppress_replacement_tokens":
            page.is_checked("#suppress"), "top_k": int(page.input_value("#top_k")),
            **{k: float(page.input_value(f"#{k}")) for k in ("temperature", "top_p", "repetition_penalty")}}  # fmt: skip
    premise = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()["choices"][0]
    assert premise["finish_reason"] == "length", "pick another seed: this one reaches EOS"
    start = decoded()
    page.keyboard.press("Control+Enter")
    tokens_past = lambda n: page.wait_for_function(  # noqa: E731
        f"parseInt(document.getElementById('fig-tokens').textContent) > {n}", timeout=60_000)
    tokens_past(20)
    early = page.locator("#stop").bounding_box()
    tokens_past(400)  # many lines of text later: Stop has not moved from under the pointer
    assert page.locator("#stop").bounding_box() == early
    page.click("#stop")
    wait_idle(page, 0)
    status = page.text_content("#status")
    assert status.startswith("stopped after ")
    assert 400 <= int(status.split()[2]) < 16000
    last, deadline = decoded(), time.monotonic() + 20
    while time.monotonic() < deadline:  # the server notices the closed stream within a step or two
        time.sleep(0.5)
        now = decoded()
        if now == last:
            break
        last = now
    assert decoded() == last and last - start < 16000  # the row ended early, nothing decodes for it now


def test_chat_keeps_the_turns(page):
    page.click("#mode-chat")
    assert page.is_visible("#chat-pane") and "base model" in page.text_content("#chat-pane .note")
    actions = page.locator("#actions").bounding_box()
    for turn, message in enumerate(["hello there", "tell me about the cat"], start=1):
        page.fill("#message", message)
        page.fill("#max_tokens", "20")
        before = runs(page)
        page.click("#generate")
        wait_idle(page, before)
        assert page.is_hidden("#error"), page.text_content("#error")
        bubbles = page.query_selector_all("#transcript .message")
        assert len(bubbles) == 2 * turn
        assert message in bubbles[-2].text_content() and "model" in bubbles[-1].text_content()
        assert page.locator("#actions").bounding_box() == actions  # a longer transcript scrolls, the buttons stay
    page.click("#new-chat")
    assert page.query_selector_all("#transcript .message") == []


def test_the_page_fits_a_phone(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    page = context.new_page()
    page.goto(server[1] + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator("#settings").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390  # the settings stack below the prompt
    context.close()


def test_serve_open_points_the_browser_at_the_page(story_model, tmp_path):
    seen = tmp_path / "opened.txt"
    browser = f"/bin/sh -c 'echo $0 > {seen}' %s"  # webbrowser runs $BROWSER with the URL for %s
    with stentor_serve(story_model, "--open", env={"BROWSER": browser}) as (_, url):
        deadline = time.monotonic() + 20
        while not seen.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen.read_text().strip() == url + "/"


def test_with_a_draft_each_reply_shows_the_acceptance_rate(browser, story_model):
    with stentor_serve(story_model, "--draft", str(story_model)) as (_, url):  # the model drafting for itself
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]")
        assert page.is_visible("#fig-draft-box")
        text = generate(page, "the cat", seed="5")
        figure = page.text_content("#fig-draft")
        page.close()
    assert text and figure.endswith(")") and "%" in figure
    accepted, proposed = map(int, figure.split("(")[1].rstrip(")").split("/"))
    assert 0 < proposed and accepted == proposed  # a draft identical to the target is always accepted


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(browser, story_model):
    with stentor_serve(story_model, "--api-key", "sesame-0123") as (_, url):
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]")
        assert page.is_visible("#api-key")
        generate(page, "the cat", seed="5")
        refused = page.text_content("#error")
        page.fill("#api-key", "sesame-0123")
        text = generate(page, "the cat", seed="5")
        cleared = page.is_hidden("#error")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        kept = page.input_value("#api-key")  # for this tab only (sessionStorage)
        page.close()
    assert "needs its API key" in refused and text and cleared and kept == "sesame-0123"


def test_a_dropped_connection_is_reported(page, server):
    """Last in the module: it kills the server."""
    proc, _ = server
    page.fill("#prompt", "once upon a time")
    page.fill("#max_tokens", "16000")
    page.click("#generate")
    page.wait_for_function("parseInt(document.getElementById('fig-tokens').textContent) > 20", timeout=30_000)
    proc.kill()
    wait_idle(page, 0, timeout=20_000)
    assert "connection to the server was lost" in page.text_content("#error")
