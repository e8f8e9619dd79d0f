"""What the engine tests share: the new tokens of each row of a `generate` call."""

from __future__ import annotations


def decode_rows(engine, prompts: list[list[int]], params, **kwargs) -> list[list[int]]:
    """Each row's tokens up to and including the step that finished it (what a caller keeps)."""
    rows: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in engine.generate(prompts, params, **kwargs):
        for i, token in enumerate(step.tokens):
            if not done[i]:
                rows[i].append(token)
            done[i] = step.finished[i]
    return rows
