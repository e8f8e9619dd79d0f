"""`stentor eval compare A B`: what changed between two evaluated models (a fine-tune and its base).

Both sides are eval reports (`eval_report.json` from `stentor eval all`, or `blimp.json` from
`stentor eval blimp --out`), found in a run directory's final/, a model directory, or given as files.
BLiMP is compared pair by pair: on each paradigm, McNemar's exact test on the pairs one model got right
and the other wrong says whether the accuracy difference is more than chance. Perplexity and bits per
byte are compared on each dataset both were scored on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from stentor.errors import StentorError
from stentor.fileio import read_json

ALPHA = 0.05


def find_report(spec: str | Path) -> Path:
    """The eval report of a run directory, a model directory, or a report file."""
    path = Path(spec)
    for candidate in (path, path / "eval_report.json", path / "final" / "eval_report.json", path / "blimp.json"):
        if candidate.is_file():
            return candidate
    raise StentorError(f"no eval report in {path}: run `stentor eval all --model {path / 'final' if (path / 'final').is_dir() else path} ...` "
                       "first, or give an eval_report.json / blimp.json")  # fmt: skip


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: of the b + c discordant pairs, b went one way (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class ParadigmDelta:
    uid: str
    a: float
    b: float
    only_a: int  # pairs A got right and B wrong
    only_b: int
    p_value: float

    @property
    def delta(self) -> float:
        return self.b - self.a

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def _blimp(report: dict, where: Path) -> dict[str, dict]:
    blimp = report.get("blimp") if "blimp" in report else report
    if not blimp or "paradigms" not in blimp:
        return {}
    paradigms = {p["uid"]: p for p in blimp["paradigms"]}
    if any(not p.get("pairs_correct") for p in paradigms.values()):
        raise StentorError(f"{where} has no per-pair BLiMP outcomes (written by an older stentor); evaluate again")
    return paradigms


def compare_blimp(a: dict, b: dict, where: tuple[Path, Path]) -> list[ParadigmDelta]:
    pa, pb = _blimp(a, where[0]), _blimp(b, where[1])
    common = [uid for uid in pa if uid in pb]
    out = []
    for uid in common:
        x, y = pa[uid]["pairs_correct"], pb[uid]["pairs_correct"]
        if len(x) != len(y):
            raise StentorError(f"paradigm {uid} was evaluated on {len(x)} pairs in {where[0]} and {len(y)} in "
                               f"{where[1]}; evaluate both on the same data (same --limit)")  # fmt: skip
        only_a = sum(1 for i, j in zip(x, y) if i == "1" and j == "0")
        only_b = sum(1 for i, j in zip(x, y) if i == "0" and j == "1")
        out.append(ParadigmDelta(uid, x.count("1") / len(x), y.count("1") / len(y), only_a, only_b, mcnemar_p(only_a, only_b)))
    return out


def compare_perplexity(a: dict, b: dict) -> list[tuple[str, dict, dict]]:
    by_data = {r["data"]: r for r in a.get("perplexity") or []}
    return [(r["data"], by_data[r["data"]], r) for r in b.get("perplexity") or [] if r["data"] in by_data]


def compare_markdown(names: tuple[str, str], ppl: list[tuple[str, dict, dict]], blimp: list[ParadigmDelta]) -> str:
    a, b = names
    lines = [f"# {b} compared with {a}", ""]
    if ppl:
        lines += ["| Data | Perplexity A | Perplexity B | Δ | Bits/byte A | Bits/byte B | Δ |", "|---|---:|---:|---:|---:|---:|---:|"]
        for data, x, y in ppl:
            lines.append(f"| {data} | {x['perplexity']:.2f} | {y['perplexity']:.2f} | {y['perplexity'] - x['perplexity']:+.2f} | "
                         f"{x['bits_per_byte']:.4f} | {y['bits_per_byte']:.4f} | {y['bits_per_byte'] - x['bits_per_byte']:+.4f} |")
        lines.append("")
    if blimp:
        overall_a = sum(d.a for d in blimp) / len(blimp)
        overall_b = sum(d.b for d in blimp) / len(blimp)
        only_a, only_b = sum(d.only_a for d in blimp), sum(d.only_b for d in blimp)
        up = sum(d.significant and d.delta > 0 for d in blimp)
        down = sum(d.significant and d.delta < 0 for d in blimp)
        lines += [f"BLiMP over {len(blimp)} paradigms: {100 * overall_a:.2f}% → {100 * overall_b:.2f}% "
                  f"({100 * (overall_b - overall_a):+.2f} points). Pairs only A got right: {only_a:,}; only B: {only_b:,}; "
                  f"McNemar over all pairs p = {mcnemar_p(only_a, only_b):.3g}.",
                  f"Significant at p < {ALPHA} (exact McNemar per paradigm, not corrected for {len(blimp)} tests): "
                  f"{up} better, {down} worse.", "",
                  "| Paradigm | A | B | Δ (points) | only A | only B | p |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for d in sorted(blimp, key=lambda d: d.delta):
            mark = " *" if d.significant else ""
            lines.append(f"| {d.uid} | {100 * d.a:.1f}% | {100 * d.b:.1f}% | {100 * d.delta:+.1f}{mark} | {d.only_a} | "
                         f"{d.only_b} | {d.p_value:.3g} |")
    if not ppl and not blimp:
        lines.append("_The two reports share no dataset and no BLiMP paradigm._")
    return "\n".join(lines) + "\n"


def compare_chart(names: tuple[str, str], blimp: list[ParadigmDelta], path: Path) -> Path:
    """Each paradigm's accuracy change, significant ones in colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from stentor.fileio import atomic_file

    ranked = sorted(blimp, key=lambda d: d.delta)
    fig = Figure(figsize=(9, 2 + 0.2 * len(ranked)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = ["#2b8a3e" if d.significant and d.delta > 0 else "#c92a2a" if d.significant else "#adb5bd" for d in ranked]
    ax.barh([d.uid for d in ranked], [100 * d.delta for d in ranked], color=colours)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"accuracy change, points ({names[1]} − {names[0]}); coloured: McNemar p < {ALPHA}")
    ax.set_title(f"BLiMP: {names[1]} vs {names[0]}")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _name(report: Path) -> str:
    """What to call a side: its model directory, or the run for a run's final/ or best/."""
    model = report.parent
    return f"{model.parent.name}/{model.name}" if model.name in ("final", "best") else model.name


def compare(a: str | Path, b: str | Path, out: str | Path | None = None) -> str:
    """The comparison as Markdown; with `out`, also compare.md, compare.json and (BLiMP) compare.png there."""
    from stentor.fileio import atomic_write_text
    from stentor.eval.report import write_json

    where = (find_report(a), find_report(b))
    reports = [read_json(p, fix="evaluate the model again") for p in where]
    names = tuple(_name(p) for p in where)
    ppl = compare_perplexity(*reports)
    blimp = compare_blimp(*reports, where)
    text = compare_markdown(names, ppl, blimp)
    if out is not None:
        out = Path(out)
        atomic_write_text(out / "compare.md", text)
        write_json(out / "compare.json", {
            "a": str(where[0]), "b": str(where[1]),
            "perplexity": [{"data": d, "a": x["perplexity"], "b": y["perplexity"], "bits_per_byte_a": x["bits_per_byte"],
                            "bits_per_byte_b": y["bits_per_byte"]} for d, x, y in ppl],
            "blimp": [{"uid": d.uid, "a": d.a, "b": d.b, "only_a": d.only_a, "only_b": d.only_b, "p_value": d.p_value}
                      for d in blimp],
        })  # fmt: skip
        if blimp:
            compare_chart(names, blimp, out / "compare.png")
    return text
