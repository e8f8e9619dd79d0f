"""`stentor train`: run a training recipe (YAML), resume a run, or print its plan."""

from __future__ import annotations

import argparse
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML recipe (HF Accelerate: CPU, one GPU, many GPUs)",
        description="Train a Stentor2-class model from a YAML recipe; see configs/ and docs/training.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="the recipe (YAML); keys not given take the card's values")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set batch.block_size=256 (repeatable; values are YAML)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan (parameters, tokens, steps, schedule) and exit")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="processes to plan for with --dry-run (default: the launcher's WORLD_SIZE, else batch.world_size)")
    p.add_argument("--tensorboard", action="store_true", help="also log to <run>/tensorboard (needs the tensorboard package)")
    p.set_defaults(func=run)


def _resolve(args: argparse.Namespace):
    from stentor.train.config import load_config, load_run_config

    if args.resume:
        if args.config or args.overrides or args.out:
            raise StentorError("--resume continues a run with its saved config; drop --config/--set/--out")
        return load_run_config(args.resume)
    if args.config is None:
        raise StentorError("give --config FILE (see configs/) or --resume RUN_DIR")
    return load_config(args.config, args.overrides)


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
        print(f"trained {result.steps:,} steps ({result.tokens:,} tokens, {result.skipped_steps} skipped) in {result.run_dir}")
        if result.final_eval_loss is not None:
            print(f"final eval loss {result.final_eval_loss:.4f}; best {result.best_eval_loss} at step {result.best_step}")
    return 130 if result.interrupted else 0
