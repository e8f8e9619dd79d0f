"""Learning-rate schedules as pure functions of the optimizer step, so resume only needs the step.

cosine (card): linear warmup 0 -> peak over `warmup` steps, then cosine from peak to 0 at `total`.
wsd: the same warmup, `stable` steps at peak, then a "1-sqrt" decay to 0 over the remaining
steps: lr = peak * (1 - sqrt(t)), t in [0, 1] the fraction of the decay done. 1-sqrt keeps
the LR high longer than linear and drops fast at the end (Hägele et al., 2024, found it
beats linear and cosine cooldowns); the shape is ours, the card only names stable_ratio 0.80.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stentor.train.config import ScheduleSection


@dataclass(frozen=True)
class Schedule:
    kind: str
    total: int
    warmup: int
    stable: int

    @classmethod
    def from_config(cls, cfg: ScheduleSection) -> Schedule:
        # int() floors as the card does: 0.05 x 9,552 = 477.6 -> 477; 0.80 x 9,552 = 7,641.6 -> 7,641.
        total = cfg.max_train_steps
        return cls(cfg.scheduler, total, int(cfg.warmup_ratio * total), int(cfg.stable_ratio * total))

    @property
    def decay_start(self) -> int:
        return self.warmup + (self.stable if self.kind == "wsd" else 0)

    def factor(self, step: int) -> float:
        """Multiplier on the peak LR for optimizer step `step` (0-based: the step about to be taken)."""
        if step < self.warmup:
            return step / self.warmup
        span = max(1, self.total - self.decay_start)
        t = min(1.0, max(0.0, (step - self.decay_start) / span))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0 - math.sqrt(t)

    def describe(self) -> str:
        if self.kind == "cosine":
            return (f"linear warmup {self.warmup:,} steps (0 -> peak), cosine decay to 0 "
                    f"over steps {self.warmup:,}-{self.total:,}")
        return (f"WSD: linear warmup {self.warmup:,} steps, stable at peak {self.stable:,} steps, "
                f"1-sqrt decay to 0 over steps {self.decay_start:,}-{self.total:,}")
