"""`stentor card` and `stentor push`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _card(args: argparse.Namespace) -> int:
    from stentor.publish.card import write_card

    path = write_card(args.run, name=args.name, base_model=args.base_model, license=args.license,
                      samples=not args.no_samples)  # fmt: skip
    print(f"wrote {path}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from stentor.publish.push import push, upload_plan

    plan = upload_plan(args.dir)
    if args.dry_run:
        width = max(len(u.path) for u in plan)
        for u in plan:
            print(f"{u.path:<{width}}  {u.size:>12,} bytes")
        print(f"{len(plan)} files, {sum(u.size for u in plan):,} bytes would go to {args.repo}"
              f"{f' (branch {args.revision})' if args.revision else ''}{', private' if args.private else ''}")
        return 0
    print(push(args.dir, args.repo, private=args.private, revision=args.revision))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "card",
        help="write a run's model card (RUN/final/README.md) from the files the run wrote",
        description="Write RUN/final/README.md: the Hub's YAML header (license, tags, datasets, widget prompts, "
        "base_model, model-index), architecture, hyperparameters, training curves, evaluation, samples, limitations, "
        "environmental impact and a citation. Numbers come from the run's files; run `stentor eval all --model "
        "RUN/final ...` first to include perplexity and BLiMP.",
        epilog="example: stentor eval all --model runs/chat/final --ppl-data quickstart/held_out.jsonl && "
        "stentor card runs/chat",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="the run directory (the --out of stentor train/finetune)")
    p.add_argument("--name", help="the model's name (default: the run directory's name)")
    p.add_argument("--base-model", help="hub id of the model this one was fine-tuned from (default: --from, if a hub id)")
    p.add_argument("--license", default="apache-2.0", help="license of the weights (default: %(default)s, the card's)")
    p.add_argument("--no-samples", action="store_true", help="do not generate the four sample responses")
    p.set_defaults(func=_card)

    p = sub.add_parser(
        "push",
        help="upload a model directory to the Hugging Face Hub",
        description="Upload DIR (a run's final/ with its model card) to the Hub with huggingface_hub. It must hold "
        "README.md, safetensors weights, config.json and the tokenizer; pickles and temporary files never go up. "
        "The token comes from HF_TOKEN or `hf auth login`.",
        epilog="examples:\n  stentor push runs/chat/final --repo me/stentor-chat --dry-run\n"
        "  stentor push runs/chat/final --repo me/stentor-chat --private --revision v1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="the model directory, e.g. runs/chat/final")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="the Hub repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="list the files and sizes that would be uploaded, and stop")
    p.set_defaults(func=_push)
