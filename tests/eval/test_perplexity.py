"""Perplexity / bits per byte against per-token hand computations with plain forwards."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stentor.errors import StentorError
from stentor.eval.perplexity import Corpus, encode_corpus, evaluate_perplexity, read_corpus, score_stream, windows

from .conftest import english_like


def token_nll(model, context: list[int], target: int) -> float:
    """-log p(target | context) from one plain forward, independent of the evaluator."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context])).logits[0, -1].double()
    return float(-torch.log_softmax(logits, -1)[target])


def hand_sliding(model, ids: list[int], block: int, stride: int) -> tuple[float, int]:
    """Token t is scored by the first window [k*stride, k*stride + block) that reaches past it."""
    total = 0.0
    for t in range(1, len(ids)):
        begin = max(0, math.ceil((t + 1 - block) / stride)) * stride
        total += token_nll(model, ids[begin:t], ids[t])
    return total, len(ids) - 1


def hand_blocks(model, ids: list[int], block: int) -> tuple[float, int]:
    """Training's eval: one forward per block, every position but the block's first is a target."""
    total, n = 0.0, 0
    for b in range(0, len(ids), block):
        chunk = torch.tensor([ids[b : b + block]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=chunk).logits[0].double(), -1)
        total -= logp[:-1].gather(-1, chunk[0, 1:, None]).sum().item()
        n += chunk.shape[1] - 1
    return total, n


@pytest.fixture(scope="module")
def short_ids(model_and_tokenizer):
    _, tok = model_and_tokenizer
    return encode_corpus(tok, [english_like(2, seed=5), english_like(1, seed=6)]).ids


def test_documents_are_bos_text_eos_like_training(model_and_tokenizer):
    _, tok = model_and_tokenizer
    docs = ["A cat ran.", "The dog saw it!"]
    enc = encode_corpus(tok, docs)
    body = [tok(d, add_special_tokens=False).input_ids for d in docs]
    assert enc.ids == [tok.bos_token_id, *body[0], tok.eos_token_id, tok.bos_token_id, *body[1], tok.eos_token_id]
    assert enc.text_bytes == sum(len(d.encode()) for d in docs)
    assert enc.text_tokens == sum(map(len, body))


@pytest.mark.parametrize("block,stride", [(16, 16), (16, 5), (7, 3)])
def test_each_token_scored_once_with_the_window_context(model_and_tokenizer, short_ids, block, stride):
    model, _ = model_and_tokenizer
    total, n = score_stream(model, short_ids, block, stride, batch_size=4, progress=False)
    if stride == block:
        want_total, want_n = hand_blocks(model, short_ids, block)
    else:
        want_total, want_n = hand_sliding(model, short_ids, block, stride)
    assert n == want_n
    assert total == pytest.approx(want_total, rel=1e-5)


def test_windows_cover_every_token_once():
    for n_tokens, block, stride in [(50, 16, 16), (50, 16, 5), (17, 16, 16), (33, 8, 8), (9, 8, 1)]:
        scored = [t for _, end, first in windows(n_tokens, block, stride) for t in range(first, end)]
        if stride < block:
            assert scored == list(range(1, n_tokens))
        else:
            assert scored == [t for t in range(1, n_tokens) if t % block]


def test_full_context_sliding_equals_one_forward(model_and_tokenizer, short_ids):
    """stride 1 with a window longer than the text: every token sees the whole prefix."""
    model, _ = model_and_tokenizer
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([short_ids])).logits[0].double(), -1)
    want = -logp[:-1].gather(-1, torch.tensor(short_ids[1:])[:, None]).sum().item()
    total, n = score_stream(model, short_ids, len(short_ids) + 5, 1, progress=False)
    assert n == len(short_ids) - 1
    assert total == pytest.approx(want, rel=1e-5)


def test_stride_equal_to_block_is_blocks_mode_and_bpb_is_nats_over_bytes(model_and_tokenizer):
    model, tok = model_and_tokenizer
    text = english_like(12, seed=9)
    corpus = Corpus([text], "t")
    blocks = evaluate_perplexity(model, tok, corpus, block_size=32, progress=False)
    same = evaluate_perplexity(model, tok, corpus, block_size=32, stride=32, progress=False)
    assert blocks.mode == same.mode == "blocks"
    assert blocks.total_nats == same.total_nats and blocks.scored_tokens == same.scored_tokens

    ids = encode_corpus(tok, [text]).ids
    want_total, want_n = hand_blocks(model, ids, 32)
    assert blocks.scored_tokens == want_n
    assert blocks.loss == pytest.approx(want_total / want_n, rel=1e-5)
    assert blocks.perplexity == pytest.approx(math.exp(want_total / want_n), rel=1e-5)
    assert blocks.bits_per_byte == pytest.approx(want_total / math.log(2) / len(text.encode("utf-8")), rel=1e-5)
    assert blocks.bits_per_token == pytest.approx(want_total / want_n / math.log(2), rel=1e-5)
    assert blocks.chars_per_token == pytest.approx(len(text) / (len(ids) - 2))


def test_max_tokens_cuts_the_stream_and_counts_the_kept_bytes(model_and_tokenizer):
    _, tok = model_and_tokenizer
    text = english_like(20, seed=3)
    enc = encode_corpus(tok, [text, "another document"], max_tokens=25)
    assert len(enc.ids) == 25 and enc.documents == 1 and enc.ids[-1] != tok.eos_token_id
    kept = tok.decode(enc.ids[1:])
    assert text.startswith(kept) and enc.text_bytes == len(kept.encode("utf-8"))


def test_files_are_read_byte_exact(tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes("café line one\r\nline two\r\n".encode())
    assert read_corpus([str(crlf)]).documents == ["café line one\r\nline two\r\n"]


def test_jsonl_dirs_and_globs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["one", "", "two"]) + "\n")
    (tmp_path / "d" / "b.jsonl").write_text(json.dumps({"text": "three"}) + "\n")
    assert read_corpus([str(tmp_path / "d")], text_field="text").documents == ["one", "two", "three"]
    assert read_corpus([str(tmp_path / "d" / "b*")], text_field="text").documents == ["three"]
    with pytest.raises(StentorError, match="no string field 'body'"):
        read_corpus([str(tmp_path / "d")], text_field="body")


def test_bad_inputs_are_one_line_errors(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(StentorError, match="is empty"):
        read_corpus([str(empty)])
    with pytest.raises(StentorError, match="does not exist"):
        read_corpus([str(tmp_path / "nope.txt")])
    with pytest.raises(StentorError, match="matches no files"):
        read_corpus([str(tmp_path / "*.md")])
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(StentorError, match="not UTF-8"):
        read_corpus([str(tmp_path / "bin.txt")])
    corpus = Corpus(["some text here"], "t")
    with pytest.raises(StentorError, match="exceeds the model's context of 256"):
        evaluate_perplexity(model, tok, corpus, block_size=512, progress=False)
    with pytest.raises(StentorError, match="--stride must be between 1 and the block size 64"):
        evaluate_perplexity(model, tok, corpus, block_size=64, stride=65, progress=False)
