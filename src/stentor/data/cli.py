"""`stentor data prepare|info`: tokenize a corpus once into train.bin/val.bin, or describe a prepared directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stentor.errors import StentorError

PREPARE_EPILOG = """\
examples:
  stentor data prepare --config configs/tiny-cpu.yaml --out data/tiny      # the recipe's data section
  stentor data prepare --source corpus/ --tokenizer english-8000-strict-nocapcode-v1 --out data/mine \\
      --set data.val_docs=500 --set data.source_token_budget=null
  stentor data prepare --source 'shards/*.parquet' --text-field content --source notes.txt --out data/mix

Sources: a .txt/.jsonl/.parquet/.csv file, a directory (searched recursively) or a glob; `hf:OWNER/NAME`
streams a Hugging Face dataset (needs the network). Several --source flags are mixed document by
document with equal weights (set weights in a recipe's data.sources). Without --config, the card's
defaults apply: 2,000 validation documents and a 240M-token training cap.

Output: OUT/train.bin and OUT/val.bin (flat uint16 token streams, each document as <s> text </s>)
and OUT/meta.json. Running the same command again reuses the result; after a kill it resumes.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="tokenize a corpus once for training (train.bin/val.bin)",
                              description="Prepare training data: clean, split, tokenize once, write token files.")
    sub = p.add_subparsers(dest="data_command", metavar="<prepare|info>", required=True)

    prep = sub.add_parser("prepare", help="tokenize sources into OUT/train.bin, OUT/val.bin and OUT/meta.json",
                          description="Tokenize the sources once (all cores, resumable) into flat token files.",
                          epilog=PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("--config", type=Path, help="a training recipe (YAML): its data, tokenizer, prepared_dir and prepare_workers")
    prep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one recipe value, e.g. --set data.val_docs=100 (repeatable; values are YAML)")
    prep.add_argument("--source", action="append", default=[], metavar="PATH|hf:ID",
                      help="replace the recipe's sources: a file, directory, glob, or hf:OWNER/NAME (repeatable)")
    prep.add_argument("--text-field", default="text", help="field holding the text in jsonl/parquet/csv/hub sources (default: text)")
    prep.add_argument("--txt-mode", choices=("file", "lines", "paragraphs"), default="file",
                      help="what one document is in a .txt file (default: the whole file)")
    prep.add_argument("--tokenizer", help="TokenMonster vocab name or .vocab file, or a Hugging Face tokenizer dir/id")
    prep.add_argument("--out", type=Path, help="output directory (default: the recipe's prepared_dir)")
    prep.add_argument("--workers", type=int, metavar="N", help="tokenizer processes (default: all cores; 0 = in this process)")
    prep.set_defaults(func=run_prepare)

    info = sub.add_parser("info", help="describe a prepared directory (counts, tokenizer, config)",
                          description="Print the meta.json summary of a prepared data directory.")
    info.add_argument("dir", type=Path, help="a directory written by `stentor data prepare`")
    info.add_argument("--block-size", type=int, default=1024, help="block size for the block counts (default: 1024, the card's)")
    info.set_defaults(func=run_info)


def _source_spec(text: str, args: argparse.Namespace):
    from stentor.data import SourceSpec

    if text.startswith("hf:"):
        return SourceSpec(hf_id=text[3:], text_field=args.text_field)
    return SourceSpec(path=text, text_field=args.text_field, txt_mode=args.txt_mode)


def run_prepare(args: argparse.Namespace) -> int:
    from stentor.data import prepare_data
    from stentor.data.sources import check_source
    from stentor.tokenizer.hf import load_tokenizer
    from stentor.train.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.source:
        cfg.data.sources = [_source_spec(s, args) for s in args.source]
    out = args.out or cfg.prepared_dir
    if out is None:
        raise StentorError("give --out DIR (or set prepared_dir in the recipe) for the token files")
    for spec in cfg.data.sources:  # a bad path or field fails here, before the tokenizer loads
        check_source(spec)
    tokenizer = load_tokenizer(args.tokenizer or cfg.tokenizer)
    workers = args.workers if args.workers is not None else cfg.prepare_workers
    data = prepare_data(cfg.data, tokenizer, out, num_workers=workers)
    _print_summary(data, block_size=1024)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from stentor.data import PreparedData

    _print_summary(PreparedData.load(args.dir), args.block_size)
    return 0


def _print_summary(data, block_size: int) -> None:
    m = data.meta
    print(f"{data.out_dir}: {m['dtype']} tokens of {m['tokenizer_name']} (vocab {m['vocab_size']}, bos {m['bos_id']}, eos {m['eos_id']})")
    for split in ("train", "val"):
        print(f"  {split}: {m[f'{split}_tokens']:,} tokens, {m[f'{split}_docs']:,} documents, "
              f"{data.num_blocks(block_size, split):,} blocks of {block_size}")
    budget = m["config"]["source_token_budget"]
    print(f"  training cap: {'none' if budget is None else f'{budget:,} tokens'}"
          f"{' (reached)' if m['budget_reached'] else ''}; cleaning {'on' if m['config']['clean'] else 'off'}")
    print("  sources: " + json.dumps([{k: v for k, v in s.items() if v is not None} for s in m["config"]["sources"]]))
