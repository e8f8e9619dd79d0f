"""`stentor presets`, `stentor params`, `stentor init`."""

from __future__ import annotations

import argparse
import json

from stentor.model.presets import PRESETS, get_preset


def _presets(args: argparse.Namespace) -> int:
    from stentor.model.params import estimate_llama_params

    for name, cfg in PRESETS.items():
        total = estimate_llama_params(cfg).total
        print(f"{name:<20} {total:>12,} params  {cfg.description}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from stentor.model.params import verified_breakdown

    cfg = get_preset(args.preset)
    breakdown = verified_breakdown(cfg)
    if args.json:
        print(json.dumps({"preset": cfg.name, **breakdown.to_dict(), "config": cfg.to_dict()}, indent=2))
    else:
        print(breakdown.table(f"{cfg.name}: parameters (card formula, checked against the built model)", cfg.num_hidden_layers))
    return 0


def _init(args: argparse.Namespace) -> int:
    from stentor.fileio import ensure_writable_dir
    from stentor.model.build import build_model, save_model_dir

    cfg = get_preset(args.preset)
    ensure_writable_dir(args.out.parent if args.out.parent != args.out else args.out)
    tokenizer = None
    if args.tokenizer:
        from stentor.errors import StentorError
        from stentor.tokenizer.hf import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        if len(tokenizer) > cfg.vocab_size:
            raise StentorError(
                f"the tokenizer has {len(tokenizer):,} tokens but {cfg.name} embeds only {cfg.vocab_size:,}; "
                "pick a preset with a larger vocabulary or a smaller tokenizer"
            )
    model = build_model(cfg, seed=args.seed)
    save_model_dir(model, cfg, args.out, tokenizer=tokenizer)
    what = " with its tokenizer" if tokenizer is not None else " (no tokenizer: pass --tokenizer to generate or evaluate it)"
    print(f"wrote a randomly initialized {cfg.name} ({sum(p.numel() for p in model.parameters()):,} params) to {args.out}{what}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    p = sub.add_parser("presets", help="list the model presets", description="List the model presets and their sizes.")
    p.set_defaults(func=_presets)

    p = sub.add_parser(
        "params",
        help="parameter count and breakdown of a preset",
        description=(
            "Count a preset's parameters with the card's formula, split into embedding, attention, MLP and norms,\n"
            "and check the total against the instantiated model (a mismatch is an error).\n"
            "Example: stentor params --preset stentor2-12m --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="stentor2-12m", help="preset name (see `stentor presets`; default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_params)

    p = sub.add_parser(
        "convert",
        help="rewrite a released checkpoint (TokenMonster adapter) into stentor's self-contained layout",
        description=(
            "A checkpoint whose tokenizer is a remote-code adapter around the `tokenmonster` package (the released\n"
            "StentorLabs models) becomes a directory with the same weights and special-token ids and stentor's own\n"
            "tokenizer module and vocabulary: it then loads with plain transformers (trust_remote_code=True) with\n"
            "neither stentor nor tokenmonster installed. stentor itself loads the original directory as it is.\n"
            "Example: stentor convert ~/Stentor2-12M -o stentor2-12m"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="the checkpoint directory")
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory (replaced atomically)")
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "init",
        help="write a randomly initialized model as a Hugging Face directory",
        description=(
            "Build a preset with the card's initialization (Linear/Embedding N(0, 0.02), RMSNorm 1) and save it as a\n"
            "standard HF directory: config.json, model.safetensors, generation_config.json (card sampling defaults).\n"
            "Example: stentor init --preset stentor2-12m --out runs/init-12m"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="stentor2-12m", help="preset name (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    p.add_argument("--seed", type=int, default=42, help="initialization seed (default: %(default)s)")
    p.add_argument(
        "--tokenizer",
        metavar="VOCAB|DIR",
        help="also save a tokenizer: a TokenMonster .vocab or official name, or a tokenizer directory",
    )
    p.set_defaults(func=_init)


def _convert(args) -> int:
    from stentor.tokenizer.foreign import convert_checkpoint

    out = convert_checkpoint(args.source, args.out)
    print(f"wrote {out}: the weights of {args.source} with stentor's tokenizer (same special-token ids)")
    return 0
