"""BLiMP: 67 paradigms x 1,000 minimal pairs, scored the way lm-evaluation-harness scores them.

Each sentence's score is the sum of its tokens' log-probabilities given the model's
start token (BOS, else EOS), with no length normalization. A pair is correct only when
the grammatical sentence scores strictly higher: a tie counts as wrong (lm-eval's
argmax would count it right, which rewards a model that scores everything the same).
Overall accuracy is the mean of the 67 paradigm accuracies.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stentor.errors import StentorError
from stentor.eval.loading import start_token_id

BLIMP_HUB_ID = "nyu-mll/blimp"

# The 67 released paradigms; each is one file `<UID>.jsonl` and one hub config.
BLIMP_PARADIGMS: tuple[str, ...] = (
    "adjunct_island", "anaphor_gender_agreement", "anaphor_number_agreement", "animate_subject_passive",
    "animate_subject_trans", "causative", "complex_NP_island", "coordinate_structure_constraint_complex_left_branch",
    "coordinate_structure_constraint_object_extraction", "determiner_noun_agreement_1", "determiner_noun_agreement_2",
    "determiner_noun_agreement_irregular_1", "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adj_2", "determiner_noun_agreement_with_adj_irregular_1",
    "determiner_noun_agreement_with_adj_irregular_2", "determiner_noun_agreement_with_adjective_1",
    "distractor_agreement_relational_noun", "distractor_agreement_relative_clause", "drop_argument",
    "ellipsis_n_bar_1", "ellipsis_n_bar_2", "existential_there_object_raising", "existential_there_quantifiers_1",
    "existential_there_quantifiers_2", "existential_there_subject_raising", "expletive_it_object_raising",
    "inchoative", "intransitive", "irregular_past_participle_adjectives", "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question", "left_branch_island_simple_question", "matrix_question_npi_licensor_present",
    "npi_present_1", "npi_present_2", "only_npi_licensor_present", "only_npi_scope", "passive_1", "passive_2",
    "principle_A_c_command", "principle_A_case_1", "principle_A_case_2", "principle_A_domain_1",
    "principle_A_domain_2", "principle_A_domain_3", "principle_A_reconstruction",
    "regular_plural_subject_verb_agreement_1", "regular_plural_subject_verb_agreement_2",
    "sentential_negation_npi_licensor_present", "sentential_negation_npi_scope", "sentential_subject_island",
    "superlative_quantifiers_1", "superlative_quantifiers_2", "tough_vs_raising_1", "tough_vs_raising_2",
    "transitive", "wh_island", "wh_questions_object_gap", "wh_questions_subject_gap",
    "wh_questions_subject_gap_long_distance", "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance",
    "wh_vs_that_with_gap", "wh_vs_that_with_gap_long_distance",
)  # fmt: skip

# The released data labels two argument-structure paradigms "s-selection" and one binding
# paradigm's field "syntax/semantics"; the BLiMP authors' own summary folds them into the
# 12 phenomena and 4 fields, and so do we.
_TERM_ALIASES = {"s-selection": "argument_structure"}
_FIELD_ALIASES = {"syntax/semantics": "syntax_semantics"}

# The card's buckets, on exact accuracy: strong >= 85%, weak <= 55%, moderate in between
# (the card's "56-84%" for whole percentages; 55.5% is moderate, 84.9% is moderate).
STRONG_MIN_PCT = 85
WEAK_MAX_PCT = 55


@dataclass(frozen=True)
class Paradigm:
    uid: str
    field: str
    term: str
    pairs: list[tuple[str, str]]  # (sentence_good, sentence_bad)


def _paradigm(uid: str, rows: Sequence[dict], where: str) -> Paradigm:
    if not rows:
        raise StentorError(f"{where} has no pairs")
    for i, row in enumerate(rows):
        if not isinstance(row.get("sentence_good"), str) or not isinstance(row.get("sentence_bad"), str):
            raise StentorError(f"{where} row {i + 1} lacks sentence_good/sentence_bad; is this BLiMP data?")
    first = rows[0]
    term = str(first.get("linguistics_term", "unknown"))
    field = str(first.get("field", "unknown"))
    pairs = [(r["sentence_good"], r["sentence_bad"]) for r in rows]
    return Paradigm(uid, _FIELD_ALIASES.get(field, field), _TERM_ALIASES.get(term, term), pairs)


def check_tasks(tasks: Sequence[str] | None) -> list[str]:
    """The requested paradigms in canonical order (all 67 by default); unknown names are an error."""
    if not tasks:
        return list(BLIMP_PARADIGMS)
    unknown = [t for t in tasks if t not in BLIMP_PARADIGMS]
    if unknown:
        hints = [f"{t} (did you mean {', '.join(m)}?)" if (m := difflib.get_close_matches(t, BLIMP_PARADIGMS, 2)) else t
                 for t in unknown]  # fmt: skip
        raise StentorError(f"unknown BLiMP paradigm(s): {'; '.join(hints)}; see `stentor eval blimp --help`")
    return [t for t in BLIMP_PARADIGMS if t in set(tasks)]


def load_blimp(source: str = BLIMP_HUB_ID, tasks: Sequence[str] | None = None, limit: int | None = None) -> list[Paradigm]:
    """Paradigms from a local dir of `<UID>.jsonl` files or from the hub dataset; `limit` pairs each."""
    uids = check_tasks(tasks)
    if limit is not None and limit < 1:
        raise StentorError(f"--limit must be positive, got {limit}")
    root = Path(source).expanduser()
    if root.is_dir():
        missing = [u for u in uids if not (root / f"{u}.jsonl").is_file()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise StentorError(
                f"BLiMP dir {root} lacks {len(missing)} of the {len(uids)} paradigm files: {shown}; "
                "add them (<UID>.jsonl) or choose paradigms with --tasks"
            )
        out = []
        for u in uids:
            path = root / f"{u}.jsonl"
            try:
                rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise StentorError(f"{path} is not UTF-8 JSON Lines ({exc}); re-download BLiMP") from None
            out.append(_paradigm(u, rows[:limit], str(path)))
        return out
    if root.exists():
        raise StentorError(f"--data {source} is a file; pass the directory holding the 67 <UID>.jsonl files")
    if source != BLIMP_HUB_ID:
        raise StentorError(f"BLiMP data {source} does not exist; pass a local dir of <UID>.jsonl files or {BLIMP_HUB_ID}")
    return _load_hub(uids, limit)


def _load_hub(uids: Sequence[str], limit: int | None) -> list[Paradigm]:
    import datasets

    out = []
    for u in uids:
        try:
            ds = datasets.load_dataset(BLIMP_HUB_ID, u, split="train")
        except Exception as exc:  # offline: ConnectionError, OSError, DatasetNotFoundError...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StentorError(
                f"cannot load {BLIMP_HUB_ID} ({u}) from the Hugging Face hub ({first}); "
                "offline, pass --data DIR with the 67 BLiMP <UID>.jsonl files"
            ) from None
        rows = ds.select(range(min(limit, len(ds)))) if limit else ds
        out.append(_paradigm(u, list(rows), f"{BLIMP_HUB_ID}/{u}"))
    return out


def sentence_logprobs(model, tokenizer, sentences: Sequence[str], batch_size: int = 128, progress: bool = True,
                      precision: str = "fp32") -> list[float]:  # fmt: skip
    """Sum of token log-probs of each sentence given the start token, in nats (each distinct sentence once)."""
    from stentor.eval.scoring import Scorer, Tree, encode_texts, resolve_precision

    start = start_token_id(tokenizer)
    unique = list(dict.fromkeys(sentences))
    trees = [Tree([start, *ids]) for ids in encode_texts(tokenizer, unique)]
    scorer = Scorer(model, resolve_precision(precision, model), batch_size)
    by_text = {text: s.trunk for text, s in zip(unique, scorer.score(trees, progress, "BLiMP"))}
    return [by_text[s] for s in sentences]


def pair_trees(tokenizer, pairs: Sequence[tuple[str, str]]) -> list:
    """One `scoring.Tree` per (good, bad) pair: the start token and their common first tokens once, then each tail.

    The common tokens are context only: their log-probs are the same in both sentences, so they
    cancel in the margin, and not scoring them saves their LM-head work (a quarter of BLiMP's)."""
    from stentor.eval.scoring import Tree, encode_texts

    start = start_token_id(tokenizer)
    encoded = encode_texts(tokenizer, [s for pair in pairs for s in pair])
    trees = []
    for good, bad in zip(encoded[::2], encoded[1::2]):
        shared = 0
        while shared < min(len(good), len(bad)) and good[shared] == bad[shared]:
            shared += 1
        trees.append(Tree([start, *good[:shared]], (good[shared:], bad[shared:]), first_scored=shared + 1))
    return trees


@dataclass(frozen=True)
class ParadigmScore:
    uid: str
    field: str
    term: str
    correct: int
    total: int
    outcomes: str = ""  # "1"/"0" per pair, in the data's order: what `stentor eval compare` pairs up

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def bucket(self) -> str:
        # Integer comparison: no float rounding decides a boundary case.
        if 100 * self.correct >= STRONG_MIN_PCT * self.total:
            return "strong"
        if 100 * self.correct <= WEAK_MAX_PCT * self.total:
            return "weak"
        return "moderate"


def _mean_by(scores: Sequence[ParadigmScore], key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for s in scores:
        groups.setdefault(getattr(s, key), []).append(s.accuracy)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


@dataclass(frozen=True)
class BlimpResult:
    paradigms: list[ParadigmScore]
    data: str = ""
    scoring: dict | None = None  # how the pairs were decided (scoring.MarginReport.to_dict())

    @property
    def overall(self) -> float:
        """Mean of the paradigm accuracies (a fraction), as lm-eval and the BLiMP paper average."""
        return sum(p.accuracy for p in self.paradigms) / len(self.paradigms)

    @property
    def by_term(self) -> dict[str, float]:
        return _mean_by(self.paradigms, "term")

    @property
    def by_field(self) -> dict[str, float]:
        return _mean_by(self.paradigms, "field")

    @property
    def buckets(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"strong": [], "moderate": [], "weak": []}
        for p in self.paradigms:
            out[p.bucket].append(p.uid)
        return out

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "overall_accuracy": self.overall,
            "paradigms_evaluated": len(self.paradigms),
            "pairs_evaluated": sum(p.total for p in self.paradigms),
            "by_linguistics_term": self.by_term,
            "by_field": self.by_field,
            "buckets": {k: {"count": len(v), "paradigms": v} for k, v in self.buckets.items()},
            "bucket_rule": f"strong >= {STRONG_MIN_PCT}%, weak <= {WEAK_MAX_PCT}%, moderate strictly between",
            "scoring": self.scoring,
            "paradigms": [
                {"uid": p.uid, "field": p.field, "linguistics_term": p.term, "correct": p.correct, "total": p.total,
                 "accuracy": p.accuracy, "bucket": p.bucket, "pairs_correct": p.outcomes}
                for p in self.paradigms
            ],
        }  # fmt: skip


def evaluate_blimp(
    model, tokenizer, paradigms: Sequence[Paradigm], batch_size: int = 128, progress: bool = True, data: str = "",
    precision: str = "auto",
) -> BlimpResult:
    """Score every pair; good must beat bad strictly. `precision`: fp32, or bf16 with an fp32 re-check of
    every pair near a tie (so the result equals fp32's), or auto (bf16 where the CPU has it)."""
    from stentor.eval.scoring import pair_margins

    if not paradigms:
        raise StentorError("no BLiMP paradigms to evaluate")
    trees = pair_trees(tokenizer, [pair for p in paradigms for pair in p.pairs])
    margins, report = pair_margins(model, trees, precision, batch_size, progress)
    results = []
    start = 0
    for p in paradigms:
        end = start + len(p.pairs)
        outcomes = "".join("1" if m > 0 else "0" for m in margins[start:end])
        results.append(ParadigmScore(p.uid, p.field, p.term, outcomes.count("1"), len(p.pairs), outcomes))
        start = end
    return BlimpResult(results, data, report.to_dict())
