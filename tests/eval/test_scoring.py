"""The tree scorer against plain HF forwards, on each of its paths; bf16 with the fp32 re-check."""

from __future__ import annotations

import random

import pytest
import torch

from stentor.errors import StentorError
from stentor.eval.blimp import Paradigm, evaluate_blimp, pair_trees
from stentor.eval.scoring import MarginReport, Scorer, Tree, encode_texts, pair_margins, resolve_precision

from .conftest import english_like


def hf_logprob(model, seq: list[int], first: int = 1) -> float:
    """Independent reference: one forward, log_softmax, the sum over seq[first:]."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].double(), -1)
    return sum(float(logp[j - 1, seq[j]]) for j in range(max(first, 1), len(seq)))


def random_trees(n: int, vocab: int, seed: int = 0) -> list[Tree]:
    rng = random.Random(seed)
    trees = []
    for _ in range(n):
        trunk = [rng.randrange(vocab) for _ in range(rng.randint(1, 9))]
        branches = [[rng.randrange(vocab) for _ in range(rng.randint(0, 6))] for _ in range(rng.randint(0, 3))]
        trees.append(Tree(trunk, branches, rng.randint(0, len(trunk))))
    return trees


def scorer_on(path: str, model, precision: str = "fp32", batch_size: int = 5) -> Scorer:
    scorer = Scorer(model, precision, batch_size)
    if path == "torch":
        scorer.engine._stages, scorer.engine._stages_checked = None, True  # the engine's torch ops, not the compiled stages
    elif path == "hf":
        scorer.engine = None  # HF's own forward, one row per branch
    return scorer


@pytest.mark.parametrize("path", ["compiled", "torch", "hf"])
def test_tree_scores_equal_separate_forwards(model_and_tokenizer, path):
    model, _ = model_and_tokenizer
    if path == "compiled" and Scorer(model).engine._native_stages() is None:
        pytest.skip("stentor was installed without its compiled runtime")
    trees = random_trees(24, 300)
    for tree, got in zip(trees, scorer_on(path, model).score(trees)):
        assert got.trunk == pytest.approx(hf_logprob(model, list(tree.trunk), tree.first_scored), abs=1e-4)
        assert len(got.branches) == len(tree.branches)
        for branch, score in zip(tree.branches, got.branches):
            alone = hf_logprob(model, [*tree.trunk, *branch]) - hf_logprob(model, list(tree.trunk))
            assert score == pytest.approx(alone, abs=1e-4)


def test_greedy_marks_exactly_the_argmax_continuation(model_and_tokenizer):
    model, _ = model_and_tokenizer
    trunk = [1, 17, 42, 99]
    seq = list(trunk)
    with torch.no_grad():
        for _ in range(4):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    greedy = seq[len(trunk) :]
    other = [*greedy[:2], (greedy[2] + 1) % 300, greedy[3]]
    for path in ("compiled", "torch", "hf"):
        [score] = scorer_on(path, model).score([Tree(trunk, [greedy, other, []])])
        assert score.greedy == (True, False, True), path


def test_bf16_scores_are_close_to_fp32_but_not_equal(model_and_tokenizer):
    model, _ = model_and_tokenizer
    trees = random_trees(16, 300, seed=3)
    exact = Scorer(model, "fp32").score(trees)
    fast = Scorer(model, "bf16").score(trees)
    diffs = [abs(a.trunk - b.trunk) for a, b in zip(exact, fast)]
    assert max(diffs) < 0.05 * max(1, max(len(t.trunk) for t in trees))
    assert max(diffs) > 0  # the bf16 path really ran in bf16


@pytest.fixture(params=["amx", "avx512-bf16"])
def bf16_unit(request):
    """Each bf16 unit in turn, so a CPU with AMX also runs the AVX512-BF16 kernels; skips the units this
    CPU lacks and puts the process's choice back afterwards."""
    try:
        from stentor.infer.native import Stages, Unsupported

        stages = Stages()
    except Unsupported:
        pytest.skip("no compiled runtime")
    before = stages.bf16_unit
    if stages.use_bf16_unit(request.param) != request.param:
        stages.use_bf16_unit(before)
        pytest.skip(f"no {request.param} on this CPU")
    yield request.param
    stages.use_bf16_unit(before)


def packed_and_staged(model, precision: str, trees) -> tuple[list, list]:
    """Scores from the one-call packed layer stack and from the staged path (torch matmuls + compiled
    stages); skips where this CPU has no packed path for `precision` (a bf16 unit for bf16, AVX-512 for fp32)."""
    scorer = Scorer(model, precision)
    stages = scorer.engine._native_stages()
    if stages is None or not (stages.bf16_unit if precision == "bf16" else stages.f32_tiles):
        pytest.skip(f"no compiled runtime or no packed {precision} layer stack on this CPU")
    packed = scorer.score(trees)
    assert scorer.engine._packed is not None  # packed and used
    staged = scorer_on("compiled", model, precision)
    staged.engine._packed = None  # the torch-matmul + stages path
    return packed, staged.score(trees)


def test_the_bf16_layer_stack_agrees_with_the_staged_bf16_path(model_and_tokenizer, bf16_unit):
    """On a bf16 unit (AMX or AVX512-BF16), bf16 scoring runs the layer stack in one compiled call with
    float32 matmul outputs; it must compute what the staged path (torch bf16 matmuls + compiled stages) does."""
    model, _ = model_and_tokenizer
    trees = random_trees(40, 300, seed=4)
    ids_rows = [len(t.trunk) + sum(len(b) for b in t.branches) for t in trees]
    assert max(ids_rows) < 32 and len(trees) > 128 // 32  # several rows per tile, several tiles: both threads work
    packed, staged = packed_and_staged(model, "bf16", trees)
    exact = Scorer(model, "fp32").score(trees)
    gap = lambda got, ref: max(abs(a.trunk - e.trunk) + sum(abs(x - y) for x, y in zip(a.branches, e.branches))
                               for a, e in zip(got, ref))  # fmt: skip
    assert gap(packed, exact) < 0.05 * 16 and gap(packed, staged) < 0.05 * 16  # bf16's tolerance (see above)
    assert gap(packed, staged) > 0  # another computation (float32 matmul outputs), not the staged one again


def test_the_float32_layer_stack_agrees_with_the_staged_fp32_path(model_and_tokenizer):
    """On AVX-512 fp32 scoring runs the layer stack in one compiled call (float32 tile matmuls); it must
    give what torch's fp32 matmuls + the compiled stages give, to float32 rounding."""
    model, _ = model_and_tokenizer
    packed, staged = packed_and_staged(model, "fp32", random_trees(40, 300, seed=5))
    for a, e in zip(packed, staged):
        assert a.trunk == pytest.approx(e.trunk, abs=1e-4) and a.greedy == e.greedy
        assert a.branches == pytest.approx(e.branches, abs=1e-4)


def test_the_bf16_head_gives_split_or_plain_bf16_log_probs(model_and_tokenizer, bf16_unit):
    """The fused bf16 LM head (on each bf16 unit): split in three bf16 products it matches float64
    log-softmax to ~1e-5; as one product (a re-checked scorer's) it matches float64 on bf16-rounded
    inputs, a visibly larger error."""
    model, _ = model_and_tokenizer
    split, plain = Scorer(model, "bf16"), Scorer(model, "bf16", rechecked=True)
    if split.bf16_head is None:
        pytest.skip("no bf16 unit on this CPU (or no compiled runtime)")
    assert (split.head_products, plain.head_products) == (3, 1)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(150, split.head.shape[0], generator=g)  # 150: a full tile of 128 rows and a partial one
    weight = split.head.double()
    targets = torch.randint(0, weight.shape[1], (150,), generator=g)
    targets[::2] = (hidden.double() @ weight).argmax(1)[::2]  # half the rows' targets are the argmax

    def reference(h, w):
        logits = h @ w
        return torch.log_softmax(logits, 1).gather(1, targets[:, None]).squeeze(1), logits.argmax(1) == targets

    bf = lambda x: x.to(torch.bfloat16).double()  # noqa: E731
    exact, exact_greedy = reference(hidden.double(), weight)
    rounded, _ = reference(bf(hidden), bf(weight))
    got_split, greedy = split._head(hidden, targets)
    got_plain, plain_greedy = plain._head(hidden, targets)
    assert (got_split - exact).abs().max() < 1e-4 and torch.equal(greedy, exact_greedy)
    assert (got_plain - rounded).abs().max() < 1e-5 and plain_greedy[::2].all()
    assert (got_plain - exact).abs().max() > 10 * (got_split - exact).abs().max()


def test_bad_requests_are_clear_errors(model_and_tokenizer):
    model, _ = model_and_tokenizer
    scorer = Scorer(model)
    with pytest.raises(StentorError, match="empty trunk"):
        scorer.score([Tree([])])
    with pytest.raises(StentorError, match="context"):
        scorer.score([Tree(list(range(200)), [list(range(100))])])
    with pytest.raises(StentorError, match="precision"):
        resolve_precision("fp16", model)
    with pytest.raises(StentorError, match="two branches"):
        pair_margins(model, [Tree([1], [[2]])])


def paradigms_from(text_seed: int, n_paradigms: int, pairs: int) -> list[Paradigm]:
    """Minimal pairs from english_like sentences: the bad one has two words swapped."""
    rng = random.Random(text_seed)
    sentences = [s.strip() + "." for s in english_like(n_paradigms * pairs * 2, seed=text_seed).split(".") if s.strip()]
    out = []
    for p in range(n_paradigms):
        rows = []
        for good in sentences[p * pairs : (p + 1) * pairs]:
            words = good.rstrip(".").split()
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
            rows.append((good, " ".join(words) + "."))
        out.append(Paradigm(f"p{p}", "f", "t", rows))
    return out


def test_bf16_with_recheck_decides_every_pair_as_fp32(trained_model, bpe_tokenizer):
    paradigms = paradigms_from(7, 6, 40)
    trees = pair_trees(bpe_tokenizer, [pair for p in paradigms for pair in p.pairs])
    exact, report = pair_margins(trained_model, trees, "fp32", progress=False)
    assert report == MarginReport("fp32")
    fast, report = pair_margins(trained_model, trees, "bf16", progress=False)
    assert report.precision == "bf16" and report.calibration_pairs == len(trees)  # fewer pairs than the minimum
    assert all((a > 0) == (b > 0) for a, b in zip(exact, fast))
    fp32 = evaluate_blimp(trained_model, bpe_tokenizer, paradigms, progress=False, precision="fp32")
    bf16 = evaluate_blimp(trained_model, bpe_tokenizer, paradigms, progress=False, precision="bf16")
    assert [p.correct for p in bf16.paradigms] == [p.correct for p in fp32.paradigms]
    assert bf16.scoring["precision"] == "bf16" and fp32.scoring["precision"] == "fp32"
    assert 0.5 < fp32.overall < 1.0  # trained: the swaps are mostly caught, not all


def test_recheck_covers_the_pairs_near_a_tie(trained_model, bpe_tokenizer, monkeypatch):
    """With a calibration sample smaller than the set, only pairs within the bound are re-scored."""
    import stentor.eval.scoring as scoring

    monkeypatch.setattr(scoring, "CALIBRATION_MIN", 20)
    paradigms = paradigms_from(9, 4, 60)
    trees = pair_trees(bpe_tokenizer, [pair for p in paradigms for pair in p.pairs])
    exact, _ = pair_margins(trained_model, trees, "fp32", progress=False)
    fast, report = pair_margins(trained_model, trees, "bf16", progress=False)
    assert report.calibration_pairs == 20 and 20 <= report.rechecked < len(trees)
    assert report.max_error_per_token > 0
    assert all((a > 0) == (b > 0) for a, b in zip(exact, fast))
    # fp32 in another batch can differ in the last bits; bf16 misses by ~1e-3 a token
    same = sum(a == pytest.approx(b, abs=1e-5) for a, b in zip(exact, fast))
    assert same >= report.rechecked  # every re-checked pair carries the fp32 margin


def test_encode_texts_equals_the_tokenizer_call(bpe_tokenizer):
    texts = ["The cat saw a dog.", "", "two  spaces", "Café!"]
    assert encode_texts(bpe_tokenizer, texts) == bpe_tokenizer(texts, add_special_tokens=False).input_ids


def test_a_context_with_hundreds_of_answers_is_cut_into_rows_of_bounded_width(model_and_tokenizer):
    """lm-eval gives every BLiMP sentence the same empty context: one tree, thousands of branches."""
    import stentor.eval.scoring as scoring

    model, _ = model_and_tokenizer
    rng = random.Random(4)
    branches = [[rng.randrange(300) for _ in range(rng.randint(1, 5))] for _ in range(300)]
    [joint] = Scorer(model).score([Tree([1, 5], branches, 1)])
    alone = Scorer(model).score([Tree([1, 5], [b], 1) for b in branches])
    assert len(joint.branches) == 300 and joint.trunk == pytest.approx(alone[0].trunk, abs=1e-6)
    assert list(joint.branches) == pytest.approx([a.branches[0] for a in alone], abs=1e-4)
    pieces, _ = scoring._split_wide([Tree([1, 5], branches, 1)])
    assert len(pieces) > 1 and all(scoring._width(p) <= scoring.PACK_WIDTH for p in pieces)
