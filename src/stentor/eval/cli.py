"""`stentor eval ppl|blimp|all`: perplexity/bits per byte, BLiMP, and the model card's results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stentor.errors import StentorError
from stentor.model.loading import DTYPES

BLIMP_HELP = "local dir with the 67 BLiMP <UID>.jsonl files, or the hub dataset id (default: %(default)s)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face causal LM: a local dir (save_pretrained) or a hub id")
    p.add_argument("--tokenizer", help="tokenizer dir, .vocab file or hub id (default: the model dir)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, help="the weights' dtype: float32 (default, whatever the checkpoint was "
                   "saved in), float16/bfloat16 (keep half: what a GPU then computes in), auto (as saved)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="matmul precision: bf16 runs the layers on the CPU's bf16 units (AMX or AVX512-BF16) "
                        "with an fp32 residual stream and LM head; BLiMP re-scores every pair near a tie in "
                        "fp32, so its accuracies equal fp32's; perplexity agrees to ~4 significant digits. "
                        "auto = bf16 on CPUs with native bf16 for Llama-shaped models, else fp32 "
                        "(default: %(default)s)")  # fmt: skip


def _add_ppl_data_args(p: argparse.ArgumentParser, flag: str, required: bool) -> None:
    p.add_argument(flag, nargs="+" if required else "*", required=required, default=[], metavar="FILE|DIR|GLOB|HF_ID",
                   help="text files (each one document, read byte-exact), dirs, globs, or one hub dataset id")  # fmt: skip
    p.add_argument("--text-field", "--jsonl-field", dest="text_field",
                   help="read files as JSON Lines, one document per line from this field (hub datasets: default text)")  # fmt: skip
    p.add_argument("--hf-config", help="hub dataset config, e.g. wikitext-2-raw-v1")
    p.add_argument("--hf-split", default="test", help="hub dataset split (default: %(default)s)")
    p.add_argument("--block-size", type=_positive_int, help="tokens per window (default: the model's context)")
    p.add_argument("--stride", type=_positive_int,
                   help="sliding-window step; each token is scored once with up to block-size context "
                        "(default: block size = non-overlapping blocks, like training's eval)")  # fmt: skip
    p.add_argument("--max-tokens", type=_positive_int, help="evaluate only the first N tokens of the stream")


def _add_blimp_args(p: argparse.ArgumentParser, flag: str) -> None:
    from stentor.eval.blimp import BLIMP_HUB_ID

    p.add_argument(flag, default=BLIMP_HUB_ID, metavar="DIR|HF_ID", help=BLIMP_HELP)
    p.add_argument("--tasks", nargs="+", metavar="UID", help="evaluate only these paradigms (default: all 67)")
    p.add_argument("--limit", type=_positive_int, help="only the first N pairs of each paradigm (quick checks)")


def register(subparsers) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="perplexity, bits per byte, BLiMP; write the model card's results",
        description=(
            "Evaluate any Hugging Face causal LM with its tokenizer.\n"
            "  ppl    perplexity, bits/token and bits per UTF-8 byte on text (bpb compares across tokenizers)\n"
            "  blimp  BLiMP minimal pairs, lm-evaluation-harness scoring, ties count as wrong\n"
            "  all    both, into one report, and the model card's model-index + results section\n"
            "  compare  two evaluated models: BLiMP deltas with McNemar tests, perplexity deltas\n"
            "  lm-eval  any lm-evaluation-harness task, scored by stentor's scorer (pip install 'stentor[lm-eval]')\n"
            "See docs/evaluation.md for exactly what is counted."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ev.add_subparsers(dest="eval_command", metavar="<ppl|blimp|all|compare|lm-eval>", required=True)

    ppl = sub.add_parser(
        "ppl",
        help="perplexity and bits per byte",
        description=(
            "Encode each document as BOS text EOS (as training does), concatenate, and score the stream in\n"
            "non-overlapping blocks (default) or a sliding window (--stride). Reports loss (nats/token),\n"
            "perplexity, bits/token, bits per UTF-8 byte, chars/token.\n\n"
            "example: stentor eval ppl --model out/run1 --data wiki.test.raw --stride 512 --json ppl.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(ppl)
    _add_ppl_data_args(ppl, "--data", required=True)
    ppl.add_argument("--batch-size", type=_positive_int, default=8, help="windows per forward pass (default: %(default)s)")
    ppl.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    ppl.set_defaults(func=run_ppl)

    blimp = sub.add_parser(
        "blimp",
        help="BLiMP accuracy (67 paradigms)",
        description=(
            "Score each sentence as the sum of its token log-probs given BOS (no length normalization);\n"
            "a pair is correct only if the good sentence scores strictly higher. Overall = mean of paradigm\n"
            "accuracies; also per phenomenon, per field, and the card's strong/moderate/weak buckets.\n\n"
            "example: stentor eval blimp --model out/run1 --data blimp/data --out out/run1/blimp"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(blimp)
    _add_blimp_args(blimp, "--data")
    blimp.add_argument("--batch-size", type=_positive_int, default=128, help="pairs per forward pass (default: %(default)s)")
    blimp.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    blimp.add_argument("--out", metavar="DIR", help="write blimp.json, blimp.md and blimp.png into DIR")
    blimp.set_defaults(func=run_blimp)

    every = sub.add_parser(
        "all",
        help="perplexity + BLiMP into one report and the model card",
        description=(
            "Run perplexity (if --ppl-data is given) and BLiMP, write eval_report.json, eval_report.md and\n"
            "blimp.png into the model dir (or --out), and update the model dir's README.md: model-index\n"
            "metrics in the YAML front matter and a marked results section; the rest is kept.\n\n"
            "example: stentor eval all --model out/run1 --ppl-data wiki.test.raw --blimp-data blimp/data"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(every)
    _add_ppl_data_args(every, "--ppl-data", required=False)
    _add_blimp_args(every, "--blimp-data")
    every.add_argument("--skip-blimp", action="store_true", help="perplexity only")
    every.add_argument("--ppl-batch-size", type=_positive_int, default=8, help="windows per forward (default: %(default)s)")
    every.add_argument("--blimp-batch-size", type=_positive_int, default=128, help="pairs per forward (default: %(default)s)")
    every.add_argument("--out", metavar="DIR", help="report directory (default: the model dir)")
    every.add_argument("--no-card", action="store_true", help="do not touch the model dir's README.md")
    every.set_defaults(func=run_all)

    cmp = sub.add_parser(
        "compare",
        help="BLiMP per paradigm with McNemar tests, perplexity and bits/byte deltas, between two evaluated models",
        description=(
            "Compare two eval reports (a run dir, a model dir, or an eval_report.json / blimp.json): BLiMP pair by\n"
            "pair with an exact McNemar test per paradigm, perplexity and bits per byte on shared datasets.\n\n"
            "example: stentor eval compare quickstart/run runs/chat --out runs/chat/compare"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("a", metavar="A", help="the baseline (e.g. the base model's run)")
    cmp.add_argument("b", metavar="B", help="the model compared with it (e.g. the fine-tune)")
    cmp.add_argument("--out", metavar="DIR", help="also write compare.md, compare.json and compare.png into DIR")
    cmp.set_defaults(func=run_compare)

    harness = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness tasks on stentor's scorer",
        description=(
            "Run lm-evaluation-harness tasks with an lm-eval model whose log-likelihoods come from stentor's\n"
            "scorer (requests sharing a context are scored with it once; bf16 on CPUs with AMX or\n"
            "AVX512-BF16) and whose generations come from the stentor engine. Tokenization and windows are\n"
            "lm-eval's hf model's, so the numbers are the same as `lm_eval --model hf` (in fp32, the default\n"
            "here; --precision bf16 is faster, without a re-check). Tasks load their data with `datasets`: offline,\n"
            "point --include-path at task YAMLs that read local files (dataset_path: json).\n\n"
            "example: stentor eval lm-eval --model out/run1 --tasks blimp_anaphor_gender_agreement --limit 200"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(harness)
    harness.add_argument("--tasks", nargs="+", required=True, metavar="TASK", help="lm-eval task or group names")
    harness.add_argument("--include-path", metavar="DIR", help="extra directory of lm-eval task YAMLs")
    harness.add_argument("--limit", type=float, help="documents per task (a fraction if below 1)")
    harness.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    harness.add_argument("--batch-size", type=_positive_int, default=64, help="rows per forward (default: %(default)s)")
    harness.add_argument("--json", metavar="OUT", help="also write lm-eval's results dict as JSON")
    harness.set_defaults(func=run_lm_eval, precision="fp32")  # lm-eval's own numbers unless bf16 is asked for


def _read_corpus(args, sources):
    from stentor.eval.perplexity import read_corpus

    return read_corpus(sources, args.text_field, args.hf_config, args.hf_split)


def _load(args):
    # Scoring alternates torch's matmuls with the compiled runtime's stages; OpenMP threads that spin
    # between matmuls (libgomp's default) take the cores those stages run on. Passive threads measured
    # ~12% faster here. It must be set before torch loads OpenMP, and a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from stentor.eval.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(args.model, args.tokenizer, args.device, getattr(args, "dtype", None))


def _ppl(args, model, tokenizer, corpus, batch_size):
    from stentor.eval.perplexity import evaluate_perplexity

    return evaluate_perplexity(model, tokenizer, corpus, args.block_size, args.stride, args.max_tokens, batch_size,
                               progress=not args.no_progress, precision=args.precision)  # fmt: skip


def run_ppl(args) -> int:
    from stentor.eval.report import perplexity_markdown, write_json

    corpus = _read_corpus(args, args.data)
    model, tokenizer = _load(args)
    result = _ppl(args, model, tokenizer, corpus, args.batch_size)
    print(perplexity_markdown([result]))
    if args.json:
        write_json(args.json, {"model": args.model, **result.to_dict()})
    return 0


def run_blimp(args) -> int:
    from stentor.eval.blimp import evaluate_blimp, load_blimp
    from stentor.eval.report import blimp_chart, blimp_markdown, write_json

    paradigms = load_blimp(args.data, args.tasks, args.limit)
    model, tokenizer = _load(args)
    result = evaluate_blimp(model, tokenizer, paradigms, args.batch_size, not args.no_progress, data=args.data,
                            precision=args.precision)  # fmt: skip
    markdown = blimp_markdown(result)
    print(markdown)
    payload = {"model": args.model, **result.to_dict()}
    if args.json:
        write_json(args.json, payload)
    if args.out:
        from stentor.fileio import atomic_write_text

        out = Path(args.out)
        write_json(out / "blimp.json", payload)
        atomic_write_text(out / "blimp.md", markdown + "\n")
        blimp_chart(result, out / "blimp.png")
        print(f"wrote {out / 'blimp.json'}, {out / 'blimp.md'}, {out / 'blimp.png'}", file=sys.stderr)
    return 0


def run_all(args) -> int:
    from stentor.eval.blimp import evaluate_blimp, load_blimp
    from stentor.eval.report import report_markdown, write_eval_report
    from stentor.fileio import ensure_writable_dir

    local = Path(args.model).is_dir()
    if not args.out and not local:
        raise StentorError(f"{args.model} is not a local dir; pass --out DIR for the report")
    if args.skip_blimp and not args.ppl_data:
        raise StentorError("nothing to evaluate: --skip-blimp without --ppl-data")
    out = ensure_writable_dir(args.out or args.model)
    # Read every input before loading the model, so a typo fails in a second, not after an eval.
    corpus = _read_corpus(args, args.ppl_data) if args.ppl_data else None
    paradigms = None if args.skip_blimp else load_blimp(args.blimp_data, args.tasks, args.limit)
    model, tokenizer = _load(args)
    ppl = [_ppl(args, model, tokenizer, corpus, args.ppl_batch_size)] if corpus else []
    blimp = None
    if paradigms:
        blimp = evaluate_blimp(model, tokenizer, paradigms, args.blimp_batch_size, not args.no_progress, args.blimp_data,
                               precision=args.precision)  # fmt: skip
    card = Path(args.model) / "README.md" if local and not args.no_card else None
    written = write_eval_report(out, args.model, ppl, blimp, card=card)
    print(report_markdown(args.model, ppl, blimp))
    print(json.dumps({k: str(v) for k, v in written.items()}), file=sys.stderr)
    return 0


def run_lm_eval(args) -> int:
    from stentor.eval.report import write_json

    try:
        from lm_eval.utils import make_table

        from stentor.eval.harness import StentorLM, evaluate_tasks
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "lm_eval":
            raise
        raise StentorError("stentor eval lm-eval needs lm-evaluation-harness: pip install 'stentor[lm-eval]'") from None
    if args.limit is not None and args.limit <= 0:
        raise StentorError(f"--limit must be positive, got {args.limit:g}")
    model, tokenizer = _load(args)
    lm = StentorLM(model, tokenizer, precision=args.precision, batch_size=args.batch_size)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = evaluate_tasks(lm, args.tasks, limit=limit, num_fewshot=args.num_fewshot, include_path=args.include_path)
    print(make_table(results))
    if args.json:
        kept = {k: results[k] for k in ("results", "versions", "n-shot", "configs") if k in results}
        write_json(args.json, {"model": args.model, "precision": lm.precision, **json.loads(json.dumps(kept, default=str))})
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from stentor.eval.compare import compare

    print(compare(args.a, args.b, args.out), end="")
    return 0
