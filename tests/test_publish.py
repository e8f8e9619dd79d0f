"""`stentor card` and `stentor push` on a real run: the card parses with huggingface_hub's ModelCard and its
model-index matches the run's eval report; push refuses what is not publishable, lists exactly what it would
upload, and fails offline or unauthorized (a real HTTP server on loopback standing in for the hub) in one line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from train_helpers import make_corpus, make_tokenizer, run_stentor, stentor_env, tiny_recipe, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    """A tiny finished run whose final/ was evaluated by `stentor eval all` (perplexity and a BLiMP paradigm)."""
    root = tmp_path_factory.mktemp("publish")
    corpus = make_corpus(root / "corpus.jsonl", docs=120)
    recipe = tiny_recipe(corpus, make_tokenizer(root / "tokenizer", corpus), schedule={"max_train_steps": 12})
    recipe["prepared_dir"], recipe["prepare_workers"] = str(root / "prepared"), 0
    run = root / "run"
    result = run_stentor("train", "--config", str(write_recipe(root / "r.yaml", recipe)), "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    blimp = root / "blimp"
    blimp.mkdir()
    rows = [{"sentence_good": f"the red bird likes the {n} .", "sentence_bad": f"the red bird the likes {n} .",
             "field": "syntax", "linguistics_term": "island_effects", "UID": "adjunct_island"} for n in ("cat", "dog", "fox", "owl")]  # fmt: skip
    (blimp / "adjunct_island.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_stentor("eval", "all", "--model", str(run / "final"), "--ppl-data", str(corpus), "--blimp-data",
                         str(blimp), "--tasks", "adjunct_island", "--no-progress", "--no-card")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_the_card_parses_and_its_numbers_are_the_runs(evaluated_run):
    from huggingface_hub import ModelCard

    result = run_stentor("card", str(evaluated_run), "--base-model", "StentorLabs/Stentor2-12M", "--name", "toy")
    assert result.returncode == 0, result.stderr[-3000:]
    card = ModelCard((evaluated_run / "final" / "README.md").read_text(encoding="utf-8"))
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation" and meta["base_model"] == "StentorLabs/Stentor2-12M"
    assert [w["text"] for w in meta["widget"]] == ["Once upon a time", "Explain neural networks in simple terms.",
                                                   "def fibonacci(n):", "The laws of thermodynamics describe"]  # fmt: skip
    report = json.loads((evaluated_run / "final" / "eval_report.json").read_text())
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    ppl = report["perplexity"][0]
    assert results[(ppl["data"], "Perplexity")] == round(ppl["perplexity"], 2)
    assert results[(ppl["data"], "Bits per byte")] == round(ppl["bits_per_byte"], 4)
    assert results[("BLiMP", "BLiMP Overall Accuracy")] == round(100 * report["blimp"]["overall_accuracy"], 2)
    with open(evaluated_run / "training_curves.csv") as f:
        last_eval = [line.split(",")[3] for line in f.read().splitlines()[1:] if line.split(",")[3]][-1]
    assert results[("corpus.jsonl (validation split)", "Final Validation Loss")] == round(float(last_eval), 4)
    text = card.text
    for heading in ("## Architecture", "## Training", "## Evaluation", "## Samples", "## Limitations",
                    "## Environmental impact", "## Citation"):  # fmt: skip
        assert heading in text, heading
    assert "Parameters: " in text and "| peak learning rate | 0.02 |" in text and "**Story Generation**" in text
    assert "kWh" in text and "kg CO2eq" in text and "1 × cpu" in text  # the run recorded its device and time
    assert (evaluated_run / "final" / "training_curves.png").is_file() and "(training_curves.png)" in text


def test_a_card_leaves_out_what_the_run_did_not_measure(evaluated_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    (run / "final" / "eval_report.json").unlink()
    assert run_stentor("card", str(run), "--no-samples").returncode == 0
    text = (run / "final" / "README.md").read_text()
    assert "not in this card: no `eval_report.json`" in text and "## Samples" not in text and "BLiMP Overall" not in text


def test_push_dry_run_lists_exactly_the_publishable_files(evaluated_run):
    assert run_stentor("card", str(evaluated_run), "--no-samples").returncode == 0
    final = evaluated_run / "final"
    result = run_stentor("push", str(final), "--repo", "me/toy", "--dry-run")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in result.stdout.splitlines()[:-1]}
    want = {f.name: f.stat().st_size for f in final.iterdir() if f.is_file()}
    assert listed == want and {"README.md", "model.safetensors", "config.json", "tokenizer_config.json"} <= set(listed)
    assert result.stdout.splitlines()[-1].startswith(f"{len(want)} files")


def test_push_refuses_an_unpublishable_dir_and_fails_offline_or_unauthorized_in_one_line(evaluated_run, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(evaluated_run / "final", bare)
    (bare / "README.md").unlink()
    refused = run_stentor("push", str(bare), "--repo", "me/toy", "--dry-run")
    assert refused.returncode == 2 and "lacks a model card (README.md: run `stentor card RUN`)" in refused.stderr
    final = evaluated_run / "final"
    assert run_stentor("card", str(evaluated_run), "--no-samples").returncode == 0
    offline = run_stentor("push", str(final), "--repo", "me/toy", env={**stentor_env(), "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and offline.stderr.count("\n") == 1 and "hub is unreachable" in offline.stderr

    seen = []

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(self.path)
            body = b'{"error": "Invalid username or password."}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**stentor_env(), "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_TOKEN": "hf_not_a_real_token"}
        env.pop("HF_HUB_OFFLINE", None)
        denied = run_stentor("push", str(final), "--repo", "me/toy", env=env)
    finally:
        server.shutdown()
    assert seen and denied.returncode == 2 and denied.stderr.count("\n") == 1, denied.stderr
    assert "refused the upload to me/toy (401)" in denied.stderr and "hf auth login" in denied.stderr


def test_mcnemar_exact_p_values():
    from stentor.eval.compare import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 6) == mcnemar_p(6, 0) == 2 / 64
    assert mcnemar_p(1, 9) == 2 * (1 + 10) / 1024 and mcnemar_p(300, 700) < 1e-30


def test_mcnemar_equals_scipys_exact_binomial_test():
    from stentor.eval.compare import mcnemar_p

    binomtest = pytest.importorskip("scipy.stats").binomtest
    for b, c in ((3, 11), (40, 57), (120, 90)):
        assert mcnemar_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_eval_compare_pairs_two_evaluated_models(evaluated_run, tmp_path):
    """final/ against best/ of the same run, both evaluated on the same pairs and text."""
    report = json.loads((evaluated_run / "final" / "eval_report.json").read_text())
    corpus = report["perplexity"][0]["data"]
    blimp = evaluated_run.parent / "blimp"
    out = tmp_path / "best-eval"
    result = run_stentor("eval", "all", "--model", str(evaluated_run / "best"), "--ppl-data", str(evaluated_run.parent / corpus),
                         "--blimp-data", str(blimp), "--tasks", "adjunct_island", "--no-progress", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_stentor("eval", "compare", str(out), str(evaluated_run), "--out", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a, b = json.loads((out / "eval_report.json").read_text()), report
    (pa,), (pb,) = a["blimp"]["paradigms"], b["blimp"]["paradigms"]
    only_a = sum(x == "1" and y == "0" for x, y in zip(pa["pairs_correct"], pb["pairs_correct"]))
    assert figures["blimp"][0]["only_a"] == only_a and figures["blimp"][0]["b"] == pb["accuracy"]
    assert figures["perplexity"][0]["b"] == b["perplexity"][0]["perplexity"]
    assert "| adjunct_island |" in result.stdout and (tmp_path / "cmp" / "compare.png").is_file()
    assert "run/final compared with best-eval" in result.stdout
    missing = run_stentor("eval", "compare", str(tmp_path), str(evaluated_run))
    assert missing.returncode == 2 and "no eval report in" in missing.stderr
