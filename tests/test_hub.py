import os
import subprocess
import sys

from stentor.hub import hub_offline


def test_offline_flag_is_honoured(monkeypatch):
    hub_offline.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        assert hub_offline() is True
    finally:
        hub_offline.cache_clear()


def test_unreachable_hub_fails_at_once_without_retries(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf"))  # .invalid never resolves
    res = subprocess.run(
        [sys.executable, "-m", "stentor", "vocab", "get", "english-8000-strict-nocapcode-v1"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert res.returncode == 2
    assert "Retrying" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stentor: error:") and "offline or hub unreachable" in lines[0]
