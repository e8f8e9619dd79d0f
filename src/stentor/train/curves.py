"""training_curves.csv with the card's columns, and its PNG.

Rows are appended as training goes (one per logging or eval step). On resume the file is cut
back atomically to the rows at or before the checkpoint's step, so a resumed run's CSV is the
same as an uninterrupted one's.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from stentor.fileio import atomic_file, atomic_write_text

COLUMNS = ("step", "epoch", "train_loss", "eval_loss", "eval_ppl", "note")


@dataclass
class CurveRow:
    step: int
    epoch: float
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_ppl: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        def num(x: float | None) -> str:
            return "" if x is None else repr(float(x))  # shortest exact repr: resumed runs compare bit for bit

        return [str(self.step), f"{self.epoch:.4f}", num(self.train_loss), num(self.eval_loss), num(self.eval_ppl), self.note]


def read_rows(path: Path) -> list[dict]:
    """Complete rows of a curves CSV (a line cut short by a kill is dropped)."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("note") is None or not (row.get("step") or "").isdigit():
                continue
            rows.append(row)
    return rows


class CurveLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.png = self.path.with_suffix(".png")

    def start(self, keep_until_step: int) -> None:
        """Begin (or, on resume, cut back to `keep_until_step`) the CSV."""
        rows = [r for r in read_rows(self.path) if int(r["step"]) <= keep_until_step]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r[c] for c in COLUMNS])
        atomic_write_text(self.path, buf.getvalue())

    def append(self, row: CurveRow) -> None:
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(row.cells())

    def plot(self, title: str = "") -> None:
        """Redraw the PNG (train and eval loss against step); matplotlib's Agg backend needs no display."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = read_rows(self.path)

        def series(col: str) -> tuple[list[int], list[float]]:
            pts = [(int(r["step"]), float(r[col])) for r in rows if r[col] and math.isfinite(float(r[col]))]
            return [s for s, _ in pts], [v for _, v in pts]

        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for col, style in (("train_loss", "-"), ("eval_loss", "o-")):
            xs, ys = series(col)
            if xs:
                ax.plot(xs, ys, style, label=col.replace("_", " "), markersize=4)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title or "training curves")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        with atomic_file(self.png) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
