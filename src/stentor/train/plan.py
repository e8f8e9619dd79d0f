"""The resolved plan of a run: what `--dry-run` prints and what the trainer budgets against.

All numbers come from the config alone (no data, no model weights), so a plan for the card's
2xT4 run can be printed on a laptop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from stentor.errors import StentorError
from stentor.model.params import ParamBreakdown, estimate_llama_params
from stentor.model.presets import ModelConfig, get_preset
from stentor.train.config import TrainConfig
from stentor.train.schedule import Schedule

# Dense peak FLOP/s per device at the precision it trains in (vendor datasheets), for MFU.
PEAK_FLOPS = {"T4": 65e12, "V100": 125e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12, "H100": 989e12, "H200": 989e12}


def flops_per_token(mcfg: ModelConfig, params: int, block_size: int) -> int:
    """Training FLOPs per token: 6N (forward + backward matmuls, tied lm_head counted once in N)
    plus the attention-score term 12 * layers * hidden * seq (QK^T and AV, forward + backward),
    as in the PaLM paper's MFU appendix. Causal masking is not discounted."""
    return 6 * params + 12 * mcfg.num_hidden_layers * mcfg.hidden_size * block_size


def device_is(model: str, device_name: str) -> bool:
    """Whether `device_name` ("NVIDIA A100-SXM4-80GB", "Tesla T4") names the GPU `model`: a whole word of
    it, so "L4" is not an "NVIDIA L40S"."""
    return model.lower() in re.split(r"[^0-9a-z]+", device_name.lower())


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: the override, else our table by name; None when unknown (CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    return next((flops for key, flops in PEAK_FLOPS.items() if device_is(key, device_name)), None)


def tokenizer_special_ids(tokenizer, model_vocab: int, model_name: str) -> dict[str, int]:
    """The tokenizer's BOS/EOS/PAD ids for the model config; refuses a vocab the embedding cannot hold."""
    if len(tokenizer) > model_vocab:
        raise StentorError(
            f"the tokenizer has {len(tokenizer):,} tokens but model {model_name} embeds only {model_vocab:,}; "
            "use a preset with a larger vocab_size or set model.overrides.vocab_size"
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise StentorError("the tokenizer has no EOS token; packing needs one between documents")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


def model_config(cfg: TrainConfig, tokenizer=None) -> ModelConfig:
    """The preset with the config's overrides and, given a tokenizer, its special-token ids; or, with
    `init_from`, the architecture of that model."""
    if cfg.init_from is not None:
        from stentor.model.build import config_from_dir

        mcfg = config_from_dir(cfg.init_from)
    else:
        preset = get_preset(cfg.model.preset)
        changes = dict(cfg.model.overrides)
        if tokenizer is not None:
            changes |= tokenizer_special_ids(tokenizer, changes.get("vocab_size", preset.vocab_size), preset.name)
        mcfg = preset.replace(**changes) if changes else preset
    if cfg.batch.block_size > mcfg.max_position_embeddings:
        raise StentorError(
            f"batch.block_size {cfg.batch.block_size} exceeds the model's max_position_embeddings "
            f"{mcfg.max_position_embeddings} ({mcfg.name}); lower block_size or pick a larger preset"
        )
    return mcfg


def unigram_entropy(tokens) -> float:
    """Entropy (nats/token) of the tokens' unigram distribution: the loss of a model that ignores context.
    A trained LM's eval loss must end well below it."""
    counts = np.bincount(np.asarray(tokens))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@dataclass(frozen=True)
class Plan:
    cfg: TrainConfig
    mcfg: ModelConfig
    params: ParamBreakdown
    world_size: int
    schedule: Schedule

    @property
    def total_batch_size(self) -> int:
        b = self.cfg.batch
        return b.per_device_train_batch_size * self.world_size * b.gradient_accumulation_steps

    @property
    def tokens_per_step(self) -> int:
        return self.total_batch_size * self.cfg.batch.block_size

    @property
    def budget_steps(self) -> int | None:
        """Optimizer steps until the token budget is reached (the step that crosses it counts)."""
        budget = self.cfg.schedule.token_budget
        return None if budget is None else math.ceil(budget / self.tokens_per_step)

    @property
    def max_steps(self) -> int:
        """Steps before the data's epochs are known: the smaller of max_train_steps and the budget."""
        return min(self.cfg.schedule.max_train_steps, self.budget_steps or self.cfg.schedule.max_train_steps)

    @property
    def flops_per_token(self) -> int:
        return flops_per_token(self.mcfg, self.params.total, self.cfg.batch.block_size)

    def check_budgets(self) -> None:
        budget, source = self.cfg.schedule.token_budget, self.cfg.data.source_token_budget
        if budget is not None and budget < self.tokens_per_step:
            raise StentorError(
                f"schedule.token_budget {budget:,} is smaller than one optimizer step ({self.tokens_per_step:,} tokens "
                f"= {self.total_batch_size} sequences x {self.cfg.batch.block_size}); raise the budget or shrink the batch"
            )
        if source is not None and source < self.tokens_per_step:
            raise StentorError(
                f"data.source_token_budget {source:,} is smaller than one optimizer step ({self.tokens_per_step:,} tokens); "
                "raise it or shrink the batch"
            )

    def describe(self) -> str:
        c, b, s, e, k, p = self.cfg, self.cfg.batch, self.cfg.schedule, self.cfg.eval, self.cfg.checkpoint, self.cfg.precision
        o = c.optim
        layers = self.mcfg.num_hidden_layers
        lines = [
            f"== stentor train plan: {self.mcfg.name} ==",
            self.params.table(f"Parameters (card formula): {self.params.total:,}", layers),
            "",
            "Batch",
            f"  processes                 {self.world_size}",
            f"  per-device batch          {b.per_device_train_batch_size} (eval {b.per_device_eval_batch_size})",
            f"  gradient accumulation     {b.gradient_accumulation_steps}",
            f"  total batch size          {self.total_batch_size} = {b.per_device_train_batch_size} x {self.world_size} "
            f"x {b.gradient_accumulation_steps}",
            f"  block size                {b.block_size:,}",
            f"  tokens per optimizer step {self.tokens_per_step:,} = {self.total_batch_size} x {b.block_size:,}",
            "",
            "Budget and schedule",
            f"  token budget              {_num(s.token_budget)} (source token budget {_num(c.data.source_token_budget)})",
        ]
        if self.budget_steps is not None:
            lines.append(
                f"  steps to token budget     {self.budget_steps:,} ({self.budget_steps * self.tokens_per_step:,} tokens)"
            )
        lines += [
            f"  max_train_steps           {s.max_train_steps:,}; epochs {s.num_train_epochs} (whichever ends first)",
            f"  warmup steps              {self.schedule.warmup:,} = int({s.warmup_ratio} x {s.max_train_steps:,})",
            f"  stable steps              {self.schedule.stable:,} = int({s.stable_ratio} x {s.max_train_steps:,})"
            + ("" if s.scheduler == "wsd" else " (used by scheduler: wsd)"),
            f"  schedule                  {self.schedule.describe()}",
        ]
        if self.max_steps < s.max_train_steps:
            lines.append(
                f"  note                      training stops at step {self.max_steps:,}, LR there "
                f"{o.learning_rate * self.schedule.factor(self.max_steps):.3g} (peak {o.learning_rate:g})"
            )
        lines += [
            "",
            "Optimizer",
            f"  AdamW lr {o.learning_rate:g}, betas {tuple(o.betas)}, eps {o.eps:g}, fused on CUDA",
            f"  weight decay {o.weight_decay:g} on nn.Linear weights; 0 on norms, embeddings (tied lm_head), biases",
            f"  gradient clipping {o.max_grad_norm:g}",
            "",
            "Precision",
            f"  mixed precision           {p.mixed_precision}" + (" (+ dynamic loss scaling)" if p.mixed_precision == "fp16" else ""),
        ]
        if p.t4_recipe and p.mixed_precision != "no":
            lines += [
                f"  T4 recipe                 {2 * layers + 1} FP32 RMSNorms, {min(p.critical_layers, layers)} FP32 critical "
                "layers, FP32 softmax skipped (SDPA)",
            ]
        else:
            lines.append("  T4 recipe                 off")
        save = [f"every {k.save_every_minutes:g} min" if k.save_every_minutes else "", f"every {k.save_steps} steps" if k.save_steps else ""]
        lines += [
            f"  FLOPs per token           {self.flops_per_token:,} (6N + 12 x layers x hidden x block)",
            "",
            "Evaluation and checkpoints",
            f"  eval                      every {e.eval_steps:,} steps, at each epoch end and at the end, "
            f"on <= {e.max_eval_samples:,} validation blocks",
            f"  best checkpoint           evals every {e.best_eval_steps:,} steps from step {e.best_eval_start_step:,}",
            f"  resumable checkpoints     {' and '.join(x for x in save if x) or 'at the end only'}, keep {k.save_total_limit}",
            f"  logging                   every {c.logging.logging_steps:,} steps",
            f"  seed                      {c.seed}",
        ]
        return "\n".join(lines)


def _num(x: int | None) -> str:
    return "none" if x is None else f"{x:,}"


def make_plan(cfg: TrainConfig, world_size: int | None = None, mcfg: ModelConfig | None = None) -> Plan:
    mcfg = mcfg or model_config(cfg)
    return Plan(cfg, mcfg, estimate_llama_params(mcfg), world_size or cfg.batch.world_size, Schedule.from_config(cfg.schedule))
