"""`stentor export web`: the static folder runs the model in headless Chromium with no server behind it.

OUT is served by a plain static file server on loopback (with the two headers that give the page
threads); Playwright aborts every request to any other host, and the tests check none was made.
The JS tokenizer, sampling and the ONNX graph on onnxruntime-web are compared with stentor's Python.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, need_browser

from stentor.errors import StentorError
from stentor.export.web import PreviewFiles, preview_server
from stentor.model.presets import WIDGET_PROMPTS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class HalfFiles(PreviewFiles):
    """A host whose connection drops half way through model.onnx."""

    def copyfile(self, source, outputfile):
        if not self.path.endswith("model.onnx"):
            return super().copyfile(source, outputfile)
        data = source.read()
        outputfile.write(data[: len(data) // 2])
        self.close_connection = True


@pytest.fixture(scope="module")
def site(story_model, tmp_path_factory):
    from stentor.export.web import export_web, web_runtime

    need_browser()
    try:
        web_runtime()  # .ci/run installs it; elsewhere the first export does
    except StentorError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    return export_web(story_model, tmp_path_factory.mktemp("site") / "fp32")


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    need_browser()
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield chromium
    chromium.close()


@contextlib.contextmanager
def open_page(browser, root: Path, *, truncate: bool = False, init_script: str | None = None, wait_ready: bool = True):
    """The exported page, loaded with the network blocked; yields (page, errors, blocked requests)."""
    with preview_server(root, handler=HalfFiles if truncate else PreviewFiles) as url:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        blocked: list[str] = []

        def route(r):
            if r.request.url.startswith(url + "/") or r.request.url.startswith("data:"):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        if wait_ready:
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        try:
            yield page, errors, blocked
        finally:
            context.close()


@pytest.fixture(scope="module")
def page(browser, site):
    with open_page(browser, site.path) as (page, errors, blocked):
        yield page
        assert not errors, errors
        assert not blocked, blocked  # the page asked no other host for anything


def encode_cases() -> list[str]:
    """English, Unicode, specials written in the text, whitespace and control characters (>= 200 strings)."""
    import random

    rng = random.Random(7)
    words = ["the", "cat", "sat", "once", "upon", "a", "time", "dog", "ran", "home", "Hello", "WORLD", "naïve",
             "café", "Straße", "Ελληνικά", "σοφός", "русский", "日本語", "中文", "😀", "👍🏽", "e\u0301", "İstanbul",
             "don't", "“quoted”", "—", "1234", "3.14", "\t", "\n", "  ", "</s>", "<s>", "<reserved_3>", "\x7f", "\x00"]  # fmt: skip
    cases = ["", " ", "the cat sat on the mat", "Once upon a time", "def fibonacci(n):", "The laws of thermodynamics",
             "a" * 300, "ab" * 150, "\n\n\n", "</s></s><s>", "x</s>y"]  # fmt: skip
    for _ in range(240):
        cases.append("".join(rng.choice(words) + rng.choice(["", " ", " ", ", ", ". ", "\n"]) for _ in range(rng.randint(1, 12))))
    return cases


def test_encode_equals_the_python_tokenizer(page, story_model):
    from stentor.tokenizer.codec import TextCodec

    codec = TextCodec.from_dir(story_model)
    cases = encode_cases()
    got = page.evaluate("async (cases) => Promise.all(cases.map((t) => window.stentor.encode(t)))", cases)
    want = [codec.encode(text) for text in cases]
    assert len(cases) >= 200
    mismatched = [(text, g, w) for text, g, w in zip(cases, got, want) if g != w]
    assert not mismatched, mismatched[:3]
    decoded = page.evaluate("async (ids) => Promise.all(ids.map((i) => window.stentor.decode(i)))", want)
    assert decoded == [codec.decode(ids) for ids in want]
    # raw bytes, invalid UTF-8 included: truncated and overlong sequences, lone continuation bytes, surrogates
    raw = [b"\xff", b"\xc3", b"caf\xc3", b"\xe2\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80\x80abc", b"the \xf0\x9f\x98",
           "naïve".encode("latin-1"), bytes(range(256))]  # fmt: skip
    got = page.evaluate("async (cases) => Promise.all(cases.map((b) => window.stentor.encode(new Uint8Array(b))))",
                        [list(b) for b in raw])  # fmt: skip
    assert got == [[codec.bos_token_id, *codec.vocab.encode(b)] for b in raw]


@functools.lru_cache(maxsize=4)
def loaded(model_dir: Path):
    import stentor

    return stentor.load(str(model_dir))


def python_greedy(model_dir: Path, prompt: str, tokens: int) -> list[int]:
    import stentor

    lm = loaded(model_dir)
    steps = lm.generate_ids([lm.encode(prompt)], stentor.infer.SamplingParams(temperature=0, max_new_tokens=tokens))
    return [int(step.tokens[0]) for step in steps]


def test_greedy_generation_equals_stentor_generate(page, story_model):
    prompts = [prompt for _, prompt in WIDGET_PROMPTS]
    got = page.evaluate("""async (prompts) => { const out = [];
        for (const p of prompts) out.push(await window.stentor.generate(p, {temperature: 0, max_new_tokens: 32}));
        return out; }""", prompts)  # fmt: skip
    for prompt, result in zip(prompts, got):
        assert result["ids"] == python_greedy(story_model, prompt, 32), prompt
    cli = subprocess.run([sys.executable, "-m", "stentor", "generate", "--model", str(story_model), "--temperature", "0",
                          "--max-new-tokens", "32", "--no-echo", "--no-stream", prompts[0]],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert cli.stdout.strip() == got[0]["text"].strip()


def test_seeded_sampling_repeats_in_the_page(page):
    run = "async (seed) => (await window.stentor.generate('the cat', {seed, max_new_tokens: 40})).ids"
    first, again, other = page.evaluate(run, 7), page.evaluate(run, 7), page.evaluate(run, 8)
    assert first == again and len(first) > 5
    assert other != first


def test_the_page_runs_the_model_in_the_tab(page, site, tmp_path_factory):
    info = page.evaluate("window.stentor.ready")
    assert info["backend"] == "wasm" and info["threads"] == 2 and info["dtype"] == "fp32"  # isolated: threads
    assert "in this tab: wasm, 2 threads, fp32" in page.text_content("#model-info")
    page.fill("#max_tokens", "60")
    page.check("#show-tokens")
    before = int(page.evaluate("document.body.dataset.runs || '0'"))
    page.click("#examples button >> text=Story Generation")
    page.wait_for_function(f"Number(document.body.dataset.runs || 0) > {before}", timeout=60_000)
    assert page.text_content("#completion").strip()
    assert int(page.text_content("#fig-tokens")) > 5 and float(page.text_content("#fig-rate")) > 0
    chips = page.query_selector_all("#tokens .chip")
    assert len(chips) == int(page.text_content("#fig-tokens"))
    assert page.is_hidden("#api-key-field") and page.is_hidden("label:has(#suppress)")
    shot = tmp_path_factory.mktemp("artifacts") / "web-playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_chat_uses_the_cards_template(page, story_model):
    page.click("#mode-chat")
    page.click("#new-chat")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "16")
    page.fill("#message", "the dog ran home")
    before = int(page.evaluate("document.body.dataset.runs || '0'"))
    page.click("#generate")
    page.wait_for_function(f"Number(document.body.dataset.runs || 0) > {before}", timeout=60_000)
    reply = page.text_content("#transcript .message.assistant").removeprefix("model")
    lm = loaded(story_model)
    assert reply == lm.generate("the dog ran home", chat=True, temperature=0, max_new_tokens=16)
    page.click("#mode-complete")
    page.fill("#temperature", "0.8")


def test_int8_export_is_smaller_and_runs(browser, story_model, site, tmp_path):
    from stentor.export.web import export_web

    report = export_web(story_model, tmp_path / "int8", dtype="int8")
    weights = lambda r: (r.path / "model" / "weights.bin").stat().st_size  # noqa: E731
    assert weights(report) < weights(site) / 3.5 and report.max_abs_diff < 1e-4
    with open_page(browser, report.path) as (page, errors, blocked):
        assert page.evaluate("window.stentor.ready")["dtype"] == "int8"
        ids = page.evaluate("async () => (await window.stentor.generate('the cat', {temperature: 0, max_new_tokens: 32})).ids")
        assert not errors and not blocked
    # the page expands the int8 rows to floats: greedy equals stentor on the same dequantized weights
    from stentor.export.web import dequantized_int8
    from stentor.model.loading import load_model

    same = shutil.copytree(story_model, tmp_path / "dequantized")
    dequantized_int8(load_model(same)).save_pretrained(same)
    assert ids == python_greedy(same, "the cat", 32)


def test_a_download_that_fails_half_way_says_so(browser, site):
    with open_page(browser, site.path, truncate=True, wait_ready=False) as (page, errors, blocked):
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        message = page.text_content("#error")
        assert "download of model/model.onnx stopped after" in message and "Reload the page" in message


def test_a_browser_without_wasm_simd_is_told_so(browser, site):
    no_simd = "WebAssembly.validate = () => false;"
    with open_page(browser, site.path, init_script=no_simd, wait_ready=False) as (page, errors, blocked):
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "lacks WebAssembly SIMD" in page.text_content("#error")


def test_folders_that_cannot_be_exported_are_named(story_model, tmp_path):
    from stentor.export.web import export_web

    no_tokenizer = tmp_path / "bare"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(story_model / name, no_tokenizer / name)
    with pytest.raises(StentorError, match="has no Stentor tokenizer"):
        export_web(no_tokenizer, tmp_path / "out")
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(story_model, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(StentorError):
        export_web(gpt2, tmp_path / "out")
    with pytest.raises(StentorError, match="not one of fp32, int8"):
        export_web(story_model, tmp_path / "out", dtype="int4")
    assert not (tmp_path / "out").exists()


def test_chat_format_is_the_cards_template_as_strings(story_model):
    from stentor.export.web import chat_format
    from stentor.tokenizer.codec import TextCodec

    codec = TextCodec.from_dir(story_model)
    fmt = chat_format(codec)
    assert fmt["roles"]["user"] == {"prefix": "<|user|>\n", "suffix": "\n"}
    assert fmt["generation_prompt"] == "<|assistant|>\n"
    codec.chat_template = "{% if messages[0]['role'] != 'system' %}You are kind.\n{% endif %}" + codec.chat_template
    codec._template = None
    assert chat_format(codec) is None  # a default system prompt is logic the page's strings cannot hold
    codec.chat_template = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m['content'] }}{% endfor %}"
    codec._template = None
    assert chat_format(codec) is None  # a template that rejects a probe message


def test_without_npm_the_runtime_install_says_what_to_do(tmp_path, monkeypatch):
    from stentor.export.web import web_runtime

    monkeypatch.setenv("STENTOR_WEB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    with pytest.raises(StentorError, match="needs npm once.*install Node.js with npm"):
        web_runtime()


def test_the_cli_exports_and_explains(story_model, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "stentor", "export", "web", *a], capture_output=True, text=True)  # noqa: E731
    help_text = run("--help").stdout
    assert "window.stentor.generate" in help_text and "--dtype int8" in help_text and "--preview" in help_text
    bad = run("--model", str(tmp_path / "nothing"), "-o", str(tmp_path / "out"))
    assert bad.returncode != 0 and "is not a model directory" in bad.stderr and "Traceback" not in bad.stderr


def test_webgpu_is_chosen_when_the_browser_has_it(playwright, site, story_model):
    """Chromium's software WebGPU adapter (SwiftShader) stands in for a GPU: the page picks WebGPU by itself,
    and greedy decoding there equals stentor's."""
    gpu_args = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + [
        "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
        "--use-webgpu-adapter=swiftshader", "--enable-unsafe-swiftshader"]  # fmt: skip
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=gpu_args, headless=True)
    try:
        with open_page(chromium, site.path, wait_ready=False) as (page, errors, blocked):
            adapter = page.evaluate("(async () => Boolean(navigator.gpu && await navigator.gpu.requestAdapter()))()")
            if not adapter:
                pytest.skip("this Chromium offers no WebGPU adapter, not even SwiftShader's")
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            assert page.evaluate("window.stentor.ready")["backend"] == "webgpu"
            assert "in this tab: webgpu, fp32" in page.text_content("#model-info")
            ids = page.evaluate("async () => (await window.stentor.generate('the cat', {temperature: 0, max_new_tokens: 32})).ids")
            assert ids == python_greedy(story_model, "the cat", 32)
            assert not errors and not blocked
    finally:
        chromium.close()
