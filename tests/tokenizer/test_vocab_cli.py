"""`stentor vocab ...`: output, files and exit codes.

The main paths run as a real command (`python -m stentor`, a subprocess); the remaining
options go through the same `stentor.cli.main` in-process, because every subprocess pays the
whole CLI's import time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stentor.cli import main
from stentor.tokenizer import load_vocab
from stentor.tokenizer.hf import StentorTokenizer, load_tokenizer

TOKENS_YAML = """\
charset: utf-8
normalization: nfd
capcode: 1
include-utf8-bytes: true
tokens:
  - token: " hello"
    encoded: true
  - token: " world"
    encoded: true
  - token: "Hello"
    encoded: true
  - token: " the"
    encoded: true
"""


def stentor(*args: str, stdin: bytes = b"", env: dict | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "stentor", "vocab", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def run_main(capsysbinary, monkeypatch, *args: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(["vocab", *args])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr.decode()[-2000:]
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stentor: error: "), lines
    return lines[0]


@pytest.fixture
def built(tmp_path, capsysbinary, monkeypatch):
    (tmp_path / "tokens.yaml").write_text(TOKENS_YAML, encoding="utf-8")
    code, out, err = run_main(
        capsysbinary, monkeypatch, "build", str(tmp_path / "tokens.yaml"), "-o", str(tmp_path / "tiny.vocab")
    )
    assert code == 0 and out.startswith(b"wrote "), err
    return tmp_path / "tiny.vocab"


def test_build_then_info_json(built, capsysbinary, monkeypatch):
    vocab = load_vocab(built)
    assert vocab.capcode == 1 and b" hello" in {t.token for t in vocab.tokens()}
    code, out, _ = run_main(capsysbinary, monkeypatch, "info", str(built), "--json")
    info = json.loads(out)
    assert code == 0 and info["charset"] == "utf-8" and info["capcode"] == 1 and info["normalization"] == "NFD"
    assert info["vocab_size"] == vocab.vocab_size and info["id_table_size"] == vocab.id_table_size
    assert info["hf_vocab_size"] % 128 == 0 and info["unk_id"] is None
    assert info["delete_token_id"] == vocab.delete_token_id and info["max_token_length"] == vocab.max_token_length
    assert set(info["sample_tokens"]) <= {" hello", " world", "Hello", " the"}
    code, out, _ = run_main(capsysbinary, monkeypatch, "info", str(built))
    assert code == 0 and b"capcode            1" in out


def test_encode_decode_pipeline_with_invalid_utf8(built, capsysbinary, monkeypatch):
    vocab = load_vocab(built)
    data = b"Hello world, the \xff\xfe caf\xc3\xa9 \xe2\x82"
    code, out, _ = run_main(capsysbinary, monkeypatch, "encode", "--vocab", str(built), stdin=data)
    ids = json.loads(out)
    assert code == 0 and ids == vocab.encode(data)
    dec = stentor("decode", "--vocab", str(built), stdin=out)  # raw bytes through a real stdout
    # NFD; 0xFF/0xFE are no UTF-8 bytes, so this vocabulary drops them; the cut-off \xe2\x82 stays
    assert dec.returncode == 0 and dec.stdout == vocab.decode(ids) == b"Hello world, the  cafe\xcc\x81 \xe2\x82"
    code, out, _ = run_main(capsysbinary, monkeypatch, "encode", "--vocab", str(built), "--hf", stdin=b"Hello</s>world")
    tok = StentorTokenizer.from_vocab(vocab)
    assert code == 0 and json.loads(out) == tok.encode("Hello</s>world")
    assert json.loads(out)[0] == tok.bos_token_id and tok.eos_token_id in json.loads(out)


def test_bad_inputs_give_one_line(built, tmp_path, capsysbinary, monkeypatch):
    truncated = tmp_path / "truncated.vocab"
    truncated.write_bytes(built.read_bytes()[:-7])
    for args, stdin, message in [
        (("info", str(truncated)), b"", "truncated.vocab is not a valid TokenMonster vocabulary"),
        (("decode", "--vocab", str(built)), b'["a"]', "JSON list of integer token ids"),
        (("decode", "--vocab", str(built)), b"[1,", "stdin is not JSON"),
        (("export-yaml", str(tmp_path / "nope.vocab")), b"", "does not exist"),
        (("build", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "x.vocab")), b"", "cannot read"),
        (("info", str(tmp_path)), b"", "is a directory"),
    ]:
        code, _, err = run_main(capsysbinary, monkeypatch, *args, stdin=stdin)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_get_offline_names_the_file_and_the_fix(built, tmp_path, capsysbinary, monkeypatch):
    env = {"HF_HOME": str(tmp_path / "hf"), "STENTOR_VOCAB_DIR": ""}
    line = one_error_line(stentor("get", "english-8000-strict-nocapcode-v1", env=env))
    assert (
        "https://huggingface.co/alasdairforsythe/tokenmonster/resolve/main/vocabs/english-8000-strict-nocapcode-v1.vocab"
        in line
    )
    assert "$STENTOR_VOCAB_DIR" in line and "--vocab PATH" in line
    local = tmp_path / "vocabs"
    local.mkdir()
    (local / "english-8000-strict-nocapcode-v1.vocab").write_bytes(built.read_bytes())
    monkeypatch.setenv("STENTOR_VOCAB_DIR", str(local))
    code, out, _ = run_main(capsysbinary, monkeypatch, "get", "english-8000-strict-nocapcode-v1")
    assert code == 0 and out.decode().strip() == str(local / "english-8000-strict-nocapcode-v1.vocab")
    code, out, _ = run_main(capsysbinary, monkeypatch, "info", "english-8000-strict-nocapcode-v1", "--json")
    assert code == 0 and json.loads(out)["file"] == "english-8000-strict-nocapcode-v1.vocab"


def test_train_export_and_hf_dir(tmp_path, capsysbinary, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"The quick brown fox {i} jumps over the lazy dog. Hello world!"}) for i in range(300)]
    corpus.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "trained.vocab"
    proc = stentor("train", str(tmp_path / "*.jsonl"), "--size", "260", "--min-occur", "2", "-o", str(out))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    vocab = load_vocab(out)
    assert vocab.mode == 4 and vocab.capcode == 1 and vocab.vocab_size == 260
    sample = b"The quick brown fox 7 jumps over the lazy dog. Hello world!"
    assert len(vocab.encode(sample)) < len(sample) / 3

    yaml_out = tmp_path / "trained.yaml"
    assert run_main(capsysbinary, monkeypatch, "export-yaml", str(out), "-o", str(yaml_out))[0] == 0
    assert yaml_out.read_text(encoding="utf-8").startswith('charset: utf-8\nnormalization: "nfd"\ncapcode: 1\n')

    code, _, err = run_main(capsysbinary, monkeypatch, "hf", str(out), "-o", str(tmp_path / "tok"))
    assert code == 0, err
    tok = load_tokenizer(tmp_path / "tok")
    assert isinstance(tok, StentorTokenizer) and len(tok) == 384 and tok.bos_token_id == 261
    assert tok.encode("Hello world") == [261, *vocab.encode(b"Hello world")]
