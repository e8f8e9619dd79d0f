"""The recipe config: the card's values, strict keys, overrides, schedule arithmetic, AdamW groups, plan."""

from __future__ import annotations

import math

import pytest

from stentor.errors import StentorError
from stentor.train.config import TrainConfig, load_config
from stentor.train.plan import make_plan
from stentor.train.schedule import Schedule

from train_helpers import REPO

CARD = REPO / "configs" / "stentor2-12m.yaml"


def test_card_yaml_holds_the_card_values_and_equals_the_defaults():
    cfg = load_config(CARD)
    assert cfg == TrainConfig()  # the YAML restates the dataclass defaults, which are the card's
    assert (cfg.optim.learning_rate, cfg.optim.betas, cfg.optim.eps) == (8e-4, (0.9, 0.95), 1e-8)
    assert (cfg.optim.weight_decay, cfg.optim.max_grad_norm) == (0.01, 1.0)
    assert (cfg.batch.per_device_train_batch_size, cfg.batch.per_device_eval_batch_size) == (32, 16)
    assert (cfg.batch.gradient_accumulation_steps, cfg.batch.block_size) == (2, 1024)
    assert (cfg.schedule.warmup_ratio, cfg.schedule.stable_ratio, cfg.schedule.max_train_steps) == (0.05, 0.80, 9552)
    assert (cfg.schedule.token_budget, cfg.data.source_token_budget, cfg.schedule.num_train_epochs) == (480_000_000, 240_000_000, 2)
    assert (cfg.eval.eval_steps, cfg.eval.best_eval_steps, cfg.eval.best_eval_start_step, cfg.eval.max_eval_samples) == (900, 900, 1500, 5000)
    assert (cfg.checkpoint.save_every_minutes, cfg.checkpoint.save_total_limit, cfg.logging.logging_steps) == (30, 2, 300)
    assert (cfg.seed, cfg.precision.mixed_precision, cfg.precision.t4_recipe, cfg.precision.critical_layers) == (42, "fp16", True, 2)
    assert cfg.data.val_docs == 2000 and [s.hf_id for s in cfg.data.sources] == ["epfml/FineWeb-HQ", "StentorLabs/StenCore"]


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(CARD, ["schedule.scheduler=wsd", "optim.betas=[0.8, 0.99]"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.learnig_rate=1e-3"], "unknown config key 'optim.learnig_rate'; valid keys in optim: learning_rate"),
        (["optimizer.lr=1"], "unknown config key 'optimizer'"),
        (["data.sources=[{path: x, colum: text}]"], "unknown config key 'data.sources[0].colum'"),
        (["batch.block_size=big"], "batch.block_size must be int"),
        (["schedule.scheduler=linear"], "schedule.scheduler must be one of cosine, wsd"),
        (["precision.mixed_precision=fp8"], "precision.mixed_precision must be one of no, fp16, bf16"),
        (["schedule.scheduler=wsd", "schedule.stable_ratio=0.99"], "leaves no room to decay"),
        (["batch"], "--set expects key.sub=value"),
        (["tokenizer=[1]"], "config key tokenizer must be str"),
    ],
)
def test_bad_config_names_the_problem(overrides, expected):
    with pytest.raises(StentorError, match=None) as err:
        load_config(CARD, overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_parse_yaml_values():
    cfg = load_config(CARD, ["schedule.token_budget=null", "optim.learning_rate=1e-3", "schedule.max_train_steps=4.8e3",
                             "precision.mixed_precision=no"])
    assert cfg.precision.mixed_precision == "no"
    assert cfg.schedule.token_budget is None and cfg.optim.learning_rate == 1e-3 and cfg.schedule.max_train_steps == 4800


def test_card_schedule_counts_and_shape():
    cos = Schedule.from_config(TrainConfig().schedule)
    assert (cos.warmup, cos.stable, cos.total) == (477, 7641, 9552)  # 477.6 and 7,641.6 floored, as on the card
    assert cos.factor(0) == 0 and cos.factor(477) == 1 and cos.factor(9552) == pytest.approx(0, abs=1e-12)
    assert cos.factor(238) == pytest.approx(238 / 477)
    mid = 477 + (9552 - 477) // 2
    assert cos.factor(mid) == pytest.approx(0.5, abs=1e-3)
    factors = [cos.factor(s) for s in range(477, 9553)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # monotone decay after warmup

    wsd = Schedule.from_config(load_config(CARD, ["schedule.scheduler=wsd"]).schedule)
    assert wsd.decay_start == 477 + 7641
    assert all(wsd.factor(s) == 1 for s in range(477, 8118))
    assert wsd.factor(8118 + (9552 - 8118) // 4) == pytest.approx(1 - math.sqrt(0.25), abs=1e-3)  # 1-sqrt decay
    assert wsd.factor(9552) == 0


def test_card_plan_numbers():
    plan = make_plan(TrainConfig())
    assert plan.params.total == 12_294_400
    assert (plan.world_size, plan.total_batch_size, plan.tokens_per_step) == (2, 128, 131_072)
    assert plan.budget_steps == 3663 and plan.budget_steps * plan.tokens_per_step == 480_116_736  # the card's total
    assert plan.max_steps == 3663
    assert make_plan(TrainConfig(), world_size=8).tokens_per_step == 524_288
    plan.check_budgets()
    with pytest.raises(StentorError, match="smaller than one optimizer step"):
        make_plan(load_config(CARD, ["schedule.token_budget=100000"])).check_budgets()


def test_adamw_groups_decay_linear_weights_only_and_never_the_tied_embedding():
    import torch
    from torch import nn

    from stentor.model.build import build_model
    from stentor.model.presets import get_preset
    from stentor.train.optim import build_optimizer

    model = build_model(get_preset("stentor2-tiny-gqa"), seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    opt = build_optimizer(model, TrainConfig().optim, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.model.embed_tokens.weight) not in decay_ids
    linear = [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m is not model.lm_head]
    assert decay_ids == {id(w) for w in linear}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8 and opt.defaults["foreach"]


def test_dry_run_prints_the_card_plan(capsys):
    from stentor.cli import main

    assert main(["train", "--config", str(CARD), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "Parameters (card formula): 12,294,400",
        "total batch size          128 = 32 x 2 x 2",
        "tokens per optimizer step 131,072 = 128 x 1,024",
        "steps to token budget     3,663 (480,116,736 tokens)",
        "warmup steps              477 = int(0.05 x 9,552)",
        "stable steps              7,641 = int(0.8 x 9,552)",
        "cosine decay to 0 over steps 477-9,552",
        "25 FP32 RMSNorms, 2 FP32 critical layers, FP32 softmax skipped (SDPA)",
        "every 900 steps",
        "evals every 900 steps from step 1,500",
        "every 30 min, keep 2",
        "every 300 steps",
    ):
        assert expected in out, expected
    assert main(["train", "--config", str(CARD), "--dry-run", "--num-processes", "1", "--set", "schedule.scheduler=wsd"]) == 0
    out = capsys.readouterr().out
    assert "tokens per optimizer step 65,536" in out and "steps to token budget     7,325" in out
    assert "WSD: linear warmup 477 steps, stable at peak 7,641 steps, 1-sqrt decay to 0 over steps 8,118-9,552" in out
