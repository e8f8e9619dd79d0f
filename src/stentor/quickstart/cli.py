"""`stentor quickstart`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _quickstart(args: argparse.Namespace) -> int:
    from stentor.quickstart.run import QuickstartConfig, run_quickstart

    cfg = QuickstartConfig(
        out=args.out,
        data=args.data or [],
        text_field=args.text_field,
        preset=args.preset,
        vocab_size=args.vocab_size,
        max_steps=args.steps,
        blimp=args.blimp,
        seed=args.seed,
    )
    report = run_quickstart(cfg)
    print(report.read_text(encoding="utf-8"))
    print(f"report written to {report}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline on a small model, offline, in minutes",
        description=(
            "Run the whole Stentor2 pipeline on a small preset with no network: corpus -> TokenMonster vocabulary ->\n"
            "tokenized data -> training (the card's recipe, scaled down) -> held-out perplexity and bits per byte ->\n"
            "sample generations, then write OUT/report.md. Without --data the corpus is the docstrings of the\n"
            "Python standard library, which every machine with Python has.\n\n"
            "Examples:\n"
            "  stentor quickstart\n"
            "  stentor quickstart --data 'my_texts/*.txt' --steps 1000 --out runs/mine\n"
            "  stentor quickstart --blimp path/to/blimp      # a local copy of BLiMP (<UID>.jsonl files)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("quickstart"), help="output directory (default: %(default)s)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="your text files or globs (txt/jsonl/parquet/csv)")
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl/parquet/csv (default: %(default)s)")
    p.add_argument("--preset", default="stentor2-mini", help="model preset (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=4000, help="TokenMonster vocabulary size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps (default: %(default)s)")
    p.add_argument("--blimp", metavar="DIR", help="also run BLiMP (100 pairs per paradigm) from this jsonl directory")
    p.add_argument("--seed", type=int, default=42, help="seed for every stage (default: %(default)s)")
    p.set_defaults(func=_quickstart)
