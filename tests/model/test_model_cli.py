import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "stentor", *args], capture_output=True, text=True, timeout=300)


def test_params_json():
    res = run("params", "--preset", "stentor2-12m", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["total"], data["embedding"], data["layers"]) == (12294400, 2064384, 10229760)
    assert (data["attention"], data["mlp"], data["layer_norms"], data["final_norm"]) == (3145728, 7077888, 6144, 256)
    assert data["embedding_share_pct"] == 16.8


def test_params_table_and_presets():
    res = run("params", "--preset", "stentor-12m-v1")
    assert res.returncode == 0 and "12,047,040" in res.stdout and "52.2%" in res.stdout
    res = run("presets")
    assert "stentor2-12m" in res.stdout and "12,294,400" in res.stdout


def test_unknown_preset_is_one_line():
    res = run("params", "--preset", "nope")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "available presets: stentor2-12m" in res.stderr


def test_init_writes_hf_dir(tmp_path):
    res = run("init", "--preset", "stentor2-tiny", "--out", str(tmp_path / "m"))
    assert res.returncode == 0, res.stderr
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["vocab_size"] == 8064
    assert cfg["tie_word_embeddings"] is True


def test_init_with_tokenizer_is_ready_to_generate(tmp_path, shared_dir):
    vocab = shared_dir / "tokenmonster" / "vocabs" / "english-8000-strict-cap1-oracle.vocab"
    res = run("init", "--preset", "stentor2-tiny", "--out", str(tmp_path / "m"), "--tokenizer", str(vocab))
    assert res.returncode == 0, res.stderr
    res = run("generate", "--model", str(tmp_path / "m"), "--greedy", "--max-new-tokens", "5", "Hello")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Hello")


def test_init_rejects_a_tokenizer_larger_than_the_embedding(tmp_path, shared_dir):
    vocab = shared_dir / "tokenmonster" / "vocabs" / "english-8000-strict-cap1-oracle.vocab"
    res = run("init", "--preset", "stentor-12m-v1", "--out", str(tmp_path / "m"), "--tokenizer", str(vocab))
    assert res.returncode == 0  # 8,064 tokens fit v1's 32,768 rows
    res = run("init", "--preset", "stentor2-mini", "--out", str(tmp_path / "m2"), "--tokenizer", str(vocab))
    assert res.returncode == 2 and "embeds only 4,096" in res.stderr
    assert not (tmp_path / "m2").exists()
