"""`stentor export web` in headless Chromium vs `stentor generate` on the same machine, in one run.

For fp32 and int8 exports of one model: decode tokens/s in the page (window.stentor.generate, the
card's sampling, a fixed number of new tokens, no EOS stop; new tokens over prefill + decode wall
time, as bench_generate.py counts), the time from page load to the first token (a fresh browser
context each round: nothing cached), and the folder's size. The baseline is stentor's compiled
runtime with the same settings and threads. Rounds are interleaved because the machine is shared;
prints best-of and the spread.

    python benchmarks/bench_web.py --model runs/12m/final --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

import stentor  # noqa: E402
from stentor.export.web import export_web, preview_server  # noqa: E402
from stentor.infer import SamplingParams  # noqa: E402

PROMPT = "Once upon a time"


def page_round(browser, url: str, tokens: int, threads: int) -> dict:
    context = browser.new_context()
    context.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort())
    page = context.new_page()
    start = time.perf_counter()
    page.goto(f"{url}/?threads={threads}")
    page.evaluate(f"window.stentor.ready.then(() => window.stentor.generate({json.dumps(PROMPT)}, {{max_new_tokens: 1}}))")
    first = time.perf_counter() - start
    run = f"""async () => {{ const t = performance.now();
        const r = await window.stentor.generate({json.dumps(PROMPT)}, {{max_new_tokens: {tokens}, stop_at_eos: false, seed: 0}});
        return [r.ids.length, performance.now() - t]; }}"""
    page.evaluate(run)  # warm: the first decode also compiles the graph's kernels
    count, ms = page.evaluate(run)
    info = page.evaluate("window.stentor.ready")
    context.close()
    assert count == tokens, count
    return {"tok_s": tokens / (ms / 1000), "first_token_s": first, "backend": info["backend"], "threads": info["threads"]}


def native_round(lm, ids: list[int], tokens: int) -> float:
    params = SamplingParams(max_new_tokens=tokens, stop_at_eos=False, seed=0)
    start = time.perf_counter()
    count = sum(1 for _ in lm.generate_ids([ids], params))
    assert count == tokens, count
    return tokens / (time.perf_counter() - start)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="float model directory with a Stentor tokenizer")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    lm = stentor.load(args.model, threads=args.threads)
    ids = lm.encode(PROMPT)
    with tempfile.TemporaryDirectory() as tmp:
        sites = {dtype: export_web(args.model, Path(tmp) / dtype, dtype) for dtype in ("fp32", "int8")}
        results: dict[str, list] = {"native": [], "fp32": [], "int8": []}
        with sync_playwright() as p, contextlib.ExitStack() as stack:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            urls = {dtype: stack.enter_context(preview_server(site.path)) for dtype, site in sites.items()}
            native_round(lm, ids, args.tokens)  # warm
            for _ in range(args.rounds):
                results["native"].append(native_round(lm, ids, args.tokens))
                for dtype, url in urls.items():
                    results[dtype].append(page_round(browser, url, args.tokens, args.threads))
            browser.close()
        native = max(results["native"])
        print(f"{args.model}: {args.tokens} new tokens, card sampling, {args.threads} threads, {args.rounds} rounds")
        print(f"  stentor generate (compiled runtime)  {native:8.1f} tok/s  (spread {min(results['native']):.1f}-{native:.1f})")
        for dtype, site in sites.items():
            rows = results[dtype]
            rates = [r["tok_s"] for r in rows]
            firsts = [r["first_token_s"] for r in rows]
            print(f"  browser {dtype} ({rows[0]['backend']}, {rows[0]['threads']} threads)  {max(rates):8.1f} tok/s "
                  f"(spread {min(rates):.1f}-{max(rates):.1f}; {max(rates) / native:.2f}x native); load to first token "
                  f"{min(firsts):.2f} s (spread {min(firsts):.2f}-{max(firsts):.2f}); folder {folder_bytes(site.path) / 2**20:.1f} MiB, "
                  f"a WASM visitor downloads {site.page_bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
