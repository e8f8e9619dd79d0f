"""End to end on the real public data in ../shared: BLiMP files, WikiText-2 raw, the TokenMonster vocabulary."""

from __future__ import annotations

import json
import math

import pytest

from stentor.eval.blimp import BlimpResult, Paradigm, ParadigmScore, evaluate_blimp, load_blimp
from stentor.eval.perplexity import encode_corpus, evaluate_perplexity, read_corpus

from .conftest import save_tiny_model
from .test_blimp import direct_logprob

pytestmark = pytest.mark.shared
TASKS = ["anaphor_gender_agreement", "animate_subject_passive", "principle_A_case_1"]


def test_blimp_paradigms_end_to_end(shared_dir, model_and_tokenizer):
    model, tok = model_and_tokenizer
    paradigms = load_blimp(str(shared_dir / "data" / "blimp"), tasks=TASKS, limit=20)
    result = evaluate_blimp(model, tok, paradigms, batch_size=16, progress=False)
    assert [p.uid for p in result.paradigms] == TASKS
    assert [p.term for p in result.paradigms] == ["anaphor_agreement", "argument_structure", "binding"]
    assert all(p.total == 20 and 0 <= p.correct <= 20 for p in result.paradigms)
    good, bad = paradigms[0].pairs[0]
    first_right = direct_logprob(model, tok, good) > direct_logprob(model, tok, bad)
    solo = evaluate_blimp(model, tok, [Paradigm("x", "f", "t", [(good, bad)])], progress=False)
    assert solo.paradigms[0].correct == int(first_right)


def test_aggregation_reproduces_the_published_summary(shared_dir):
    """The BLiMP authors' per-paradigm GPT-2 accuracies, averaged our way, give their phenomenon and overall means."""
    rows = [json.loads(line) for line in (shared_dir / "data" / "blimp_results" / "models_summary.jsonl").open()]
    paradigms = {p.uid: p for p in load_blimp(str(shared_dir / "data" / "blimp"), limit=1)}
    scores = [ParadigmScore(r["UID"], paradigms[r["UID"]].field, paradigms[r["UID"]].term, round(r["gpt2"] * 1000), 1000)
              for r in rows if r["UID"] != "overall"]  # fmt: skip
    result = BlimpResult(scores)
    summary = {r["linguistics_term"]: r["gpt2"] for r in rows if r["UID"] == "overall"}
    assert len(result.paradigms) == 67 and len(result.by_term) == 12
    assert result.overall == pytest.approx(summary.pop("overall"), abs=1e-6)
    assert result.by_term == pytest.approx(summary, abs=1e-6)
    assert len(result.by_field) == 4


def test_wikitext_raw_is_read_byte_exact(shared_dir, model_and_tokenizer):
    model, tok = model_and_tokenizer
    path = shared_dir / "data" / "wikitext2" / "wiki.test.raw.nonblank-crlf.txt"
    corpus = read_corpus([str(path)])
    assert corpus.documents[0].encode("utf-8") == path.read_bytes()  # CRLF kept, nothing translated
    result = evaluate_perplexity(model, tok, corpus, block_size=64, max_tokens=300, progress=False)
    assert result.tokens == 300 and result.scored_tokens == 300 - math.ceil(300 / 64)
    assert 0 < result.text_bytes < len(path.read_bytes())


def test_with_the_stentor_tokenizer(shared_dir, tmp_path):
    from stentor.eval import load_model_and_tokenizer
    from stentor.tokenizer.hf import tokenizer_from_vocab

    tok = tokenizer_from_vocab(shared_dir / "tokenmonster" / "vocabs" / "english-8000-strict-cap1-oracle.vocab")
    model_dir = save_tiny_model(tmp_path / "tm", std=0.3, tokenizer=tok)
    model, tok = load_model_and_tokenizer(str(model_dir))
    assert type(tok).__name__ == "StentorTokenizer" and tok.bos_token_id == 8001 and tok.eos_token_id == 8000
    [paradigm] = load_blimp(str(shared_dir / "data" / "blimp"), tasks=["passive_1"], limit=5)
    result = evaluate_blimp(model, tok, [paradigm], batch_size=4, progress=False)
    want = sum(direct_logprob(model, tok, g) > direct_logprob(model, tok, b) for g, b in paradigm.pairs)
    assert result.paradigms[0].correct == want
    text = "Once upon a time, a small cat sat in the sun.\r\nIt was happy."
    enc = encode_corpus(tok, [text])
    assert enc.ids[0] == 8001 and enc.ids[-1] == 8000 and enc.text_bytes == len(text.encode())


def test_bf16_blimp_equals_fp32_on_every_paradigm(shared_dir, trained_model, bpe_tokenizer):
    """All 67 paradigms on a small trained model: bf16 with the fp32 re-check gives fp32's counts exactly."""
    paradigms = load_blimp(str(shared_dir / "data" / "blimp"), limit=30)
    fp32 = evaluate_blimp(trained_model, bpe_tokenizer, paradigms, progress=False, precision="fp32")
    bf16 = evaluate_blimp(trained_model, bpe_tokenizer, paradigms, progress=False, precision="bf16")
    assert len(bf16.paradigms) == 67
    assert [(p.uid, p.correct) for p in bf16.paradigms] == [(p.uid, p.correct) for p in fp32.paradigms]
    assert bf16.scoring["precision"] == "bf16" and bf16.scoring["calibration_pairs"] == 512


def test_bf16_perplexity_agrees_with_fp32_to_four_digits(shared_dir, trained_model, bpe_tokenizer):
    corpus = read_corpus([str(shared_dir / "data" / "wikitext2" / "wiki.test.raw.nonblank-crlf.txt")])
    runs = {p: evaluate_perplexity(trained_model, bpe_tokenizer, corpus, block_size=256, max_tokens=20_000,
                                   progress=False, precision=p) for p in ("fp32", "bf16")}  # fmt: skip
    assert runs["bf16"].precision == "bf16" and runs["bf16"].total_nats != runs["fp32"].total_nats
    # ~4 significant digits. This fixture scores out of its domain (loss ~8 nats/token), where bf16's rounding
    # moves perplexity most: 0.056% with AVX512-BF16 (0.021% of it from rounding the weights alone), 0.014% on
    # an AMX machine, whose torch trained the fixture to other floats; stentor2-12m on all of WikiText-2: 0.001-0.017%.
    assert math.isclose(runs["bf16"].perplexity, runs["fp32"].perplexity, rel_tol=1e-3)
