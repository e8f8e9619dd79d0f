"""`stentor.load` and the `stentor generate` command on a saved tiny model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import stentor
from stentor.errors import StentorError


def test_generate_stream_and_samples(tiny):
    text = tiny.generate("The history of", seed=1, max_new_tokens=20)
    assert isinstance(text, str) and text
    assert "".join(tiny.stream("The history of", seed=1, max_new_tokens=20)) == text
    samples = tiny.generate("The history of", seed=1, max_new_tokens=8, num_samples=3)
    assert isinstance(samples, list) and len(samples) == 3 and len(set(samples)) > 1
    assert tiny.generate("The history of", greedy=True, max_new_tokens=8) == tiny.generate(
        "The history of", greedy=True, max_new_tokens=8
    )


def test_chat_template_is_applied(tiny):
    ids = tiny.encode("hello", chat=True)
    assert tiny.tokenizer.decode(ids) == "<user>hello\n<assistant>"
    assert isinstance(tiny.generate("hello", chat=True, max_new_tokens=5, seed=0), str)


def test_hf_engine_gives_the_same_text(tiny_dir, tiny):
    """Greedy text is the same on every engine; seeded sampling is the same on HF and torch (one RNG)."""
    hf = stentor.load(tiny_dir, engine="hf")
    torch_engine = stentor.load(tiny_dir, engine="torch")
    assert tiny.backend == "NativeEngine" and torch_engine.backend == "Engine"
    for settings in ({"seed": 4}, {"greedy": True}, {"seed": 2, "top_k": 10, "suppress_replacement_tokens": True}):
        assert hf.generate("The history of", max_new_tokens=16, **settings) == torch_engine.generate(
            "The history of", max_new_tokens=16, **settings
        )
    for settings in ({"greedy": True}, {"greedy": True, "suppress_replacement_tokens": True}):
        assert hf.generate("The history of", max_new_tokens=16, **settings) == tiny.generate(
            "The history of", max_new_tokens=16, **settings
        )


def test_suppress_replacement_tokens_removes_every_fffd(tiny):
    wild = dict(seed=0, temperature=1.5, top_p=1.0, max_new_tokens=60, num_samples=4)
    assert any("\ufffd" in text for text in tiny.generate("The history of", **wild))
    assert not any("\ufffd" in text for text in tiny.generate("The history of", suppress_replacement_tokens=True, **wild))


@pytest.mark.parametrize(
    "spec, message",
    [("/nonexistent/model", "no model directory"), ("not a hub id", "no model directory")],
)
def test_load_errors(spec, message):
    with pytest.raises(StentorError, match=message):
        stentor.load(spec)


def test_load_refuses_dirs_without_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(StentorError, match="safetensors"):
        stentor.load(tmp_path)


def test_unknown_sampling_option(tiny):
    with pytest.raises(StentorError, match="unknown sampling option"):
        tiny.generate("x", temprature=0.5)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stentor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_cli_generate_streams_the_api_result(tiny_dir, tiny):
    out = run_cli("generate", "--model", str(tiny_dir), "--seed", "3", "--max-new-tokens", "12", "The history of")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "The history of" + tiny.generate("The history of", seed=3, max_new_tokens=12) + "\n"


def test_cli_bad_input_is_one_line(tiny_dir):
    out = run_cli("generate", "--model", str(tiny_dir), "--top-p", "0", "x")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "stentor: error: invalid sampling setting top_p=0.0: must be in (0, 1]; use 1 to switch top-p off"
    ]
    out = run_cli("generate", "--model", "StentorLabs/Stentor2-12M", "x")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "StentorLabs/Stentor2-12M is not in the local Hugging Face cache" in out.stderr and "hf download" in out.stderr
