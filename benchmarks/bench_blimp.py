"""BLiMP scoring speed, in one run on one model: stentor's scorer (fp32, and bf16 with the fp32
re-check) against lm-evaluation-harness's `hf` model and a naive one-sentence-at-a-time loop.

lm-eval reads the same local BLiMP files through task YAMLs written to a temp dir (offline), on
`--paradigms` paradigms; stentor scores those paradigms too (and, with `--full`, all 67). Prints
seconds, pairs/s and the ratios, and checks that bf16 + re-check gives fp32's per-paradigm counts.

    python benchmarks/bench_blimp.py --model runs/12m/final               # a trained model dir
    python benchmarks/bench_blimp.py --full                                # + all 67,000 pairs (target <= 90 s)
    python benchmarks/bench_blimp.py --preset stentor2-12m                 # random init, speed only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from stentor.eval.blimp import BLIMP_PARADIGMS, evaluate_blimp, load_blimp

SHARED = Path(os.environ.get("STENTOR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TARGET_S = 90


def naive_pairs_per_s(model, tokenizer, pairs) -> float:
    """The obvious loop: one forward per sentence, full log_softmax, gather, sum."""
    t = time.perf_counter()
    with torch.inference_mode():
        for pair in pairs:
            for s in pair:
                ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(s, add_special_tokens=False).input_ids]])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                logp[:-1].gather(-1, ids[0, 1:, None]).sum().item()
    return len(pairs) / (time.perf_counter() - t)


def lm_eval_tasks(data: Path, uids: list[str], root: Path) -> list[str]:
    """lm-eval's blimp task config, pointed at the local files (it reads nyu-mll/blimp from the hub)."""
    for uid in uids:
        (root / f"local_blimp_{uid}.yaml").write_text(
            f"task: local_blimp_{uid}\ndataset_path: json\ndataset_kwargs:\n  data_files: {{train: {data / (uid + '.jsonl')}}}\n"
            "output_type: multiple_choice\ntest_split: train\ndoc_to_text: ''\ndoc_to_target: 0\n"
            "doc_to_choice: '{{[sentence_good, sentence_bad]}}'\nnum_fewshot: 0\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        )
    return [f"local_blimp_{u}" for u in uids]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model dir (default: a random-init --preset with --vocab)")
    ap.add_argument("--preset", default="stentor2-12m")
    ap.add_argument("--vocab", default=str(SHARED / "tokenmonster" / "vocabs" / "english-8000-strict-cap1-oracle.vocab"))
    ap.add_argument("--data", default=str(SHARED / "data" / "blimp"), help="dir with the 67 BLiMP .jsonl files")
    ap.add_argument("--paradigms", type=int, default=6, help="paradigms for the lm-eval comparison")
    ap.add_argument("--naive", type=int, default=150, help="pairs for the naive loop")
    ap.add_argument("--full", action="store_true", help="also score all 67 paradigms (bf16 + re-check, then fp32)")
    args = ap.parse_args()

    from stentor.eval import load_model_and_tokenizer
    from stentor.eval.scoring import bf16_supported

    if args.model:
        model, tokenizer = load_model_and_tokenizer(args.model)
    else:
        from stentor.model import get_preset
        from stentor.model.build import build_model
        from stentor.tokenizer.hf import tokenizer_from_vocab

        model, tokenizer = build_model(get_preset(args.preset), seed=0).eval(), tokenizer_from_vocab(args.vocab)
    uids = list(BLIMP_PARADIGMS[:: max(1, len(BLIMP_PARADIGMS) // args.paradigms)][: args.paradigms])
    subset = load_blimp(args.data, tasks=uids)
    n_pairs = sum(len(p.pairs) for p in subset)
    print(f"model {args.model or args.preset} ({sum(p.numel() for p in model.parameters()):,} params); torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, native bf16: {bf16_supported()}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"lm-eval comparison on {len(uids)} paradigms, {n_pairs:,} pairs: {', '.join(uids)}")

    rows = []
    fp32, t_fp32 = timed(lambda: evaluate_blimp(model, tokenizer, subset, progress=False, precision="fp32"))
    rows.append(("stentor eval blimp --precision fp32", t_fp32))
    fast, t_fast = timed(lambda: evaluate_blimp(model, tokenizer, subset, progress=False, precision="auto"))
    rows.append((f"stentor eval blimp --precision auto ({fast.scoring['precision']})", t_fast))
    same = [p.correct for p in fast.paradigms] == [p.correct for p in fp32.paradigms]
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("lm-evaluation-harness is not installed: pip install 'stentor[lm-eval]' to compare with it")
    else:
        from lm_eval.models.huggingface import HFLM

        from stentor.eval.harness import StentorLM, evaluate_tasks

        with tempfile.TemporaryDirectory() as root:
            tasks = lm_eval_tasks(Path(args.data), uids, Path(root))
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
            hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=64)
            theirs, t_theirs = timed(lambda: evaluate_tasks(hf, tasks, include_path=root)["results"])
            ours_lm = StentorLM(model, tokenizer, precision="auto")
            ours, t_ours = timed(lambda: evaluate_tasks(ours_lm, tasks, include_path=root)["results"])
        rows.insert(0, ("lm-evaluation-harness, hf model", t_theirs))
        rows.append((f"lm-evaluation-harness, stentor model ({ours_lm.precision})", t_ours))
        acc = [(theirs[t]["acc,none"], ours[t]["acc,none"]) for t in tasks]
        print("lm-eval hf vs stentor model accuracies: " + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in acc))
    naive = naive_pairs_per_s(model, tokenizer, [p for par in subset for p in par.pairs][: args.naive])
    rows.append(("naive loop (projected)", n_pairs / naive))
    base = rows[0][1]
    print(f"\n{'scorer':<52} {'seconds':>8} {'pairs/s':>8} {'speed-up':>9}")
    for name, seconds in rows:
        print(f"{name:<52} {seconds:8.1f} {n_pairs / seconds:8.0f} {base / seconds:8.1f}x")
    print(f"bf16 + re-check per-paradigm counts equal fp32's: {same}; {fast.scoring}")

    if args.full:
        every = load_blimp(args.data)
        full_fast, t1 = timed(lambda: evaluate_blimp(model, tokenizer, every, progress=False, precision="auto"))
        full_exact, t2 = timed(lambda: evaluate_blimp(model, tokenizer, every, progress=False, precision="fp32"))
        equal = [p.correct for p in full_fast.paradigms] == [p.correct for p in full_exact.paradigms]
        verdict = "meets" if t1 <= TARGET_S else "misses"
        print(f"\nfull BLiMP (67 paradigms, 67,000 pairs): auto {t1:.1f} s ({verdict} the {TARGET_S} s target), "
              f"fp32 {t2:.1f} s; per-paradigm counts equal: {equal}; {full_fast.scoring}")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
