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

from stentor.errors import StentorError
from stentor.fileio import atomic_file, atomic_write_text, read_text

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
    """Complete rows of a curves CSV. The last line, if a kill cut it short, is dropped; any other
    line that is not a row of ours means the file was damaged: a StentorError naming it."""
    if not path.exists():
        return []
    rows = list(csv.DictReader(io.StringIO(read_text(path, fix=DAMAGED_FIX), newline="")))
    if rows and rows[-1].get("note") is None:
        rows.pop()  # cut short by a kill mid-append
    for number, row in enumerate(rows, start=2):
        if not _is_row(row):
            raise StentorError(f"{path} line {number} is damaged; {DAMAGED_FIX}")
    return rows


DAMAGED_FIX = "delete the damaged lines or the file (it is a log: the run itself is intact)"


def _is_row(row: dict) -> bool:
    if list(row) != list(COLUMNS) or None in row.values() or not row["step"].isdigit():
        return False
    try:
        float(row["epoch"])
        for name in ("train_loss", "eval_loss", "eval_ppl"):
            if row[name]:
                float(row[name])
    except ValueError:
        return False
    return True


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
