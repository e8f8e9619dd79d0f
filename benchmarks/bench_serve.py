"""`stentor serve` under load, on real servers on loopback.

throughput: total tokens/s with N concurrent clients, per engine, same run (random-init stentor2-12m
saved with the given vocabulary; rounds interleaved).

    python benchmarks/bench_serve.py throughput --vocab my.vocab --clients 32 --engines torch stentor

load: N clients for T minutes against one server, streaming and not, random prompts and sampling
values, a share that hang up part way and a share that are hostile (values out of range, broken
JSON, wrong content types, half-sent requests), while IDLE silent sockets stay open (reopened as the
server reaps them). Reports requests by outcome, tokens/s, p50/p99 time to first token and per-token
latency, rows still in flight after the load, the server's RSS over time, and tracebacks in its log.

    python benchmarks/bench_serve.py load --model runs/tiny/final --clients 32 --minutes 10 --idle 1100
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def start(model: Path, engine: str, clients: int, log=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """`stentor serve` on a free loopback port, once /health answers; its output goes to `log`."""
    stentor = shutil.which("stentor") or str(Path(sys.executable).with_name("stentor"))
    port = free_port()
    proc = subprocess.Popen([stentor, "serve", "--model", str(model), "--engine", engine, "--port", str(port),
                             "--max-batch", str(clients), "--model-name", "m"],
                            stdout=log, stderr=subprocess.STDOUT)
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


def random_model(vocab: str, root: Path) -> Path:
    """Random-init stentor2-12m saved with `vocab`: the card's shapes, no training needed."""
    from stentor.model.build import build_model, save_model_dir
    from stentor.model.presets import get_preset
    from stentor.tokenizer.hf import tokenizer_from_vocab

    cfg = get_preset("stentor2-12m")
    return Path(save_model_dir(build_model(cfg, seed=0), cfg, root / "m", tokenizer=tokenizer_from_vocab(vocab)))


def throughput(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(args.vocab, Path(tmp))
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



WORDS = ("once upon a time there was little girl who lived in village near the forest she loved to "
         "play with her dog and one day they found big red ball under tree école naïve 東京").split()  # fmt: skip


def hostile_requests(rng: random.Random) -> tuple[str, bytes, dict]:
    """(path, body, headers) of a request the server must refuse with a 4xx and survive."""
    json_type = {"Content-Type": "application/json"}
    picks = [
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 3, "top_k": 2**63}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 3, "seed": 2**64}),
        ("/v1/completions", {"prompt": "Hi", "temperature": 1e-308, "repetition_penalty": 1e-308}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 10**9}),
        ("/v1/completions", {"prompt": "Hi", "suffix": "x"}),
        ("/v1/completions", {"prompt": [[1, -5]]}),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}),
        ("/v1/completions", {"prompt": "word " * 200_000}),
    ]
    path, body = rng.choice(picks)
    raw = rng.random()
    if raw < 0.15:
        return "/v1/completions", b"[" * 100_000, json_type
    if raw < 0.3:
        return "/v1/completions", b'{"prompt": "\xff\xfe", "max_tokens": 2}', json_type
    if raw < 0.4:
        return "/v1/completions", b'{"prompt": "Hi"', json_type
    if raw < 0.5:
        return "/v1/completions", json.dumps({"prompt": "Hi"}).encode(), {"Content-Type": "text/plain"}
    if raw < 0.55:
        return "/v1/completions", json.dumps({"prompt": "Hi"}).encode(), {**json_type, "Host": "evil.example"}
    return path, json.dumps(body).encode(), json_type


def half_sent(port: int, rng: random.Random) -> None:
    """Half the headers or half the body, then hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        sock.sendall(head + (b"Content-Length: 200\r\n\r\n{\"prompt\": " if rng.random() < 0.5 else b"Content-"))
        time.sleep(rng.uniform(0, 0.5))


def normal_request(rng: random.Random, max_tokens: int) -> tuple[str, dict]:
    """A request an ordinary client might send: random prompt, sampling values and options."""
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
    body: dict = {"model": "m", "max_tokens": rng.randint(1, max_tokens), "seed": rng.randrange(2**31)}
    if rng.random() < 0.8:
        body["temperature"] = rng.choice([0.0, rng.uniform(0.05, 1.5)])
    for name, low, high in (("top_p", 0.05, 1.0), ("repetition_penalty", 0.8, 1.5),
                            ("presence_penalty", -2, 2), ("frequency_penalty", -2, 2)):  # fmt: skip
        if rng.random() < 0.2:
            body[name] = rng.uniform(low, high)
    if rng.random() < 0.2:
        body["top_k"] = rng.randint(1, 100)
    if rng.random() < 0.1:
        body["n"] = 2
    if rng.random() < 0.15:
        body["stop"] = rng.sample(WORDS, rng.randint(1, 3))
    if rng.random() < 0.05:
        body["logit_bias"] = {str(rng.randrange(100, 300)): rng.uniform(-100, 100)}
    if rng.random() < 0.3:
        if rng.random() < 0.3:
            body["logprobs"], body["top_logprobs"] = True, rng.randint(0, 5)
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    if rng.random() < 0.15:
        body["logprobs"] = rng.randint(0, 5)
    return "/v1/completions", {**body, "prompt": prompt}


@dataclass
class Tally:
    """What the clients saw; one lock, as many threads add to it."""

    outcomes: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)  # what a well-behaved server never does
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    per_token: list[float] = field(default_factory=list)  # each stream's mean time between its tokens
    gaps: list[float] = field(default_factory=list)  # every time between two chunks: where stalls show
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, tokens: int = 0, ttft: float | None = None, gaps: list[float] = ()) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.tokens += tokens
            if ttft is not None:
                self.ttft.append(ttft)
            if gaps:
                self.per_token.append(sum(gaps) / len(gaps))
                self.gaps.extend(gaps)

    def wrong(self, what: str) -> None:
        with self.lock:
            self.unexpected[what[:120]] += 1


def stream_once(client, base: str, path: str, body: dict, hang_up_after: int | None, tally: Tally) -> None:
    """One streamed request; per-token gaps only for single-choice rows (chunks of two rows interleave)."""
    import httpx

    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, last, gaps, chunks, usage = None, None, [], 0, None
    try:
        with client.stream("POST", base + path, json=body) as response:
            if response.status_code != 200:
                tally.wrong(f"stream {response.status_code}: {response.read()[:80]!r}")
                return
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    tally.wrong(f"stream error event: {event['error'].get('message')}")
                    return
                if event.get("usage"):
                    usage = event["usage"]
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                elif body.get("n", 1) == 1:
                    gaps.append(now - last)
                last = now
                chunks += 1
                if hang_up_after is not None and chunks >= hang_up_after:
                    tally.add("stream, hung up", chunks, first, gaps)
                    return  # leaving the block closes the connection mid-stream
    except httpx.HTTPError as exc:
        tally.wrong(f"stream {type(exc).__name__}")
        return
    if usage is None:
        tally.wrong("stream ended without its usage chunk")
        return
    tally.add("stream, whole", usage["completion_tokens"], first, gaps)


def plain_once(client, base: str, path: str, body: dict, hang_up_after: float | None, tally: Tally) -> None:
    import httpx

    try:
        response = client.post(base + path, json=body, timeout=hang_up_after or 600)
    except httpx.TimeoutException:
        if hang_up_after is None:
            tally.wrong("plain request timed out")
        else:
            tally.add("plain, hung up")
        return
    except httpx.HTTPError as exc:
        tally.wrong(f"plain {type(exc).__name__}")
        return
    if response.status_code != 200:
        tally.wrong(f"plain {response.status_code}: {response.text[:80]}")
        return
    tally.add("plain, whole", response.json()["usage"]["completion_tokens"])


def hostile_once(client, base: str, port: int, rng: random.Random, tally: Tally) -> None:
    import httpx

    if rng.random() < 0.2:
        try:
            half_sent(port, rng)
        except OSError:
            pass  # the server may close first: that is its right
        tally.add("hostile, half-sent")
        return
    path, data, headers = hostile_requests(rng)
    try:
        response = client.post(base + path, content=data, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        tally.wrong(f"hostile {type(exc).__name__}")
        return
    if 400 <= response.status_code < 500:
        tally.add("hostile, refused")
    else:
        tally.wrong(f"hostile got {response.status_code}")


def client_loop(base: str, port: int, seed: int, deadline: float, args: argparse.Namespace, tally: Tally) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(timeout=600) as client:
        while time.monotonic() < deadline:
            if rng.random() < args.hostile:
                hostile_once(client, base, port, rng, tally)
                continue
            path, body = normal_request(rng, args.max_tokens)
            hang_up = rng.random() < args.disconnect
            if rng.random() < 0.5:
                stream_once(client, base, path, body, rng.randint(1, 5) if hang_up else None, tally)
            else:
                plain_once(client, base, path, body, rng.uniform(0.01, 0.3) if hang_up else None, tally)


class IdleSockets:
    """`count` connections that never send a byte; each one the server closes is opened again."""

    def __init__(self, port: int, count: int):
        self.port, self.count, self.reopened, self.stop = port, count, 0, threading.Event()
        self.selector = selectors.DefaultSelector()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        for _ in range(self.count):
            self._open()
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.5):
                sock = key.fileobj
                try:
                    closed = not sock.recv(4096)
                except ConnectionError:
                    closed = True
                if closed:
                    self.selector.unregister(sock)
                    sock.close()
                    self._open()
                    self.reopened += 1
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()

    def open(self) -> int:
        return len(self.selector.get_map())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def load(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else random_model(args.vocab, Path(tmp))
        log_path = Path(args.log or Path(tmp) / "server.log")
        with open(log_path, "w") as log:
            proc, base = start(model, args.engine, args.clients, log)
        port = int(base.rsplit(":", 1)[1])
        tally = Tally()
        idle = IdleSockets(port, args.idle)
        idle.thread.start()
        seconds = args.minutes * 60
        began = time.monotonic()
        deadline = began + seconds
        rss: list[tuple[float, float]] = []
        threads = [threading.Thread(target=client_loop, args=(base, port, args.seed + i, deadline, args, tally))
                   for i in range(args.clients)]  # fmt: skip
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                rss.append((time.monotonic() - began, rss_mib(proc.pid)))
                print(f"\r{rss[-1][0]:6.0f} s  {sum(tally.outcomes.values()):6d} requests  {tally.tokens:8d} tokens  "
                      f"rss {rss[-1][1]:6.1f} MiB  idle open {idle.open():5d}", end="", file=sys.stderr, flush=True)
                time.sleep(min(5.0, max(0.5, seconds / 60)))
            for t in threads:
                t.join()
            wall = time.monotonic() - began
            health = {}
            drain = time.monotonic() + 30
            while time.monotonic() < drain:  # rows a hung-up client left behind must end on their own
                health = json.loads(urllib.request.urlopen(base + "/health", timeout=10).read())
                if health["decoding"] == 0 and health["waiting"] == 0:
                    break
                time.sleep(0.2)
            idle_open = idle.open()
            alive = proc.poll() is None
        finally:
            idle.stop.set()
            idle.thread.join(10)
            proc.terminate()
            proc.wait(60)
        server_log = log_path.read_text(errors="replace")
    after_first = [m for t, m in rss if t >= min(60.0, seconds / 2)]
    growth = (after_first[-1] - after_first[0]) / after_first[0] * 100 if len(after_first) > 1 else 0.0
    result = {
        "clients": args.clients, "minutes": args.minutes, "disconnect": args.disconnect, "hostile": args.hostile,
        "idle_sockets": args.idle, "idle_open_at_end": idle_open, "idle_reopened": idle.reopened,
        "requests": dict(tally.outcomes), "unexpected": dict(tally.unexpected), "tokens": tally.tokens,
        "tokens_per_s": tally.tokens / wall, "ttft_p50_s": percentile(tally.ttft, 50),
        "ttft_p99_s": percentile(tally.ttft, 99), "per_token_p50_s": percentile(tally.per_token, 50),
        "per_token_p99_s": percentile(tally.per_token, 99), "chunk_gap_p99_s": percentile(tally.gaps, 99),
        "chunk_gap_max_s": max(tally.gaps, default=None), "rows_in_flight_after": health.get("decoding", -1) +
        health.get("waiting", 0), "server_alive": alive, "rss_mib": rss, "rss_growth_after_first_minute_pct": growth,
        "server_tracebacks": server_log.count("Traceback"),
    }  # fmt: skip
    print(file=sys.stderr)
    ms = lambda v: "n/a" if v is None else f"{v * 1000:.1f} ms"  # noqa: E731
    print(f"{args.clients} clients for {args.minutes:g} min ({args.disconnect:.0%} hang up, {args.hostile:.0%} hostile), "
          f"{args.idle} idle sockets held ({idle.reopened} reopened after the server reaped them)")
    for outcome, n in sorted(tally.outcomes.items()):
        print(f"  {outcome:20s} {n:7d}")
    print(f"  tokens/s            {result['tokens_per_s']:9.1f}  ({tally.tokens} tokens)")
    print(f"  time to first token p50 {ms(result['ttft_p50_s'])}, p99 {ms(result['ttft_p99_s'])}")
    print(f"  per-token latency   p50 {ms(result['per_token_p50_s'])}, p99 {ms(result['per_token_p99_s'])} "
          f"(a stream's mean; between any two chunks p99 {ms(result['chunk_gap_p99_s'])}, "
          f"max {ms(result['chunk_gap_max_s'])})")
    print(f"  rows in flight after the load: {result['rows_in_flight_after']}")
    print(f"  server RSS {rss[0][1]:.1f} -> {rss[-1][1]:.1f} MiB, {growth:+.2f}% after the first minute")
    print(f"  unexpected: {sum(tally.unexpected.values())} {dict(tally.unexpected) or ''}")
    print(f"  tracebacks in the server log: {result['server_tracebacks']}; server alive at the end: {alive}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([t / 60 for t, _ in rss], [m for _, m in rss])
        ax.set(xlabel="minutes", ylabel="server RSS (MiB)", title=f"stentor serve, {args.clients} clients")
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    healthy = alive and not tally.unexpected and result["rows_in_flight_after"] == 0 and not result["server_tracebacks"]
    return 0 if healthy else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    tp = sub.add_parser("throughput", help="total tokens/s per engine, N concurrent clients, rounds interleaved")
    tp.add_argument("--vocab", default="english-8000-strict-nocapcode-v1", help="TokenMonster vocabulary")
    tp.add_argument("--clients", type=int, default=32)
    tp.add_argument("--max-tokens", type=int, default=128)
    tp.add_argument("--rounds", type=int, default=3)
    tp.add_argument("--engines", nargs="+", default=["torch", "stentor"])
    ld = sub.add_parser("load", help="a soak: mixed, hanging-up and hostile clients plus idle sockets for T minutes")
    ld.add_argument("--model", help="model directory (default: random-init stentor2-12m with --vocab)")
    ld.add_argument("--vocab", default="english-8000-strict-nocapcode-v1", help="TokenMonster vocabulary")
    ld.add_argument("--engine", default="stentor", help="stentor serve --engine (default: %(default)s)")
    ld.add_argument("--clients", type=int, default=32, help="concurrent clients (default: %(default)s)")
    ld.add_argument("--minutes", type=float, default=10, help="how long (default: %(default)s)")
    ld.add_argument("--max-tokens", type=int, default=128, help="max_tokens drawn from 1..this (default: %(default)s)")
    ld.add_argument("--disconnect", type=float, default=0.2, help="share of requests that hang up (default: %(default)s)")
    ld.add_argument("--hostile", type=float, default=0.05, help="share of hostile requests (default: %(default)s)")
    ld.add_argument("--idle", type=int, default=1100, help="silent sockets held open meanwhile (default: %(default)s)")
    ld.add_argument("--seed", type=int, default=0)
    ld.add_argument("--json", help="write the figures (and RSS samples) here")
    ld.add_argument("--plot", help="write a PNG of the server's RSS over time here")
    ld.add_argument("--log", help="keep the server's log here")
    args = parser.parse_args()
    if args.mode == "throughput":
        throughput(args)
        return 0
    return load(args)


if __name__ == "__main__":
    raise SystemExit(main())
