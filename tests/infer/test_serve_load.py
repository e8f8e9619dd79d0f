"""`benchmarks/bench_serve.py load` for half a minute against a real server: mixed, hanging-up and hostile clients
and idle sockets leave no error a good client sees, no stuck row, no traceback, and the server up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_half_a_minute_of_mixed_and_hostile_load(tiny_dir, tmp_path):
    out = tmp_path / "load.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "load", "--model", str(tiny_dir),
                             "--clients", "8", "--minutes", "0.5", "--idle", "200", "--max-tokens", "48",
                             "--json", str(out), "--log", str(tmp_path / "server.log")],
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    figures = json.loads(out.read_text())
    assert result.returncode == 0, result.stdout + (tmp_path / "server.log").read_text()[-3000:]
    assert figures["unexpected"] == {} and figures["server_tracebacks"] == 0 and figures["server_alive"]
    assert figures["rows_in_flight_after"] == 0
    requests = figures["requests"]
    for outcome in ("stream, whole", "stream, hung up", "plain, whole", "hostile, refused", "hostile, half-sent"):
        assert requests.get(outcome, 0) > 0, requests
    assert figures["tokens"] > 0 and figures["ttft_p99_s"] is not None and figures["per_token_p99_s"] is not None
    assert figures["idle_open_at_end"] == 200  # reaped sockets were opened again: the idle load stayed on
