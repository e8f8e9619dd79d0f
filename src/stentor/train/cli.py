"""`stentor train` and `stentor finetune`: run a training recipe (YAML), resume a run, or print its plan."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from stentor.errors import StentorError

EPILOG = """\
examples:
  stentor train --config configs/stentor2-12m.yaml --dry-run          # the card's plan, no training
  stentor train --config configs/tiny-cpu.yaml --out runs/tiny         # a small offline run on CPU
  stentor train --config configs/tiny-cpu.yaml --set optim.learning_rate=1e-3 --set schedule.max_train_steps=200
  stentor train --resume runs/tiny                                     # continue exactly after a kill or Ctrl-C
  accelerate launch --num_processes 2 -m stentor train --config configs/stentor2-12m.yaml --out runs/card

Outputs in the run directory: config.yaml (resolved), training_curves.csv/.png, best/ and final/
(Hugging Face model directories with the tokenizer), checkpoints/step-N/ (resumable), data/ (tokens).
Ctrl-C saves a resumable checkpoint after the current step; a second Ctrl-C aborts.
"""

FINETUNE_EPILOG = """\
examples:
  stentor finetune --from quickstart/run/final --config configs/finetune-chat.yaml --out runs/chat   # SFT
  stentor finetune --from quickstart/run/final --config configs/finetune-text.yaml --out runs/ref    # more text
  stentor finetune --from StentorLabs/Stentor2-12M --config my-chat.yaml --set schedule.max_train_steps=500
  stentor finetune --resume runs/chat                                  # continue exactly after a kill or Ctrl-C

Chat data is JSONL, one conversation per line: {"messages": [{"role": "user", "content": "..."},
{"role": "assistant", "content": "..."}]} (roles system, user, assistant). It is rendered with the
model's chat template, as `stentor generate --chat` and `stentor serve` render a prompt; only the
assistant turns and the EOS after each are learned. The run's final/ is a plain model directory:
generate, serve, eval, quantize and export take it as they take any other.
"""


def _run_arguments(p: argparse.ArgumentParser, recipe: str, example: str) -> None:
    """What `train` and `finetune` share: a recipe, a run directory, resume, overrides, the plan."""
    p.add_argument("--config", type=Path, help=recipe)
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config value, e.g. --set {example} (repeatable; values are YAML)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan (parameters, tokens, steps, schedule) and exit")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="processes to plan for with --dry-run (default: the launcher's WORLD_SIZE, else batch.world_size)")
    p.add_argument("--tensorboard", action="store_true", help="also log to <run>/tensorboard (needs the tensorboard package)")
    p.set_defaults(func=run, source=None)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML recipe (HF Accelerate: CPU, one GPU, many GPUs)",
        description="Train a Stentor2-class model from a YAML recipe; see configs/ and docs/training.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _run_arguments(p, "the recipe (YAML); keys not given take the card's values", "batch.block_size=256")

    f = subparsers.add_parser(
        "finetune",
        help="continue training a trained model: more text, or chat conversations (SFT)",
        description="Start from a trained model (its weights, architecture and tokenizer) and train it on a recipe's "
        "data with a fresh optimizer and the recipe's schedule: continued pretraining on text (task: pretrain) or "
        "supervised fine-tuning on conversations (task: chat, loss on the assistant turns only). See docs/training.md.",
        epilog=FINETUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--from", dest="source", metavar="DIR_OR_HUB_ID",
                   help="the model to start from: a run's final/ or best/, any stentor model directory, or a hub id")
    _run_arguments(f, "the recipe (YAML): data, task, schedule, lora; see configs/finetune-*.yaml", "optim.learning_rate=1e-4")


def _resolve(args: argparse.Namespace):
    from stentor.train.config import load_config, load_run_config

    if args.resume:
        if args.config or args.overrides or args.out or args.source:
            raise StentorError("--resume continues a run with its saved config; drop --from/--config/--set/--out")
        return load_run_config(args.resume)
    if args.config is None:
        raise StentorError("give --config FILE (see configs/) or --resume RUN_DIR")
    if args.command == "finetune" and not args.source:
        raise StentorError("give --from DIR_OR_HUB_ID: the model to fine-tune (e.g. quickstart/run/final)")
    cfg = load_config(args.config, args.overrides)
    return dataclasses.replace(cfg, init_from=str(args.source)) if args.source else cfg


def run(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    if args.dry_run:
        from stentor.train.plan import make_plan

        world = args.num_processes or int(os.environ.get("WORLD_SIZE", 0)) or None
        plan = make_plan(cfg, world)
        plan.check_budgets()
        print(plan.describe())
        return 0

    from stentor.train.trainer import Trainer

    run_dir = args.resume or args.out or Path("runs") / args.config.stem
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), tensorboard=args.tensorboard)
    result = trainer.fit()
    if trainer.is_main and not result.interrupted:
        print(f"{'fine-tuned' if trainer.cfg.init_from else 'trained'} {result.steps:,} steps ({result.tokens:,} tokens, {result.skipped_steps} skipped) in {result.run_dir}")
        if result.final_eval_loss is not None:
            print(f"final eval loss {result.final_eval_loss:.4f}; best {result.best_eval_loss} at step {result.best_step}")
    return 130 if result.interrupted else 0
