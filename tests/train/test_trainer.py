"""The trainer in this process: non-finite steps are skipped and counted, the T4 recipe under CPU
bf16 autocast, and every bad input stops with one clear line before training starts."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from train_helpers import tiny_recipe, write_recipe

from stentor.cli import main
from stentor.train.config import load_config
from stentor.train.trainer import Trainer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _fresh_accelerate(fresh_accelerate):
    yield


@pytest.fixture
def recipe(corpus_and_tokenizer, tmp_path_factory):
    corpus, tokenizer = corpus_and_tokenizer
    prepared = tmp_path_factory.getbasetemp() / "trainer-prepared"  # tokenized once for this module

    def make(tmp_path, **sections):
        data = tiny_recipe(corpus, tokenizer, **sections)
        data.update(prepared_dir=str(prepared), prepare_workers=1)
        return write_recipe(tmp_path / "recipe.yaml", data)

    return make


class NaNOnCalls:
    """A forward hook on the embedding that poisons its output on chosen forward calls."""

    def __init__(self, calls: set[int]):
        self.calls, self.count = calls, 0

    def __call__(self, module, args, output):
        self.count += 1
        return output * float("nan") if self.count in self.calls else output


def test_non_finite_step_is_never_applied_and_is_counted(recipe, tmp_path):
    trainer = Trainer(load_config(recipe(tmp_path, schedule={"max_train_steps": 4}, checkpoint={"save_steps": None})),
                      tmp_path / "run")
    embed = trainer.raw_model.get_input_embeddings()
    hook = embed.register_forward_hook(NaNOnCalls({3}))  # step 2, first micro-batch
    result = trainer.fit()
    hook.remove()
    assert result.skipped_steps == 1 and result.steps == 4
    with open(tmp_path / "run" / "training_curves.csv", newline="") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    assert "skipped non-finite step (1 total)" in rows[2]["note"] and rows[2]["train_loss"] == ""
    assert all(rows[s]["train_loss"] for s in (1, 3, 4))
    assert json.loads((tmp_path / "run/checkpoints/step-4/trainer_state.json").read_text())["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())
    curves = (tmp_path / "run" / "training_curves.csv").read_text()
    again = Trainer.resume(tmp_path / "run").fit()  # a finished run resumes to a no-op
    assert again.steps == 4 and (tmp_path / "run" / "training_curves.csv").read_text() == curves

    # Directly: a poisoned step leaves weights and optimizer state untouched; the next one applies.
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    opt_state = {k: v["exp_avg"].clone() for k, v in enumerate(trainer.optimizer.optimizer.state.values())}
    batches = [trainer.feeder.batch(range(i * 4, i * 4 + 4)) for i in range(2)]
    hook = embed.register_forward_hook(NaNOnCalls({1}))
    loss, applied = trainer.train_step(batches)
    assert not applied and not torch.isfinite(loss)
    assert all(torch.equal(before[k], v) for k, v in trainer.raw_model.state_dict().items())
    assert all(torch.equal(opt_state[k], v["exp_avg"]) for k, v in enumerate(trainer.optimizer.optimizer.state.values()))
    loss, applied = trainer.train_step(batches)
    hook.remove()
    assert applied and torch.isfinite(loss)
    # (the schedule has ended, LR 0, so the applied step shows in the moments, not the weights)
    assert not all(torch.equal(opt_state[k], v["exp_avg"]) for k, v in enumerate(trainer.optimizer.optimizer.state.values()))


def test_t4_recipe_under_cpu_bf16_autocast(recipe, tmp_path):
    path = recipe(tmp_path, precision={"mixed_precision": "bf16", "t4_recipe": True, "critical_layers": 1},
                  schedule={"max_train_steps": 3}, checkpoint={"save_steps": None})
    trainer = Trainer(load_config(path), tmp_path / "run")
    assert (trainer.recipe.fp32_norms, trainer.recipe.critical_layers) == (5, 1)  # 2 layers x 2 + final norm
    result = trainer.fit()
    assert result.steps == 3 and result.skipped_steps == 0 and result.final_eval_loss < 10
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())


def _fails(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stentor: error:") and "\n" not in err and "Traceback" not in err, err
    assert expected in err, err


def _edit(path, **changes):
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_bad_inputs_fail_with_one_line_before_training(recipe, corpus_and_tokenizer, tmp_path, capsys):
    path = recipe(tmp_path)
    out = str(tmp_path / "run")
    _fails(capsys, ["train", "--config", _edit(path, data__sources=[{"path": str(tmp_path / "nope.jsonl")}]), "--out", out],
           "does not exist")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(capsys, ["train", "--config", _edit(path, data__sources=[{"path": str(empty)}], prepared_dir=str(tmp_path / "p1")),
                    "--out", out], "empty")
    path = recipe(tmp_path)
    corpus = str(corpus_and_tokenizer[0])
    _fails(capsys, ["train", "--config", _edit(path, data__sources=[{"path": corpus, "text_field": "body"}]), "--out", out],
           "has no field 'body'; available fields: text, id")
    path = recipe(tmp_path)
    _fails(capsys, ["train", "--config", str(path), "--set", "model.overrides={vocab_size: 16}", "--out", out],
           "but model stentor2-tiny embeds only 16")
    _fails(capsys, ["train", "--config", str(path), "--set", "optim.lr=1", "--out", out], "unknown config key 'optim.lr'")
    _fails(capsys, ["train", "--config", str(path), "--set", "schedule.token_budget=100", "--out", out],
           "smaller than one optimizer step")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _fails(capsys, ["train", "--config", str(path), "--out", str(blocker / "run")], "cannot write to")
    _fails(capsys, ["train", "--resume", str(tmp_path)], "is not a stentor run directory")
    assert not (tmp_path / "run" / "checkpoints").exists()


class InfInEval:
    """A forward hook on the embedding that makes every evaluation forward overflow."""

    def __call__(self, module, args, output):
        return output if module.training else output * float("inf")


def test_a_non_finite_eval_is_reported_and_the_run_goes_on(recipe, tmp_path, capsys):
    trainer = Trainer(load_config(recipe(tmp_path, schedule={"max_train_steps": 10})), tmp_path / "run")
    hook = trainer.raw_model.get_input_embeddings().register_forward_hook(InfInEval())
    result = trainer.fit()  # rank 0 used to crash formatting a perplexity it did not have
    hook.remove()
    assert result.steps == 10 and not result.interrupted
    with open(tmp_path / "run" / "training_curves.csv", newline="") as f:
        evals = [r for r in csv.DictReader(f) if r["eval_loss"]]
    assert evals and all("eval loss not finite" in r["note"] for r in evals)
    shown = capsys.readouterr()
    assert "is not finite: the model's outputs overflowed; try bf16" in shown.out + shown.err
    assert not (tmp_path / "run" / "best").exists()  # a non-finite eval is never the best


def test_training_and_eval_forwards_build_no_kv_cache(recipe, tmp_path):
    trainer = Trainer(load_config(recipe(tmp_path, schedule={"max_train_steps": 2})), tmp_path / "run")
    caches = []
    hook = trainer.raw_model.model.register_forward_hook(lambda m, a, out: caches.append(out.past_key_values))
    trainer.train_step([trainer.feeder.batch(range(4))])
    trainer.evaluate()
    hook.remove()
    assert caches and all(c is None for c in caches)  # a cache per layer per step is only memory in training


def test_a_checkpoint_from_another_number_of_processes_is_one_line(tmp_path):
    from stentor.errors import StentorError
    from stentor.model.build import build_model
    from stentor.model.presets import get_preset
    from stentor.train.checkpoint import TrainerState, load_checkpoint, rng_state, save_checkpoint

    model = build_model(get_preset("stentor2-tiny"), seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = save_checkpoint(tmp_path, TrainerState(step=2), model, optimizer, scheduler, None, [rng_state()], 2)
    with pytest.raises(StentorError, match=r"written by 1 process\(es\), this run has 2; .*--num_processes 1"):
        load_checkpoint(path, model, optimizer, scheduler, None, rank=1, world=2)


def test_peak_flops_match_whole_gpu_names():
    from stentor.train.plan import peak_flops

    assert peak_flops("NVIDIA L40S") is None and peak_flops("NVIDIA L4") == 121e12  # "L4" is not "L40S"
    assert peak_flops("Tesla T4") == 65e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("cpu") is None
    assert peak_flops("anything", override_tflops=2.5) == 2.5e12


def test_the_training_forward_returns_the_loss_alone_so_no_logits_are_upcast(recipe, tmp_path):
    from stentor.train.trainer import LossOnly

    cfg = load_config(recipe(tmp_path, schedule={"max_train_steps": 2}, precision={"mixed_precision": "bf16", "t4_recipe": False}))
    trainer = Trainer(cfg, tmp_path / "run")
    seen = []
    hook = trainer.raw_model.register_forward_hook(lambda m, a, out: seen.append(out.logits.dtype))
    out = trainer.model(**trainer.feeder.batch(range(4)))
    hook.remove()
    assert seen == [torch.bfloat16] and out.dim() == 0  # bf16 logits inside; only the scalar leaves (and is upcast)
    assert isinstance(trainer.loss_model, LossOnly) and trainer.raw_model is trainer.loss_model.lm


def test_batches_built_ahead_train_exactly_as_batches_built_in_place(recipe, tmp_path):
    """batch.prefetch builds each next step's batches on a thread (the default on CUDA). Forced on here, across
    epoch ends and a stop + resume (where the step built ahead is not the one asked for), the run is the same."""
    curves = {}
    for prefetch in (False, True):
        run = tmp_path / f"run-{prefetch}"
        trainer = Trainer(load_config(recipe(tmp_path, batch={"prefetch": prefetch})), run)
        calls = []

        def stop_at_step_7(module, args, output, trainer=trainer):
            calls.append(1)
            if len(calls) == 7 * 2:  # two micro-batches a step
                trainer.stop_requested = True

        trainer.raw_model.get_input_embeddings().register_forward_hook(stop_at_step_7)
        assert trainer.fit().interrupted and trainer.state.step == 7
        resumed = Trainer.resume(run)
        resumed.fit()
        assert (resumed.feeder._pool is not None) == prefetch and resumed.feeder.steps == resumed.total_steps - 7
        assert resumed.total_steps > resumed.steps_per_epoch  # the run crossed an epoch end
        with open(run / "training_curves.csv", newline="") as f:
            curves[prefetch] = [(r["step"], r["train_loss"], r["eval_loss"]) for r in csv.DictReader(f)]
    assert curves[True] == curves[False] and len(curves[True]) == resumed.total_steps


def test_the_epoch_order_is_computed_once_per_epoch_not_per_step(recipe, tmp_path, monkeypatch):
    """The permutation of all blocks costs ms at the card's 234K blocks; it was rebuilt on every step."""
    import stentor.train.trainer as trainer_module

    calls = []
    real = trainer_module.epoch_blocks
    monkeypatch.setattr(trainer_module, "epoch_blocks", lambda *args: calls.append(args[2]) or real(*args))
    trainer = Trainer(load_config(recipe(tmp_path, checkpoint={"save_steps": None})), tmp_path / "run")
    trainer.fit()
    assert trainer.total_steps > trainer.steps_per_epoch  # the run crossed an epoch end
    assert calls == [0, 1]  # epochs, not steps


def test_the_grad_scalers_state_survives_a_resume(tmp_path):
    """fp16 runs (CUDA) carry a GradScaler; its backed-off scale and growth count come back on resume."""
    from stentor.model.build import build_model
    from stentor.model.presets import get_preset
    from stentor.train.checkpoint import TrainerState, load_checkpoint, rng_state, save_checkpoint

    def parts():
        model = build_model(get_preset("stentor2-tiny"), seed=0)
        optimizer = torch.optim.AdamW(model.parameters())
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model, optimizer, scheduler = parts()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=5)
    ids = torch.tensor([[1, 2, 3, 4]])
    for overflow in (True, False, False):
        scaler.scale(model(input_ids=ids, labels=ids).loss).backward()
        if overflow:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert scaler.get_scale() == 2.0**15 and scaler.state_dict()["_growth_tracker"] == 2
    path = save_checkpoint(tmp_path, TrainerState(step=3), model, optimizer, scheduler, scaler, [rng_state()], 2)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=5)
    load_checkpoint(path, *parts(), fresh, 0)
    assert fresh.state_dict() == scaler.state_dict()
