"""The page's sampler (src/stentor/infer/web/sampling.js, run in Node) against stentor's LogitsPipeline.

For random logits and settings, the tokens left after the repetition penalty, temperature, top-k, top-p and
min-p must be exactly the ones the Python pipeline leaves (float64 on both sides, no ties), the greedy choice
the same, and seeded draws must follow the warped distribution and repeat for the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from stentor.infer.decoding import SamplingParams
from stentor.infer.sampling import LogitsPipeline

DRIVER = Path(__file__).with_name("sampling_node.mjs")


def node() -> str:
    path = shutil.which("node")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("node is missing in CI: the page's sampler is tested in Node.js")
        pytest.skip("node is not installed (apt-get install nodejs)")
    return path


def python_kept(logits: np.ndarray, seen: list[int], params: SamplingParams) -> list[int]:
    pipeline = LogitsPipeline([params], len(logits))
    row = torch.from_numpy(logits[None])
    mask = torch.zeros(1, len(logits), dtype=torch.bool)
    mask[0, seen] = True
    scores = pipeline.warp(pipeline.penalize(row, mask))
    return torch.nonzero(torch.isfinite(scores[0])).flatten().tolist()


def test_the_page_sampler_keeps_what_stentor_keeps():
    rng = np.random.default_rng(0)
    cases, want = [], []
    for k in range(300):
        vocab = int(rng.integers(20, 600))
        logits = rng.normal(0, float(rng.uniform(0.5, 6)), vocab)
        seen = sorted(set(rng.integers(0, vocab, int(rng.integers(0, 30))).tolist()))
        settings = {"temperature": float(rng.choice([0.6, 0.8, 1.0, 1.3])), "top_p": float(rng.choice([0.5, 0.7, 0.9, 1.0])),
                    "top_k": int(rng.choice([0, 0, 5, 50])), "min_p": [None, 0.05, 0.2][k % 3],
                    "repetition_penalty": float(rng.choice([1.0, 1.2, 1.4]))}  # fmt: skip
        params = SamplingParams(**settings)
        cases.append({"logits": logits.tolist(), "seen": seen, "params": {**settings, "max_new_tokens": 1, "seed": 1}})
        greedy = LogitsPipeline([params.replace(greedy=True)], vocab).penalize(
            torch.from_numpy(logits[None]), torch.isin(torch.arange(vocab), torch.tensor(seen, dtype=torch.long))[None])
        want.append((python_kept(logits, seen, params), int(greedy.argmax())))
    logits = np.array([2.0, 1.5, 1.0, 0.2, -1.0, -3.0])
    draws = {"logits": logits.tolist(), "count": 20000,
             "params": {"temperature": 0.8, "top_p": 0.95, "top_k": 0, "min_p": None, "repetition_penalty": 1.0,
                        "max_new_tokens": 1, "seed": 123}}  # fmt: skip
    request = json.dumps({"cases": cases, "draws": draws})
    got = json.loads(subprocess.run([node(), str(DRIVER)], input=request, capture_output=True, text=True, check=True).stdout)
    for case, (kept, greedy), answer in zip(cases, want, got["cases"]):
        assert answer["kept"] == kept, case["params"]
        assert answer["greedy"] == greedy
    assert sum(len(k) for k, _ in want) > 300 and any(len(k) == 1 for k, _ in want)  # the cases cut and keep
    params = SamplingParams(temperature=0.8, top_p=0.95)
    pipeline = LogitsPipeline([params], len(logits))
    probs = pipeline.warp(torch.from_numpy(logits[None])).softmax(-1)[0].numpy()
    frequencies = np.array(got["histogram"]) / draws["count"]
    assert np.abs(frequencies - probs).max() < 0.015 and frequencies[probs == 0].sum() == 0
    assert got["seeded"] == got["repeat"] and len(set(got["seeded"])) > 1
