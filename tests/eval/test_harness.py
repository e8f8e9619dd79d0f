"""lm-evaluation-harness through StentorLM: the same numbers as lm-eval's own hf model, on offline tasks."""

from __future__ import annotations

import json
import math

import pytest

lm_eval = pytest.importorskip("lm_eval")

from stentor.eval.harness import StentorLM, evaluate_tasks  # noqa: E402

from .conftest import english_like  # noqa: E402


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Three offline tasks on local JSON Lines: minimal pairs, rolling log-likelihood, generation."""
    root = tmp_path_factory.mktemp("tasks")
    sentences = [s.strip() + "." for s in english_like(80, seed=21).split(".") if s.strip()]
    pairs = [{"sentence_good": s, "sentence_bad": " ".join(reversed(s.rstrip(".").split())) + "."} for s in sentences[:40]]
    docs = [{"text": " ".join(sentences[i : i + 6])} for i in range(0, 36, 6)]
    prompts = [{"prompt": s.split()[0] + " " + s.split()[1], "answer": s.split()[2]} for s in sentences[40:50]]
    for name, rows in (("pairs", pairs), ("docs", docs), ("prompts", prompts)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = "dataset_path: json\ntest_split: train\n"
    (root / "pairs.yaml").write_text(
        f"task: st_pairs\n{common}dataset_kwargs:\n  data_files: {{train: {root / 'pairs.jsonl'}}}\n"
        "output_type: multiple_choice\ndoc_to_text: ''\ndoc_to_target: 0\n"
        "doc_to_choice: '{{[sentence_good, sentence_bad]}}'\nmetric_list:\n  - metric: acc\n"
    )
    (root / "docs.yaml").write_text(
        f"task: st_docs\n{common}dataset_kwargs:\n  data_files: {{train: {root / 'docs.jsonl'}}}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (root / "prompts.yaml").write_text(
        f"task: st_prompts\n{common}dataset_kwargs:\n  data_files: {{train: {root / 'prompts.jsonl'}}}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return root


TASKS = ["st_pairs", "st_docs", "st_prompts"]


def run(lm, task_dir):
    return evaluate_tasks(lm, TASKS, include_path=str(task_dir))["results"]


def test_stentor_lm_gives_the_hf_backends_numbers(trained_model, bpe_tokenizer, task_dir, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ours = run(StentorLM(trained_model, bpe_tokenizer, precision="fp32"), task_dir)
    theirs = run(HFLM(pretrained=trained_model, tokenizer=bpe_tokenizer, batch_size=8), task_dir)
    assert ours["st_pairs"]["acc,none"] == theirs["st_pairs"]["acc,none"]
    for metric in ("word_perplexity,none", "bits_per_byte,none"):
        assert math.isclose(ours["st_docs"][metric], theirs["st_docs"][metric], rel_tol=1e-5)
    assert ours["st_prompts"]["exact_match,none"] == theirs["st_prompts"]["exact_match,none"]


def test_bf16_agrees_and_the_factory_reads_model_args(model_dir, task_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = StentorLM.create_from_arg_string(f"model={model_dir},precision=bf16,batch_size=4")
    assert lm.precision == "bf16" and lm.scorer.batch_size == 4
    fp32 = StentorLM.from_dir(str(model_dir), precision="fp32")
    a, b = run(lm, task_dir), run(fp32, task_dir)
    assert math.isclose(a["st_docs"]["bits_per_byte,none"], b["st_docs"]["bits_per_byte,none"], rel_tol=1e-3)


def test_cli_runs_tasks_and_names_unknown_ones(model_dir, task_dir, tmp_path, monkeypatch, capsys):
    from stentor.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "lm_eval.json"
    argv = ["eval", "lm-eval", "--model", str(model_dir), "--tasks", "st_pairs", "--include-path", str(task_dir),
            "--limit", "10", "--precision", "fp32", "--json", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "st_pairs" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["precision"] == "fp32" and 0 <= saved["results"]["st_pairs"]["acc,none"] <= 1
    assert main(["eval", "lm-eval", "--model", str(model_dir), "--tasks", "no_such_task"]) == 2
    assert "unknown lm-eval task(s): no_such_task" in capsys.readouterr().err


def score_through_stentor_serve(model_dir, paradigms, root) -> dict[str, float]:
    """lm-eval's `local-completions` model (echo + prompt logprobs, batches of token-id lists) against
    `stentor serve`, on BLiMP-shaped tasks written as local YAMLs: lm-eval's blimp layout with an
    empty target delimiter, so each sentence is scored given BOS alone, as the paper and
    `stentor eval blimp` do (lm-eval's own blimp tasks put a space before every sentence)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from serving import stentor_serve

    for p in paradigms:
        rows = [{"sentence_good": good, "sentence_bad": bad} for good, bad in p.pairs]
        (root / f"{p.uid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / f"{p.uid}.yaml").write_text(
            f"task: local_blimp_{p.uid}\ndataset_path: json\ntest_split: train\n"
            f"dataset_kwargs:\n  data_files: {{train: {root / f'{p.uid}.jsonl'}}}\n"
            "output_type: multiple_choice\ntarget_delimiter: ''\ndoc_to_text: ''\ndoc_to_target: 0\n"
            "doc_to_choice: '{{[sentence_good, sentence_bad]}}'\nmetric_list:\n  - metric: acc\n"
        )
    with stentor_serve(model_dir, "--model-name", "served") as (_, url):
        args = f"model=served,base_url={url}/v1/completions,tokenizer={model_dir},tokenizer_backend=huggingface,batch_size=16"
        out = simple_evaluate(model="local-completions", model_args=args, tasks=[f"local_blimp_{p.uid}" for p in paradigms],
                              task_manager=TaskManager(include_path=str(root)))  # fmt: skip
    return {p.uid: out["results"][f"local_blimp_{p.uid}"]["acc,none"] for p in paradigms}


def test_local_completions_against_stentor_serve_equals_stentor_eval_blimp(model_dir, tmp_path, monkeypatch):
    from stentor.eval import load_model_and_tokenizer
    from stentor.eval.blimp import Paradigm, evaluate_blimp

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    sentences = [s.strip() + "." for s in english_like(120, seed=33).split(".") if s.strip()]
    swapped = lambda s: " ".join(reversed(s.rstrip(".").split())) + "."  # noqa: E731
    paradigms = [Paradigm(f"pairs_{k}", "f", "t", [(s, swapped(s)) for s in sentences[k * 25 : (k + 1) * 25]])
                 for k in range(3)]  # fmt: skip
    ours = evaluate_blimp(*load_model_and_tokenizer(str(model_dir)), paradigms, progress=False)
    served = score_through_stentor_serve(model_dir, paradigms, tmp_path)
    assert served == {p.uid: p.accuracy for p in ours.paradigms}
    assert len(set(served.values())) > 1 or 0 < next(iter(served.values())) < 1  # not all-or-nothing by chance


@pytest.mark.shared
def test_local_completions_on_real_blimp_paradigms(shared_dir, model_dir, tmp_path, monkeypatch):
    from stentor.eval import load_model_and_tokenizer
    from stentor.eval.blimp import evaluate_blimp, load_blimp

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    uids = ["anaphor_gender_agreement", "determiner_noun_agreement_1", "regular_plural_subject_verb_agreement_1"]
    paradigms = load_blimp(str(shared_dir / "data" / "blimp"), tasks=uids, limit=60)
    ours = evaluate_blimp(*load_model_and_tokenizer(str(model_dir)), paradigms, progress=False)
    assert score_through_stentor_serve(model_dir, paradigms, tmp_path) == {p.uid: p.accuracy for p in ours.paradigms}
