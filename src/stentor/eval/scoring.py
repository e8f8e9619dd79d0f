"""Batched log-likelihoods of token sequences: the one scorer behind BLiMP, perplexity and lm-eval.

A request is a `Tree`: a trunk of tokens and branches that each continue it. One packed row
holds the trunk once and every branch after it; a branch's tokens see the trunk and their own
branch only (a tree attention mask) and take the RoPE positions they would have after the
trunk, so each branch scores exactly as `trunk + branch` would alone, while the trunk costs one
forward instead of one per branch. A BLiMP pair is a tree (the shared prefix, then the two
differing tails), a multiple-choice question is one (the context, then each answer), a
perplexity window is a trunk with no branches.

Rows run on `stentor.infer.engine.Engine` (fused weights, few ops per layer), in fp32 or with bf16
layer matmuls (AMX or AVX512-BF16 where the CPU has them; the residual stream, norms and LM head stay fp32).
Only the hidden states of scored positions reach the LM head, in chunks whose logits stay in
cache for the one pass of log-softmax that reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stentor.errors import StentorError

PRECISIONS = ("auto", "fp32", "bf16")
PACK_WIDTH = 256  # tokens per packed row at most, unless one branch alone is longer
_HEAD_CHUNK = 256  # rows of logits per LM-head matmul (8 MB fp32: measured best of 64/128/256, by a few %)


@dataclass(frozen=True)
class Tree:
    """`trunk[first_scored:]` is scored given what precedes it; each branch is scored given the whole trunk."""

    trunk: Sequence[int]
    branches: Sequence[Sequence[int]] = ()
    first_scored: int = 1


@dataclass(frozen=True)
class TreeScore:
    trunk: float  # sum of log p (nats) over trunk[first_scored:]
    branches: tuple[float, ...]  # sum of log p of each branch given the trunk
    greedy: tuple[bool, ...]  # each branch is what greedy decoding after the trunk would produce


# bf16 margins within SAFETY x (largest error per token seen in calibration) x tokens of zero are re-scored in fp32.
CALIBRATION_MIN = 512  # pairs scored both ways to measure bf16's error (or all of them, if fewer)
CALIBRATION_SHARE = 50  # ... or one pair in this many, if more
SAFETY = 4.0


@dataclass(frozen=True)
class MarginReport:
    """How `pair_margins` decided: in fp32, or in bf16 with an fp32 re-check near zero."""

    precision: str  # "fp32" or "bf16"
    rechecked: int = 0  # pairs re-scored in fp32 (calibration pairs included)
    calibration_pairs: int = 0
    max_error_per_token: float = 0.0  # nats: the largest |bf16 - fp32| margin error per differing token seen

    def to_dict(self) -> dict:
        return {"precision": self.precision, "rechecked_pairs": self.rechecked,
                "calibration_pairs": self.calibration_pairs, "max_error_per_token": self.max_error_per_token,
                "safety_factor": SAFETY if self.precision == "bf16" else None}  # fmt: skip


def pair_margins(model, trees: Sequence[Tree], precision: str = "auto", batch_size: int = 128,
                 progress: bool = True) -> tuple[list[float], MarginReport]:  # fmt: skip
    """branch 0 minus branch 1 of each two-branch tree, with the fp32 scorer's sign for every pair.

    In bf16, a calibration sample is scored both ways; every pair whose bf16 margin is within
    SAFETY x (its largest error per differing token) x (the pair's differing tokens) of zero is
    re-scored in fp32. The trunk is computed once per pair, so it adds nothing to a margin's error.
    The sample is the pairs nearest a tie (margin per differing token): they are the ones the bound
    is about, and the ones a re-check would score anyway, so calibration costs no extra pairs where
    it is not needed (a uniform sample re-scored 1,340 of 3,430 pairs only to measure the error).
    """
    if any(len(t.branches) != 2 for t in trees):
        raise StentorError("pair_margins scores trees of exactly two branches (good, bad)")
    precision = resolve_precision(precision, model)
    exact = Scorer(model, "fp32", batch_size)
    margin = lambda s: s.branches[0] - s.branches[1]  # noqa: E731
    if precision == "fp32":
        return [margin(s) for s in exact.score(trees, progress, "pairs fp32")], MarginReport("fp32")
    fast = [margin(s) for s in Scorer(model, "bf16", batch_size, rechecked=True).score(trees, progress, "pairs bf16")]
    tokens = [max(1, len(t.branches[0]) + len(t.branches[1])) for t in trees]
    count = min(len(trees), max(CALIBRATION_MIN, len(trees) // CALIBRATION_SHARE))
    sample = sorted(sorted(range(len(trees)), key=lambda i: abs(fast[i]) / tokens[i])[:count])
    out = list(fast)
    for i, s in zip(sample, exact.score([trees[i] for i in sample])):
        out[i] = margin(s)
    rate = max(abs(fast[i] - out[i]) / tokens[i] for i in sample)
    done = set(sample)
    near = [i for i in range(len(trees)) if i not in done and abs(fast[i]) <= SAFETY * rate * tokens[i]]
    for i, s in zip(near, exact.score([trees[i] for i in near], progress, "fp32 re-check")):
        out[i] = margin(s)
    return out, MarginReport("bf16", len(sample) + len(near), len(sample), rate)


def bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is slower than fp32."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, model) -> str:
    """`auto` is bf16 for a Llama-shaped model on a CPU with native bf16 (the stentor engine's path), else fp32."""
    if precision not in PRECISIONS:
        raise StentorError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if engine_supports(model) and bf16_supported() else "fp32"


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added: StentorTokenizer's fast path, else the HF call."""
    fast = getattr(tokenizer, "encode_many", None)
    if fast is not None:
        return fast(texts, add_special_tokens=False)
    return tokenizer(list(texts), add_special_tokens=False).input_ids if texts else []


def engine_supports(model) -> bool:
    """Whether `Scorer` runs this model on the stentor engine (a model it runs, on CPU), not on HF's forward."""
    from stentor.infer.engine import Engine

    return next(model.parameters()).device.type == "cpu" and Engine.unsupported(model) is None


class Scorer:
    """Score `Tree`s; `batch_size` rows (trees) per forward.

    Llama-shaped models on CPU run on the stentor engine with tree packing; any other causal LM (or
    device) runs HF's forward with each branch as its own row (bf16 there means autocast).
    `rechecked`: the caller re-scores in fp32 every result near a decision (as `pair_margins` does), so
    in bf16 the LM head may run as plain bf16 products, a third of the split head's work.
    """

    def __init__(self, model, precision: str = "fp32", batch_size: int = 128, rechecked: bool = False):
        import torch

        if precision not in ("fp32", "bf16"):
            raise StentorError(f"the scorer runs fp32 or bf16, not {precision!r} (resolve 'auto' first)")
        if batch_size < 1:
            raise StentorError(f"--batch-size must be positive, got {batch_size}")
        self.precision = precision
        self.batch_size = batch_size
        self.model = model
        self.engine = None
        self.bf16_head = None
        if engine_supports(model):
            from stentor.infer.engine import Engine

            self.engine = Engine(model, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
            head = self.engine.lm_head
            # The LM head stays fp32 either way: bf16 logits (8 bits of mantissa on values near 10) were
            # the largest error of a bf16 score, and one fp32 matmul per token costs ~12% of a bf16 pass.
            if precision == "bf16" and isinstance(head, torch.Tensor):
                head = model.get_output_embeddings().weight.detach().float().t().contiguous()
            self.head = head
            # On bf16 units the head runs split in three bf16 products (~2^-16, near fp32) with the log-softmax fused:
            # perplexity keeps 4 significant digits that way. Plain bf16 products (1) lost the 4th digit on
            # WikiText-2; on all of BLiMP they raised the calibrated margin error from 0.00156 to 0.00264
            # nats per token (2,011 pairs re-checked instead of 1,340) and halved the head's time.
            self.head_products = 1 if rechecked else 3
            if precision == "bf16" and isinstance(head, torch.Tensor):
                self.bf16_head = self.engine.bf16_head(head, self.head_products)
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 2**31

    def score(self, trees: Sequence[Tree], progress: bool = False, desc: str = "scoring") -> list[TreeScore]:
        """Every tree's scores, in order. Rows are sorted by length so each batch is nearly rectangular."""
        from tqdm.auto import tqdm

        for i, tree in enumerate(trees):
            self._check(i, tree)
        pieces, owner = _split_wide(trees)
        if len(pieces) != len(trees):
            return _join(trees, owner, self.score(pieces, progress, desc))
        widths = [_width(t) for t in trees]
        order = sorted(range(len(trees)), key=widths.__getitem__)
        run = self._batch if self.engine is not None else self._hf_batch
        out: list[TreeScore | None] = [None] * len(trees)
        with tqdm(total=sum(widths), unit="tok", unit_scale=True, desc=desc, disable=not progress) as bar:
            for b in range(0, len(order), self.batch_size):
                idx = order[b : b + self.batch_size]
                for i, result in zip(idx, run([trees[i] for i in idx])):
                    out[i] = result
                bar.update(sum(widths[i] for i in idx))
        return out  # type: ignore[return-value]

    def _check(self, i: int, tree: Tree) -> None:
        if not tree.trunk:
            raise StentorError(f"request {i} has an empty trunk; every sequence needs a start token (BOS) to condition on")
        if not 0 <= tree.first_scored <= len(tree.trunk):
            raise StentorError(f"request {i}: first_scored {tree.first_scored} is outside its {len(tree.trunk)} tokens")
        length = len(tree.trunk) + max((len(b) for b in tree.branches), default=0)
        if length > self.max_positions:
            raise StentorError(
                f"request {i} has {length} tokens but the model's context is {self.max_positions}; "
                "shorten it or score it in windows (stentor eval ppl --stride)"
            )

    def _hf_batch(self, trees: list[Tree]) -> list[TreeScore]:
        """Any causal LM: trunk + branch as one right-padded row per branch (a tree with none: the trunk)."""
        import torch

        seqs = [(i, k, [*tree.trunk, *branch]) for i, tree in enumerate(trees)
                for k, branch in enumerate(tree.branches or [()])]  # fmt: skip
        device = next(self.model.parameters()).device
        width = max(len(s) for _, _, s in seqs)
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, (_, _, seq) in enumerate(seqs):
            x[row, : len(seq)] = torch.tensor(seq)
        x = x.to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(input_ids=x[:, :-1]).logits.float() if width > 1 else None
        trunk_score = [0.0] * len(trees)
        branch: list[list[float]] = [[] for _ in trees]
        greedy: list[list[bool]] = [[] for _ in trees]
        for row, (i, k, seq) in enumerate(seqs):
            n_trunk, first = len(trees[i].trunk), max(trees[i].first_scored, 1)
            if logits is None or len(seq) < 2:
                lp, hit = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
            else:
                row_logits = logits[row, : len(seq) - 1]
                target = x[row, 1 : len(seq)]
                lp = (row_logits.gather(-1, target[:, None]).squeeze(-1) - torch.logsumexp(row_logits, -1)).double().cpu()
                hit = (row_logits.argmax(-1) == target).cpu()
            if k == 0:
                trunk_score[i] = float(lp[first - 1 : n_trunk - 1].sum())
            if trees[i].branches:
                branch[i].append(float(lp[n_trunk - 1 :].sum()))
                greedy[i].append(bool(hit[n_trunk - 1 :].all()))
        return [TreeScore(trunk_score[i], tuple(branch[i]), tuple(greedy[i])) for i in range(len(trees))]

    def _batch(self, trees: list[Tree]) -> list[TreeScore]:
        import torch

        width = max(_width(t) for t in trees)
        rows = len(trees)
        # Flat lists, one tensor each at the end: a tensor per row cost more than the rows' packing.
        ids: list[int] = []
        positions: list[int] = []
        seg: list[int] = []  # pads see only themselves (see Engine.tree_hidden_states)
        trunk = torch.tensor([len(t.trunk) for t in trees])
        src: list[int] = []  # flat index of the hidden state that predicts each scored token
        targets: list[int] = []
        segment: list[int] = []  # the (tree, part) each scored token adds to: part 0 the trunk, k the k-th branch
        first_segment = 0
        for r, tree in enumerate(trees):
            base, n_trunk = r * width, len(tree.trunk)
            kept = _kept(tree)
            ids += tree.trunk[:kept]
            positions += range(kept)
            seg += [0] * kept
            first = max(tree.first_scored, 1)
            src += range(base + first - 1, base + n_trunk - 1)
            targets += tree.trunk[first:]
            segment += [first_segment] * (n_trunk - first)
            column = kept
            for k, branch in enumerate(tree.branches, 1):
                n = len(branch)
                src += [base + n_trunk - 1, *range(base + column, base + column + n - 1)][:n]
                ids += branch[:-1]
                positions += range(n_trunk, n_trunk + n - 1)
                seg += [column] * (n - 1)
                targets += branch
                segment += [first_segment + k] * n
                column += max(n - 1, 0)
            ids += [0] * (width - column)
            positions += [0] * (width - column)
            seg += range(column, width)
            first_segment += 1 + len(tree.branches)
        ids_t, positions_t, seg_t = (torch.tensor(v, dtype=torch.long).view(rows, width) for v in (ids, positions, seg))
        with torch.inference_mode():
            hidden = self.engine.tree_hidden_states(ids_t, positions_t, seg_t, trunk)
            logp, greedy = self._head(hidden[torch.tensor(src, dtype=torch.long)], torch.tensor(targets))
            segments = torch.tensor(segment, dtype=torch.long)
            sums = torch.zeros(first_segment, dtype=torch.float64).index_add_(0, segments, logp)
            # A part is greedy when none of its tokens is not the argmax.
            misses = torch.zeros(first_segment, dtype=torch.long).index_add_(0, segments, (~greedy).long())
        sums_l, greedy_l = sums.tolist(), (misses == 0).tolist()
        out, at = [], 0
        for tree in trees:
            parts = 1 + len(tree.branches)
            out.append(TreeScore(sums_l[at], tuple(sums_l[at + 1 : at + parts]), tuple(greedy_l[at + 1 : at + parts])))
            at += parts
        return out

    def _head(self, hidden, targets):
        """Log-probability (float64) of each target and whether it is the argmax, `_HEAD_CHUNK` rows at a time
        (a chunk's logits stay in cache for the one pass that reads them)."""
        import torch

        from stentor.infer.engine import _mm

        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float64)
        greedy = torch.empty(n, dtype=torch.bool)
        stages = self.engine._native_stages()
        if hidden.dtype != torch.float32 and isinstance(self.head, torch.Tensor):
            hidden = hidden.float()
        if self.bf16_head is not None and n:
            hidden = hidden.contiguous()
            if stages.bf16_logprobs(n, hidden.shape[1], self.head.shape[1], self.head_products, hidden.data_ptr(),
                                    self.bf16_head.data_ptr(), targets.data_ptr(), logp.data_ptr(),
                                    greedy.data_ptr()):  # fmt: skip
                return logp, greedy
        for i in range(0, n, _HEAD_CHUNK):
            logits = _mm(hidden[i : i + _HEAD_CHUNK], self.head, None)
            t = targets[i : i + _HEAD_CHUNK]
            if stages is not None and logits.is_contiguous():
                lp, gr = logp[i : i + _HEAD_CHUNK], greedy[i : i + _HEAD_CHUNK]
                stages.logprobs(len(t), logits.shape[1], logits.dtype == torch.bfloat16, logits.data_ptr(), t.data_ptr(),
                                lp.data_ptr(), gr.data_ptr())  # fmt: skip
                continue
            logits = logits.float()
            logp[i : i + _HEAD_CHUNK] = (logits.gather(1, t[:, None]) - torch.logsumexp(logits, 1, keepdim=True)).squeeze(1)
            greedy[i : i + _HEAD_CHUNK] = logits.argmax(1) == t
        return logp, greedy


def _split_wide(trees: Sequence[Tree]) -> tuple[list[Tree], list[int]]:
    """Trees whose packed row would pass PACK_WIDTH tokens, cut into trees of fewer branches, each with
    the trunk as context (only the first scores it). Many answers to one context (lm-eval: every
    BLiMP sentence after an empty context) would otherwise make one row of them all."""
    pieces, owner = [], []
    for i, tree in enumerate(trees):
        chunk: list = []
        width = len(tree.trunk)
        for branch in tree.branches:
            if chunk and width + len(branch) > PACK_WIDTH:
                pieces.append(Tree(tree.trunk, chunk, tree.first_scored if owner[-1:] != [i] else len(tree.trunk)))
                owner.append(i)
                chunk, width = [], len(tree.trunk)
            chunk.append(branch)
            width += len(branch)
        pieces.append(Tree(tree.trunk, chunk, tree.first_scored if owner[-1:] != [i] else len(tree.trunk)))
        owner.append(i)
    return pieces, owner


def _join(trees: Sequence[Tree], owner: list[int], scores: list[TreeScore]) -> list[TreeScore]:
    """The pieces' scores as one per tree: the first piece's trunk score, every piece's branches in order."""
    trunk = [0.0] * len(trees)
    branches: list[list[float]] = [[] for _ in trees]
    greedy: list[list[bool]] = [[] for _ in trees]
    for k, (i, score) in enumerate(zip(owner, scores)):
        if k == 0 or owner[k - 1] != i:
            trunk[i] = score.trunk
        branches[i] += score.branches
        greedy[i] += score.greedy
    return [TreeScore(trunk[i], tuple(branches[i]), tuple(greedy[i])) for i in range(len(trees))]


def _kept(tree: Tree) -> int:
    """Trunk tokens a packed row holds: the trunk's last one predicts nothing when no branch follows."""
    return len(tree.trunk) - (not tree.branches and len(tree.trunk) > 1)


def _width(tree: Tree) -> int:
    """Tokens of the tree's packed row. A branch's last token is predicted, never a prediction's
    input, and no other token sees it, so the row leaves it out (9% of BLiMP's tokens)."""
    return _kept(tree) + sum(max(len(b) - 1, 0) for b in tree.branches)
