"""Damaged files through the commands that read them: one `stentor: error:` line naming the file, or (where
the damage cannot be seen, a flipped weight) a normal run; never a traceback, and never a silently
different tokenization. Each file is truncated, zeroed and bit-flipped at random (seeded) places."""

from __future__ import annotations

import contextlib
import io
import random
import shutil
from pathlib import Path

import pytest
from train_helpers import tokenmonster_model

from stentor.cli import main

pytestmark = pytest.mark.slow
PROBE = "Once upon a time, 東京 école"


def damaged(data: bytes, rng: random.Random, flips: int):
    """(label, bytes): truncations, a zeroed start, and `flips` copies with 1, 4 or 32 flipped bits."""
    n = len(data)
    for cut in sorted({0, 1, n // 10, n // 2, n - 1}):
        yield f"cut at {cut}", data[:cut]
    yield "first 64 bytes zeroed", b"\0" * min(64, n) + data[64:]
    for k in range(flips):
        out = bytearray(data)
        for _ in range(rng.choice((1, 4, 32))):
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
        yield f"flips #{k}", bytes(out)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def variants(source: Path, files: list[str], flips: int) -> int:
    """How many damaged copies `fuzz` makes of these files."""
    return sum(len(list(damaged((source / name).read_bytes(), random.Random(0), flips))) for name in files)


def contents(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def fuzz(source: Path, files: list[str], command, flips: int, tmp_path: Path, check=None, seed: int = 0) -> dict:
    """Every damaged variant of every file, each in a fresh copy of `source`, through `command(dir)`;
    `check(dir, name)` then looks at each run that succeeded.

    Returns counts by outcome; fails on a traceback, on an error line that does not name the file, or on
    a refused case that wrote anything into the damaged directory."""
    rng = random.Random(seed)
    outcomes: dict[str, int] = {"ran": 0, "error line": 0}
    for name in files:
        original = (source / name).read_bytes()
        for label, data in damaged(original, rng, flips):
            case = tmp_path / "case"
            shutil.rmtree(case, ignore_errors=True)
            shutil.copytree(source, case)
            (case / name).write_bytes(data)
            before = contents(case)
            try:
                rc, out, err = run(command(case))
            except Exception as exc:  # what a user would see as a traceback
                raise AssertionError(f"{name}, {label}: {type(exc).__name__}: {exc}") from exc
            errors = [line for line in err.splitlines() if line.startswith("stentor: error:")]
            if rc == 0:
                outcomes["ran"] += 1
                if check is not None:
                    check(case, name, label)
            else:
                assert len(errors) == 1 and name in errors[0], f"{name}, {label}: {err[-500:]}"
                assert contents(case) == before, f"{name}, {label}: refused, yet it wrote into the directory"
                outcomes["error line"] += 1
    return outcomes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model with a StentorTokenizer (byte fallback, capcode off) and the card's chat template."""
    words = "once upon a time the cat sat on mat and dog ran home école".split()
    return tokenmonster_model(tmp_path_factory.mktemp("damaged") / "model", words)


def _generate(*extra: str):
    def command(case: Path) -> list[str]:
        return ["generate", *extra, "--model", str(case), "--max-new-tokens", "4", "--seed", "0", "--no-echo", PROBE]

    return command


MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.vocab", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja"]  # fmt: skip


TOKENIZER_FILES = {"tokenizer.vocab", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}


def same_tokens(model_dir: Path):
    """A check: where a tokenizer file's damage let the run go on, the text still tokenizes as before."""
    import stentor

    want = stentor.load(model_dir).encode(PROBE)

    def check(case: Path, name: str, label: str) -> None:
        if name in TOKENIZER_FILES:
            assert stentor.load(case).encode(PROBE) == want, f"{name}, {label}: a different tokenization"

    return check


@pytest.mark.parametrize("engine", [[], ["--engine", "torch"]], ids=["compiled runtime", "torch engine"])
def test_damaged_model_directories(model_dir, tmp_path, engine):
    files = [f for f in MODEL_FILES if (model_dir / f).exists()]
    outcomes = fuzz(model_dir, files, _generate(*engine), flips=24, tmp_path=tmp_path, check=same_tokens(model_dir))
    assert outcomes["error line"] > 0 and sum(outcomes.values()) == len(files) * 30, outcomes


def test_damaged_quantized_directories(model_dir, tmp_path_factory, tmp_path):
    quantized = tmp_path_factory.mktemp("quantized") / "int8"
    assert run(["quantize", "--model", str(model_dir), "--method", "int8", "-o", str(quantized)])[0] == 0
    files = ["config.json", "model.safetensors", "tokenizer.vocab", "tokenizer_config.json"]
    outcomes = fuzz(quantized, files, _generate(), flips=24, tmp_path=tmp_path, check=same_tokens(quantized))
    assert outcomes["error line"] > 0 and sum(outcomes.values()) == len(files) * 30, outcomes


def test_damaged_vocabulary_files(model_dir, tmp_path_factory, tmp_path):
    """A .vocab on its own carries no checksum: damage must be refused or leave every token as it was."""
    from stentor.tokenizer.tokenmonster import Vocab

    source = tmp_path_factory.mktemp("vocab")
    shutil.copy(model_dir / "tokenizer.vocab", source / "my.vocab")
    want = Vocab.load(source / "my.vocab").encode(PROBE.encode())

    def check(case: Path, name: str, label: str) -> None:
        assert Vocab.load(case / name).encode(PROBE.encode()) == want, f"{label}: a different tokenization"

    outcomes = fuzz(source, ["my.vocab"], lambda case: ["vocab", "info", str(case / "my.vocab")], flips=120,
                    tmp_path=tmp_path, check=check)  # fmt: skip
    assert outcomes["error line"] > 0, outcomes


def test_damaged_blimp_files(model_dir, tmp_path_factory, tmp_path):
    import json

    source = tmp_path_factory.mktemp("blimp")
    rows = [{"sentence_good": f"The cat sat on mat {i}.", "sentence_bad": f"The cat sat mat on {i}.",
             "field": "syntax", "linguistics_term": "island_effects", "UID": "adjunct_island"} for i in range(8)]  # fmt: skip
    (source / "adjunct_island.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def command(case: Path) -> list[str]:
        return ["eval", "blimp", "--model", str(model_dir), "--data", str(case), "--tasks", "adjunct_island",
                "--no-progress", "--precision", "fp32"]  # fmt: skip

    outcomes = fuzz(source, ["adjunct_island.jsonl"], command, flips=60, tmp_path=tmp_path)
    assert outcomes["error line"] > 0, outcomes


def test_damaged_recipes(tmp_path_factory, tmp_path):
    from stentor.train.config import load_config  # noqa: F401  the recipe reader the command uses

    source = tmp_path_factory.mktemp("recipe")
    shutil.copy(Path(__file__).parents[1] / "configs" / "stentor2-12m.yaml", source / "recipe.yaml")
    outcomes = fuzz(source, ["recipe.yaml"], lambda case: ["train", "--config", str(case / "recipe.yaml"), "--dry-run"],
                    flips=120, tmp_path=tmp_path)  # fmt: skip
    assert outcomes["error line"] > 0, outcomes


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny training run (checkpoints, curves, its config) and its prepared tokens."""
    from train_helpers import make_corpus, make_tokenizer, tiny_recipe, write_recipe

    root = tmp_path_factory.mktemp("damaged-run")
    corpus = make_corpus(root / "corpus.jsonl", docs=60)
    recipe = tiny_recipe(corpus, make_tokenizer(root / "tokenizer", corpus), schedule={"max_train_steps": 6},
                         checkpoint={"save_steps": 3}, eval={"eval_steps": 3, "best_eval_steps": 3,
                                                             "best_eval_start_step": 3})  # fmt: skip
    recipe["prepared_dir"], recipe["prepare_workers"] = str(root / "prepared"), 0
    rc, _, err = run(["train", "--config", str(write_recipe(root / "tiny.yaml", recipe)), "--out", str(root / "run")])
    assert rc == 0, err[-2000:]
    return root / "run"


RUN_FILES = ["checkpoints/latest", "checkpoints/step-6/model.safetensors", "checkpoints/step-6/optimizer.pt",
             "checkpoints/step-6/extra.pt", "checkpoints/step-6/trainer_state.json", "checkpoints/step-6/checksums.json",
             "training_curves.csv", "config.yaml"]  # fmt: skip


def test_damaged_run_directories_on_resume(finished_run, tmp_path, fresh_accelerate):
    """`stentor train --resume` on a finished run whose files were damaged: it is refused naming the file, before
    anything is written, or (damage a format cannot show, in the curves or the recipe) it resumes."""
    outcomes = fuzz(finished_run, RUN_FILES, lambda case: ["train", "--resume", str(case)], flips=10, tmp_path=tmp_path)
    assert outcomes["error line"] > 100 and sum(outcomes.values()) == variants(finished_run, RUN_FILES, 10), outcomes


def test_damaged_prepared_tokens(finished_run, tmp_path):
    prepared, files = finished_run.parent / "prepared", ["train.bin", "val.bin", "meta.json"]
    outcomes = fuzz(prepared, files, lambda case: ["data", "info", str(case)], flips=10, tmp_path=tmp_path)
    assert outcomes["error line"] > 0 and sum(outcomes.values()) == variants(prepared, files, 10), outcomes
