"""`stentor serve` throughput: total tokens/s with N concurrent clients, per engine, same run.

Starts a real server on loopback for each engine (random-init stentor2-12m saved with the given
vocabulary), sends N concurrent /v1/completions requests (card sampling, max_tokens each), counts
`usage.completion_tokens`, and prints total tokens per wall second. Rounds are interleaved.

    python benchmarks/bench_serve.py --vocab my.vocab --clients 32 --engines torch stentor
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def start(model: Path, engine: str, clients: int) -> tuple[subprocess.Popen, str]:
    stentor = shutil.which("stentor") or str(Path(sys.executable).with_name("stentor"))
    port = free_port()
    proc = subprocess.Popen([stentor, "serve", "--model", str(model), "--engine", engine, "--port", str(port),
                             "--max-batch", str(clients), "--model-name", "m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/health", timeout=1).read()
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"stentor serve --engine {engine} did not start")


def round_trip(base: str, clients: int, tokens: int, seed: int) -> tuple[int, float]:
    body = {"model": "m", "prompt": "Once upon a time", "max_tokens": tokens}
    start_time = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(lambda i: post(base + "/v1/completions", {**body, "seed": seed + i}), range(clients)))
    return sum(r["usage"]["completion_tokens"] for r in replies), time.perf_counter() - start_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", default="english-8000-strict-nocapcode-v1", help="TokenMonster vocabulary")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["torch", "stentor"])
    args = parser.parse_args()

    from stentor.model.build import build_model, save_model_dir
    from stentor.model.presets import get_preset
    from stentor.tokenizer.hf import tokenizer_from_vocab

    with tempfile.TemporaryDirectory() as tmp:
        cfg = get_preset("stentor2-12m")
        model = save_model_dir(build_model(cfg, seed=0), cfg, Path(tmp) / "m", tokenizer=tokenizer_from_vocab(args.vocab))
        servers = {engine: start(model, engine, args.clients) for engine in args.engines}
        try:
            for _, base in servers.values():
                round_trip(base, 2, 4, 0)  # warm-up
            rates: dict[str, list[float]] = {engine: [] for engine in servers}
            for r in range(args.rounds):
                for engine, (_, base) in servers.items():
                    tokens, wall = round_trip(base, args.clients, args.max_tokens, 1000 * r)
                    rates[engine].append(tokens / wall)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    print(f"{args.clients} concurrent clients x {args.max_tokens} max tokens, card sampling, best of {args.rounds}")
    first = max(rates[args.engines[0]])
    for engine, values in rates.items():
        print(f"  --engine {engine:8s} {max(values):8.1f} tok/s total (rounds {min(values):.1f}-{max(values):.1f})"
              f"  {max(values) / first:5.2f}x --engine {args.engines[0]}")


if __name__ == "__main__":
    main()
