"""The training loop on HF Accelerate (DDP on one or many GPUs/nodes, or CPU processes over gloo).

Data position is (epoch, micro-batch within the epoch): every epoch shuffles the block indices
with a permutation seeded by (seed, epoch), each rank takes a strided share, and resuming is
just skipping to the saved micro-batch. Together with the saved model/optimizer/scheduler/
scaler/RNG states this makes a resumed run reproduce the uninterrupted one exactly (CPU).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stentor.errors import StentorError
from stentor.fileio import atomic_write_text, ensure_writable_dir
from stentor.train.checkpoint import (
    TrainerState,
    clean_partial_saves,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from stentor.train.config import CONFIG_FILE, TrainConfig, load_run_config
from stentor.train.curves import CurveLog, CurveRow
from stentor.train.plan import Plan, make_plan, model_config, peak_flops, unigram_entropy

log = logging.getLogger(__name__)

CURVES_FILE = "training_curves.csv"


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    skipped_steps: int
    final_eval_loss: float | None
    best_eval_loss: float | None
    best_step: int | None
    interrupted: bool


def epoch_blocks(num_blocks: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's block order for `epoch`: a seeded permutation, strided across ranks (disjoint, equal length)."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_blocks)
    per_rank = num_blocks // world
    return perm[rank : per_rank * world : world]


class LossOnly(torch.nn.Module):
    """The causal LM's forward with the loss as its only output, and no KV cache (it only costs memory here).

    Accelerate's mixed-precision forward converts every output to fp32: returning the model's outputs
    would copy the (batch, block, vocab) logits to fp32 (1 GiB at the card's 32 x 1024 x 8,064) though
    only the loss is read."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, **batch) -> torch.Tensor:
        return self.lm(**batch, use_cache=False).loss


class Trainer:
    """One run. Build it with `Trainer(cfg, run_dir)` (fresh) or `Trainer.resume(run_dir)`, then `.fit()`."""

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False, tensorboard: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resuming = resume
        if tensorboard or cfg.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise StentorError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
        self.use_tensorboard = tensorboard or cfg.logging.tensorboard

        # Launched as several processes on a machine without CUDA (accelerate launch --multi_gpu, torchrun):
        # run them as CPU processes over gloo instead of letting each one train alone.
        cpu_group = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        group = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.ddp_timeout))
        self.acc = Accelerator(mixed_precision=cfg.precision.mixed_precision, cpu=cpu_group, kwargs_handlers=[group])
        if self.acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
            # Our checkpoints save the full model and one optimizer state: right for DDP, wrong for sharded states.
            raise StentorError(
                f"stentor train supports single-process and DDP runs, not {self.acc.distributed_type.name} yet; "
                "launch without the FSDP/DeepSpeed accelerate config (a Stentor2-class model fits one GPU)"
            )
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if self.acc.device.type == "cuda":  # "high" = TF32 on Ampere+; fp32 matmuls otherwise stay IEEE fp32
            torch.set_float32_matmul_precision("high" if cfg.precision.tf32 else "highest")
        self.is_main = self.acc.is_main_process
        if cfg.precision.mixed_precision == "fp16" and self.acc.device.type != "cuda" and self.is_main:
            log.warning("fp16 needs a CUDA GPU; on %s this run computes in fp32 (bf16 autocast works on CPU)", self.acc.device)
        if (cfg.precision.mixed_precision == "bf16" and self.acc.device.type == "cuda" and self.is_main
                and not torch.cuda.is_bf16_supported(including_emulation=False)):  # fmt: skip
            log.warning("%s has no native bf16: it is emulated and slow here; use mixed_precision fp16 with the T4 "
                        "recipe (the card's setting)", torch.cuda.get_device_name(self.acc.device))  # fmt: skip

        # Cheap checks first: output dir, tokenizer vs model, budgets. Then data, then the model.
        if self.is_main:
            ensure_writable_dir(self.run_dir)
            if not resume and latest_checkpoint(self.run_dir) is not None:
                raise StentorError(
                    f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} or choose another --out"
                )
        from stentor.tokenizer.hf import load_tokenizer

        self.tokenizer = load_tokenizer(cfg.init_from or cfg.tokenizer)
        self.mcfg = model_config(cfg, self.tokenizer)
        self.plan: Plan = make_plan(cfg, self.world, self.mcfg)
        self.plan.check_budgets()
        if cfg.task == "chat":
            self._load_chat()
        else:
            self._load_text()
        b = cfg.batch
        self.micro_per_epoch = (len(self.train_blocks) // self.world) // b.per_device_train_batch_size
        self.steps_per_epoch = self.micro_per_epoch // b.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            raise StentorError(
                f"the training data packs into {len(self.train_blocks):,} blocks of {b.block_size}, fewer than one "
                f"optimizer step needs ({self.plan.total_batch_size}); add data or lower the batch size"
            )
        self.total_steps = min(self.plan.max_steps, self.steps_per_epoch * cfg.schedule.num_train_epochs)
        if self.is_main:
            log.info("%s steps/epoch -> %s steps", f"{self.steps_per_epoch:,}", f"{self.total_steps:,}")
        self._build_model()
        from stentor.train.feed import StepFeeder

        prefetch = b.prefetch if b.prefetch is not None else self.acc.device.type == "cuda"
        self.feeder = StepFeeder(self.train_blocks, self.mcfg.pad_token_id, self.acc.device, prefetch=prefetch)
        self.state = TrainerState(world_size=self.world)
        self.stop_requested = False

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, tensorboard: bool = False) -> Trainer:
        return cls(load_run_config(run_dir), run_dir, resume=True, tensorboard=tensorboard)

    # ---- setup -----------------------------------------------------------------------------------

    def _load_text(self) -> None:
        from stentor.data import PackedBlocks, prepare_data, wait_for_prepared

        cfg = self.cfg
        prepared_dir = Path(cfg.prepared_dir) if cfg.prepared_dir else self.run_dir / "data"
        if self.is_main:  # rank 0 tokenizes; the others wait for its meta.json, outside any collective
            data = prepare_data(cfg.data, self.tokenizer, prepared_dir, num_workers=cfg.prepare_workers)
        else:
            data = wait_for_prepared(cfg.data, self.tokenizer, prepared_dir)
        if len(data.val_tokens) == 0:
            raise StentorError("no validation tokens: set data.val_docs > 0 so the run can be evaluated")
        self.train_blocks = PackedBlocks(data.train_tokens, cfg.batch.block_size, self.mcfg.eos_token_id)
        self.val_blocks = PackedBlocks(data.val_tokens, cfg.batch.block_size, self.mcfg.eos_token_id)
        if self.is_main:
            log.info("%s tokens in %s blocks; unigram entropy of the training tokens %.4f nats (a context-free "
                     "model's loss: eval loss must end well below it)", f"{len(data.train_tokens):,}",
                     f"{len(self.train_blocks):,}", unigram_entropy(data.train_tokens))  # fmt: skip

    def _load_chat(self) -> None:
        from stentor.data.chat import load_chat

        cfg = self.cfg
        if cfg.data.val_docs < 1:
            raise StentorError("no held-out conversations: set data.val_docs > 0 so the run can be evaluated")
        self.train_blocks, self.val_blocks = load_chat(cfg.data.sources, self.tokenizer, cfg.data.val_docs,
                                                       cfg.batch.block_size, cfg.data.seed)  # fmt: skip
        if self.is_main:
            log.info("%s conversations (%s assistant tokens to learn), %s held out", f"{len(self.train_blocks):,}",
                     f"{self.train_blocks.target_tokens():,}", f"{len(self.val_blocks):,}")  # fmt: skip

    def _build_model(self) -> None:
        from stentor.model.build import build_model
        from stentor.model.precision import apply_t4_recipe
        from stentor.train.optim import build_optimizer
        from stentor.train.schedule import Schedule

        cfg = self.cfg
        if cfg.init_from is not None:  # on resume the checkpoint's weights replace these at once
            from stentor.model.loading import load_model

            model = load_model(cfg.init_from).train()
            if self.is_main and not self.resuming:
                log.info("starting from %s (%s parameters)", cfg.init_from, f"{sum(p.numel() for p in model.parameters()):,}")
        else:
            model = build_model(self.mcfg, seed=cfg.seed)
        self.recipe = None
        if cfg.precision.t4_recipe and cfg.precision.mixed_precision != "no":
            self.recipe = apply_t4_recipe(model, critical_layers=min(cfg.precision.critical_layers, self.mcfg.num_hidden_layers))
        if cfg.lora.r:
            model = self._with_lora(model)
        self.schedule = Schedule.from_config(cfg.schedule)
        optimizer = build_optimizer(model, cfg.optim, self.acc.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.factor)
        self.model, self.optimizer = self.acc.prepare(LossOnly(model), optimizer)
        if cfg.precision.compile:  # after prepare: compiling the DDP-wrapped model lets the all-reduce overlap backward
            self.model = torch.compile(self.model)
        self.loss_model = self.acc.unwrap_model(self.model, keep_torch_compile=False)  # no DDP; autocast kept
        self.raw_model = self.loss_model.lm

    def _with_lora(self, model):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise StentorError("lora.r > 0 needs peft: pip install 'stentor[lora]'") from None
        lo = self.cfg.lora
        config = LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=list(lo.target_modules),
                            task_type="CAUSAL_LM")  # fmt: skip
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:  # e.g. a target module the model does not have
            raise StentorError(f"lora: {str(exc).splitlines()[0][:200]}") from None
        if self.is_main:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            log.info("LoRA r=%d on %s: %s of %s parameters train", lo.r, ", ".join(lo.target_modules), f"{trainable:,}", f"{total:,}")
        return model

    def _plain_model(self):
        """The model as best/ and final/ hold it: LoRA adapters merged into a copy (training goes on with them)."""
        if not self.cfg.lora.r:
            return self.raw_model
        import copy

        return copy.deepcopy(self.raw_model).merge_and_unload()

    def _restore(self) -> None:
        """Load the latest checkpoint (resume) and cut the curves back to it; or start fresh files."""
        ckpt = latest_checkpoint(self.run_dir) if self.resuming else None
        if ckpt is not None:
            self.state = load_checkpoint(ckpt, self.raw_model, self.optimizer.optimizer, self.scheduler, self.acc.scaler,
                                         self.rank, self.world)  # fmt: skip
            if self.is_main:
                log.info("resuming from %s (step %d, epoch %d)", ckpt, self.state.step, self.state.epoch)
        else:
            from accelerate.utils import set_seed

            set_seed(self.cfg.seed)
            if self.resuming and self.is_main:
                log.info("no checkpoint in %s yet; starting the run from step 0", self.run_dir)
        self.window = torch.tensor(self.state.log_loss_sum, dtype=torch.float32, device=self.acc.device)
        if self.is_main:
            clean_partial_saves(self.run_dir)
            atomic_write_text(self.run_dir / CONFIG_FILE, self.cfg.to_yaml())
            self.curves = CurveLog(self.run_dir / CURVES_FILE)
            self.curves.start(keep_until_step=self.state.step if self.state.step else -1)  # step 0: nothing yet
            if self.use_tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.state.step + 1)
        self.acc.wait_for_everyone()

    # ---- one optimizer step ----------------------------------------------------------------------

    def _step_groups(self, order: np.ndarray, micro: int) -> list[np.ndarray]:
        """The block indices of each micro-batch of the step that starts at `micro` in this epoch's order."""
        bs, accum = self.cfg.batch.per_device_train_batch_size, self.cfg.batch.gradient_accumulation_steps
        return [order[(micro + i) * bs : (micro + i + 1) * bs] for i in range(accum)]

    def step_batches(self, order: np.ndarray, epoch: int, micro: int) -> list[dict[str, torch.Tensor]]:
        """The micro-batches of the step starting at `micro` of `epoch`; the next step of the same epoch
        starts building meanwhile (with batch.prefetch)."""
        batches = self.feeder.get((epoch, micro), self._step_groups(order, micro))
        following = micro + self.cfg.batch.gradient_accumulation_steps
        if following + self.cfg.batch.gradient_accumulation_steps <= self.micro_per_epoch:
            self.feeder.ahead((epoch, following), self._step_groups(order, following))
        return batches

    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, bool]:
        """Forward/backward over the micro-batches, clip, step. Returns (mean loss, applied).

        A step whose loss or gradient norm is not finite is never applied: under fp16 the
        GradScaler skips it (and lowers its scale); otherwise we skip the optimizer call.
        Gradients are all-reduced before the norm, so every rank takes the same decision.
        """
        self.model.train()
        accum = len(batches)
        losses = []
        for i, batch in enumerate(batches):
            sync = i == accum - 1
            with contextlib.nullcontext() if sync else self.acc.no_sync(self.model):
                loss = self.model(**batch)
                self.acc.backward(loss / accum)
            losses.append(loss.detach())
        step_loss = torch.stack(losses).float().mean()
        grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
        finite = bool(torch.isfinite(grad_norm) & torch.isfinite(step_loss))
        if self.acc.scaler is not None:
            self.optimizer.step()
            applied = finite and not self.acc.optimizer_step_was_skipped
        else:
            applied = finite
            if applied:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the LR is a function of the step: skipped steps still advance it
        return step_loss, applied

    # ---- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over the first `max_eval_samples` validation blocks, split across ranks."""
        from stentor.data import collate_blocks

        # The unwrapped model (accelerate's autocast kept): through DDP, each eval forward would broadcast
        # buffers, a collective that a rank with no eval batch never joins.
        model = self.loss_model
        model.eval()
        n = min(len(self.val_blocks), self.cfg.eval.max_eval_samples)
        mine = list(range(self.rank, n, self.world))
        bs = self.cfg.batch.per_device_eval_batch_size
        totals = torch.zeros(2, dtype=torch.float64, device=self.acc.device)
        for start in range(0, len(mine), bs):
            batch = collate_blocks([self.val_blocks[i] for i in mine[start : start + bs]], self.mcfg.pad_token_id)
            batch = {k: v.to(self.acc.device) for k, v in batch.items()}
            loss = model(**batch)
            count = (batch["labels"][:, 1:] != -100).sum()
            totals += torch.stack([loss.double() * count, count.double()])
        totals = self.acc.reduce(totals, reduction="sum")
        return float(totals[0] / totals[1])

    # ---- outputs ---------------------------------------------------------------------------------

    def _save_hf_dir(self, name: str) -> None:
        """best/ or final/: a complete HF model dir (weights, config, generation config, tokenizer)."""
        from stentor.model.build import save_model_dir

        if self.is_main:
            save_model_dir(self._plain_model(), self.mcfg, self.run_dir / name, tokenizer=self.tokenizer)
        self.acc.wait_for_everyone()

    def _save_checkpoint(self) -> None:
        from accelerate.utils import gather_object

        self.state.log_loss_sum = float(self.window)
        rngs = gather_object([rng_state()])
        if self.is_main:
            save_checkpoint(
                self.run_dir, self.state, self.raw_model, self.optimizer.optimizer, self.scheduler,
                self.acc.scaler, rngs, self.cfg.checkpoint.save_total_limit,
            )
        self.acc.wait_for_everyone()

    def _epoch_float(self) -> float:
        return self.state.epoch + self.state.micro_in_epoch / self.micro_per_epoch

    def _record(self, row: CurveRow) -> None:
        if not self.is_main:
            return
        self.curves.append(row)
        if row.eval_loss is not None:
            self.curves.plot(f"{self.mcfg.name}: {self.run_dir.name}")
        if self.use_tensorboard:
            for key in ("train_loss", "eval_loss"):
                if getattr(row, key) is not None:
                    self.tb.add_scalar(key, getattr(row, key), row.step)

    def _record_order(self, order: np.ndarray, start: int, stop: int) -> None:
        path = self.run_dir / "data_order" / f"rank{self.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"step": self.state.step, "epoch": self.state.epoch, "blocks": order[start:stop].tolist()}) + "\n")

    # ---- the loop --------------------------------------------------------------------------------

    def _flags(self, save_due: bool) -> tuple[bool, bool]:
        """Agree across ranks on stopping (Ctrl-C) and on time-based saves (rank 0's clock)."""
        if self.world == 1:
            return self.stop_requested, save_due
        flags = torch.tensor([float(self.stop_requested), float(save_due and self.is_main)], device=self.acc.device)
        flags = self.acc.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        self._restore()
        cfg, st = self.cfg, self.state
        b, accum = cfg.batch, cfg.batch.gradient_accumulation_steps
        if st.finished:
            if self.is_main:
                log.info("%s already finished at step %d; nothing to do", self.run_dir, st.step)
            return self._result(None, interrupted=False)
        if cfg.init_from is not None and st.step == 0:  # where the fine-tune starts, so its effect is seen
            start = self.evaluate()
            self._record(CurveRow(0, 0.0, None, start, math.exp(start) if start < 700 else None, "before fine-tuning"))
            if self.is_main:
                log.info("before fine-tuning: eval_loss %.4f", start)

        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            if self.stop_requested:  # a second Ctrl-C: stop now, without a checkpoint
                raise KeyboardInterrupt
            self.stop_requested = True
            if self.is_main:
                tqdm.write("stentor: Ctrl-C - saving a resumable checkpoint after this step (press again to abort)")

        signal.signal(signal.SIGINT, on_sigint)
        device_name = torch.cuda.get_device_name(self.acc.device) if self.acc.device.type == "cuda" else "cpu"
        peak = peak_flops(device_name, cfg.precision.peak_tflops)
        bar = tqdm(total=self.total_steps, initial=st.step, disable=not self.is_main, desc="train", unit="step", dynamic_ncols=True)
        last_save = clock = time.monotonic()
        st.device = device_name
        t0, tok0 = time.perf_counter(), st.tokens_seen
        final_loss = None
        order, order_epoch = None, None
        try:
            while st.step < self.total_steps:
                if order_epoch != st.epoch:  # one permutation per epoch, not per step (ms at the card's 234K blocks)
                    order, order_epoch = epoch_blocks(len(self.train_blocks), cfg.seed, st.epoch, self.rank, self.world), st.epoch
                m = st.micro_in_epoch
                if cfg.logging.record_data_order:
                    self._record_order(order, m * b.per_device_train_batch_size, (m + accum) * b.per_device_train_batch_size)
                loss, applied = self.train_step(self.step_batches(order, st.epoch, m))
                if self.world > 1:
                    loss = self.acc.reduce(loss, reduction="mean")
                st.step += 1
                st.micro_in_epoch += accum
                st.tokens_seen += self.plan.tokens_per_step
                if applied:
                    self.window += loss
                    st.log_loss_count += 1
                else:
                    st.skipped_steps += 1
                    if self.is_main:
                        tqdm.write(f"step {st.step}: loss or gradients not finite; update skipped ({st.skipped_steps} so far)")
                bar.update(1)

                notes, eval_due = [], st.step % cfg.eval.eval_steps == 0
                e = cfg.eval
                best_due = st.step >= e.best_eval_start_step and (st.step - e.best_eval_start_step) % e.best_eval_steps == 0
                epoch_end = st.micro_in_epoch + accum > self.micro_per_epoch
                if epoch_end:
                    notes.append(f"epoch {st.epoch} end")
                last = st.step >= self.total_steps
                train_loss = None
                if st.step % cfg.logging.logging_steps == 0 or last:
                    if st.log_loss_count:
                        train_loss = float(self.window) / st.log_loss_count
                    self.window.zero_()
                    st.log_loss_count = 0
                    dt = time.perf_counter() - t0
                    tps = (st.tokens_seen - tok0) / dt if dt > 0 else 0.0
                    post = {"loss": f"{train_loss:.4f}" if train_loss is not None else "-",
                            "lr": f"{self.scheduler.get_last_lr()[0]:.2e}", "tok/s": f"{tps:,.0f}"}
                    if peak:
                        post["mfu"] = f"{100 * tps * self.plan.flops_per_token / (peak * self.world):.1f}%"
                    bar.set_postfix(post, refresh=False)
                    t0, tok0 = time.perf_counter(), st.tokens_seen
                eval_loss = None
                if eval_due or best_due or epoch_end or last:
                    eval_loss = self.evaluate()
                    if best_due and math.isfinite(eval_loss) and (st.best_eval_loss is None or eval_loss < st.best_eval_loss):
                        st.best_eval_loss, st.best_step = eval_loss, st.step
                        self._save_hf_dir("best")
                        notes.append("best")
                    if last:
                        final_loss = eval_loss
                        notes.append("final")
                if not applied:
                    notes.append(f"skipped non-finite step ({st.skipped_steps} total)")
                if eval_loss is not None and not math.isfinite(eval_loss):
                    notes.append("eval loss not finite")
                if train_loss is not None or eval_loss is not None or notes:
                    ppl = math.exp(eval_loss) if eval_loss is not None and eval_loss < 700 else None
                    self._record(CurveRow(st.step, self._epoch_float(), train_loss, eval_loss, ppl, "; ".join(notes)))
                    if self.is_main and eval_loss is not None:
                        tqdm.write(_eval_line(st.step, eval_loss, ppl, notes))
                if epoch_end:
                    st.epoch += 1
                    st.micro_in_epoch = 0

                k = cfg.checkpoint
                timed = k.save_every_minutes is not None and time.monotonic() - last_save >= 60 * k.save_every_minutes
                stop, timed = self._flags(timed)
                if last or stop or timed or (k.save_steps and st.step % k.save_steps == 0) or epoch_end:
                    if last:
                        self._save_hf_dir("final")
                        st.finished = True
                    now = time.monotonic()
                    st.train_seconds, clock = st.train_seconds + now - clock, now
                    self._save_checkpoint()
                    last_save = time.monotonic()
                if stop:
                    if self.is_main:
                        tqdm.write(f"stentor: stopped at step {st.step}; continue with: stentor train --resume {self.run_dir}")
                    return self._result(None, interrupted=True)
        finally:
            self.feeder.close()
            bar.close()
            signal.signal(signal.SIGINT, previous)
            if getattr(self, "tb", None) is not None:
                self.tb.close()
        return self._result(final_loss, interrupted=False)

    def _result(self, final_loss: float | None, interrupted: bool) -> TrainResult:
        st = self.state
        return TrainResult(self.run_dir, st.step, st.tokens_seen, st.skipped_steps, final_loss, st.best_eval_loss,
                           st.best_step, interrupted)


def _eval_line(step: int, loss: float, ppl: float | None, notes: list[str]) -> str:
    """What an evaluation prints; a loss that is not finite is said so, with what usually fixes it."""
    if not math.isfinite(loss):
        return (f"step {step}: eval loss {loss} is not finite: the model's outputs overflowed; try bf16 instead of "
                "fp16, a lower learning rate, or the T4 recipe (precision.t4_recipe)")  # fmt: skip
    shown = f"ppl {ppl:.2f}" if ppl is not None else "ppl overflows"
    return f"step {step}: eval_loss {loss:.4f} {shown}" + (f" ({', '.join(notes)})" if notes else "")


def train(config: TrainConfig, run_dir: str | os.PathLike, tensorboard: bool = False) -> TrainResult:
    """Train from scratch into `run_dir` (see `Trainer`)."""
    return Trainer(config, run_dir, tensorboard=tensorboard).fit()


def resume(run_dir: str | os.PathLike, tensorboard: bool = False) -> TrainResult:
    """Continue the run in `run_dir` from its latest checkpoint, exactly."""
    return Trainer.resume(run_dir, tensorboard=tensorboard).fit()

