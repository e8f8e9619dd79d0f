"""BLiMP scoring against plain forwards, ties, batching, aggregation and buckets."""

from __future__ import annotations

import json

import pytest
import torch

from stentor.errors import StentorError
from stentor.eval.blimp import (
    BLIMP_PARADIGMS,
    BlimpResult,
    Paradigm,
    ParadigmScore,
    evaluate_blimp,
    load_blimp,
    sentence_logprobs,
)

from .conftest import english_like

SENTENCES = [s.strip() + "." for s in english_like(12, seed=11).split(".") if s.strip()][:12] + ["Cats.", "A dog saw every child."]


def direct_logprob(model, tok, sentence: str) -> float:
    """Independent reference: one forward of BOS + sentence, log_softmax, gather, sum."""
    ids = torch.tensor([[tok.bos_token_id, *tok(sentence, add_special_tokens=False).input_ids]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return logp[:-1].gather(-1, ids[0, 1:, None]).sum().item()


def test_scores_match_a_direct_computation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    got = sentence_logprobs(model, tok, SENTENCES, batch_size=5, progress=False)
    want = [direct_logprob(model, tok, s) for s in SENTENCES]
    assert got == pytest.approx(want, abs=1e-4)
    assert len(set(round(w, 3) for w in want)) == len(want)  # the reference itself discriminates


def test_batching_does_not_change_scores(model_and_tokenizer):
    model, tok = model_and_tokenizer
    one = sentence_logprobs(model, tok, SENTENCES, batch_size=1, progress=False)
    many = sentence_logprobs(model, tok, SENTENCES + SENTENCES[:3], batch_size=64, progress=False)
    assert many[: len(SENTENCES)] == pytest.approx(one, abs=1e-4)
    assert many[len(SENTENCES) :] == many[:3]


def test_good_must_win_strictly_and_ties_are_wrong(model_and_tokenizer):
    model, tok = model_and_tokenizer
    a, b = SENTENCES[0], SENTENCES[1]
    hi, lo = (a, b) if direct_logprob(model, tok, a) > direct_logprob(model, tok, b) else (b, a)
    paradigm = Paradigm("p", "syntax", "t", [(hi, lo), (lo, hi), (hi, hi)])
    [score] = evaluate_blimp(model, tok, [paradigm], progress=False).paradigms
    assert (score.correct, score.total) == (1, 3)


def score(uid, correct, total=1000, term="t", field="f"):
    return ParadigmScore(uid, field, term, correct, total)


def test_buckets_at_their_boundaries():
    cases = {550: "weak", 551: "moderate", 555: "moderate", 556: "moderate", 849: "moderate", 850: "strong", 0: "weak",
             1000: "strong"}  # fmt: skip
    assert {c: score("p", c).bucket for c in cases} == cases
    assert score("p", 11, 20).bucket == "weak"  # exactly 55%
    assert score("p", 111, 200).bucket == "moderate"  # 55.5%
    assert score("p", 169, 200).bucket == "moderate"  # 84.5%
    assert score("p", 17, 20).bucket == "strong"  # exactly 85%


def test_aggregation_means_over_paradigms():
    result = BlimpResult([
        score("a", 900, term="x", field="syntax"),
        score("b", 500, term="x", field="syntax"),
        score("c", 850, term="y", field="semantics"),
        score("d", 10, 20, term="y", field="semantics"),  # 50% of a smaller paradigm still weighs one paradigm
    ])  # fmt: skip
    assert result.overall == pytest.approx((0.9 + 0.5 + 0.85 + 0.5) / 4)
    assert result.by_term == pytest.approx({"x": 0.7, "y": 0.675})
    assert result.by_field == pytest.approx({"semantics": 0.675, "syntax": 0.7})
    assert result.buckets == {"strong": ["a", "c"], "moderate": [], "weak": ["b", "d"]}
    d = result.to_dict()
    assert d["buckets"]["strong"]["count"] == 2 and d["pairs_evaluated"] == 3020


def write_paradigm(root, uid, pairs, term="agreement", field="morphology"):
    rows = [{"sentence_good": g, "sentence_bad": b, "UID": uid, "linguistics_term": term, "field": field,
             "pairID": str(i)} for i, (g, b) in enumerate(pairs)]  # fmt: skip
    (root / f"{uid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_local_dir_needs_the_requested_paradigms(tmp_path):
    write_paradigm(tmp_path, "passive_1", [("A was seen.", "A was saw.")] * 3, term="s-selection", field="syntax/semantics")
    write_paradigm(tmp_path, "passive_2", [("B was seen.", "B was saw.")] * 3)
    with pytest.raises(StentorError, match=r"lacks 65 of the 67 paradigm files: adjunct_island, anaphor_gender"):
        load_blimp(str(tmp_path))
    got = load_blimp(str(tmp_path), tasks=["passive_2", "passive_1"], limit=2)
    assert [p.uid for p in got] == ["passive_1", "passive_2"]  # canonical order
    assert got[0].term == "argument_structure" and got[0].field == "syntax_semantics"  # the authors' folding
    assert len(got[0].pairs) == 2
    with pytest.raises(StentorError, match=r"unknown BLiMP paradigm\(s\): pasive_1 \(did you mean passive_1"):
        load_blimp(str(tmp_path), tasks=["pasive_1"])
    with pytest.raises(StentorError, match="does not exist"):
        load_blimp(str(tmp_path / "nope"))
    assert len(BLIMP_PARADIGMS) == len(set(BLIMP_PARADIGMS)) == 67


def test_hub_data_offline_is_a_one_line_error(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    # Offline with empty caches, so a copy cached on this machine cannot answer instead.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(StentorError, match=r"cannot load nyu-mll/blimp \(passive_1\).*offline, pass --data DIR"):
        load_blimp("nyu-mll/blimp", tasks=["passive_1"])
