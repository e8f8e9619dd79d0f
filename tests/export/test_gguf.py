"""`stentor export gguf`: files written with gguf-py, read back with GGUFReader, run by a llama.cpp-style forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stentor.cli import main
from stentor.errors import StentorError
from stentor.eval.loading import load_tokenizer
from stentor.model.loading import load_model
from stentor.export.gguf import VOCAB_KEY, export_gguf, read_gguf, unpermute_qk, write_gguf


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope_interleaved(v: np.ndarray, theta: float) -> np.ndarray:
    """ggml's normal RoPE: rotate adjacent pairs (2i, 2i+1) by pos * theta^(-2i/d). v: [T, heads, d]."""
    steps, _, dim = v.shape
    angles = np.arange(steps)[:, None] * theta ** (-np.arange(0, dim, 2) / dim)[None]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    even, odd = v[..., 0::2], v[..., 1::2]
    out = np.empty_like(v)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def llamacpp_style_logits(path, ids: list[int]) -> np.ndarray:
    """Logits computed only from the GGUF file, the way llama.cpp's LLaMA graph computes them."""
    gguf = read_gguf(path)
    meta, t = gguf.metadata, {k: v.astype(np.float64) for k, v in gguf.tensors.items()}
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    eps, theta = meta["llama.attention.layer_norm_rms_epsilon"], meta["llama.rope.freq_base"]
    x = t["token_embd.weight"][ids]
    steps, dim = len(ids), meta["llama.rope.dimension_count"]
    causal = np.triu(np.full((steps, steps), -np.inf), 1)
    for i in range(meta["llama.block_count"]):
        w = lambda name: t[f"blk.{i}.{name}.weight"]  # noqa: E731
        h = _rms(x, w("attn_norm"), eps)
        q = _rope_interleaved((h @ w("attn_q").T).reshape(steps, heads, dim), theta)
        k = _rope_interleaved((h @ w("attn_k").T).reshape(steps, kv_heads, dim), theta)
        v = (h @ w("attn_v").T).reshape(steps, kv_heads, dim)
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dim) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", probs, v).reshape(steps, -1) @ w("attn_output").T
        h = _rms(x, w("ffn_norm"), eps)
        gate = h @ w("ffn_gate").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    output = t.get("output.weight", t["token_embd.weight"])
    return _rms(x, t["output_norm.weight"], eps) @ output.T


@pytest.mark.parametrize("fixture", ["gqa_dir", "untied_dir"])
def test_f32_file_runs_like_the_model_in_a_llamacpp_style_forward(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    out = export_gguf(src, tmp_path / "m.gguf", "f32")
    model = load_model(str(src))
    ids = [5, 17, 99, 3, 250, 42, 7, 300, 11]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].double().numpy()
    got = llamacpp_style_logits(out, ids)
    assert np.abs(got - want).max() < 1e-4
    names = set(read_gguf(out).tensors)
    assert ("output.weight" in names) == (fixture == "untied_dir")


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_reduced_dtypes_read_back_within_their_rounding(dtype, gqa_dir, tmp_path):
    out = export_gguf(gqa_dir, tmp_path / "m.gguf", dtype)
    contents = read_gguf(out)
    model = load_model(str(gqa_dir))
    assert contents.types["blk.0.attn_norm.weight"] == "F32"
    assert contents.types["blk.0.ffn_down.weight"] == dtype.upper()
    q = unpermute_qk(contents.tensors["blk.1.attn_q.weight"], model.config.num_attention_heads)
    k = unpermute_qk(contents.tensors["blk.1.attn_k.weight"], model.config.num_key_value_heads)
    tol = 2e-4 if dtype == "f16" else 2e-3
    assert np.abs(q - model.model.layers[1].self_attn.q_proj.weight.detach().numpy()).max() < tol
    assert np.abs(k - model.model.layers[1].self_attn.k_proj.weight.detach().numpy()).max() < tol
    logits = llamacpp_style_logits(out, [1, 2, 3, 4, 5])
    with torch.no_grad():
        want = model(torch.tensor([[1, 2, 3, 4, 5]])).logits[0].numpy()
    assert np.abs(logits - want).max() < (0.01 if dtype == "f16" else 0.05)
    f32 = export_gguf(gqa_dir, tmp_path / "f32.gguf", "f32")
    assert out.stat().st_size < {"f16": 0.6, "q8_0": 0.4}[dtype] * f32.stat().st_size


def test_metadata_and_vocabulary(gqa_dir, tmp_path):
    out = export_gguf(gqa_dir, tmp_path / "m.gguf", "f16")
    meta = read_gguf(out).metadata
    tokenizer = load_tokenizer(str(gqa_dir))
    assert meta["general.architecture"] == "llama"
    assert meta["llama.attention.head_count"] == 4 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 16 and meta["llama.feed_forward_length"] == 192
    assert meta["tokenizer.ggml.model"] == "llama"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 384 and tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    types = meta["tokenizer.ggml.token_type"]
    assert types[tokenizer.eos_token_id] == 3 and types[100] == 1 and types[383] == 5  # control, normal, unused
    assert meta["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert VOCAB_KEY not in meta  # a BPE tokenizer has no TokenMonster file to embed


def test_tokenmonster_vocab_is_embedded(shared_dir, tmp_path):
    from stentor.model import get_preset
    from stentor.model.build import build_model
    from stentor.tokenizer.hf import tokenizer_from_vocab

    vocab_file = shared_dir / "tokenmonster/vocabs/english-8000-strict-cap1-oracle.vocab"
    tokenizer = tokenizer_from_vocab(vocab_file)
    model = build_model(get_preset("stentor2-tiny"), seed=0)
    out = write_gguf(model, tokenizer, tmp_path / "tm.gguf", "q8_0")
    meta = read_gguf(out).metadata
    assert meta[VOCAB_KEY] == vocab_file.read_bytes()
    assert len(meta["tokenizer.ggml.tokens"]) == 8064
    assert meta["tokenizer.ggml.eos_token_id"] == 8000 and meta["tokenizer.ggml.bos_token_id"] == 8001
    assert max(meta["tokenizer.ggml.scores"]) > 0  # TokenMonster's own scores


def test_bad_input(tiny_dir, tmp_path, capsys):
    with pytest.raises(StentorError, match="unknown GGUF dtype 'q4_k'"):
        export_gguf(tiny_dir, tmp_path / "m.gguf", "q4_k")
    with pytest.raises(StentorError, match=r"\*\.gguf"):
        export_gguf(tiny_dir, tmp_path / "m.bin", "f16")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "gguf", "--model", str(tiny_dir), "-o", str(blocker / "m.gguf")]) == 2
    assert "cannot write to" in capsys.readouterr().err
    assert main(["export", "gguf", "--model", str(tiny_dir), "-o", str(tmp_path / "ok.gguf"), "--dtype", "q8_0"]) == 0
    assert "verified" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name != "file"] == ["ok.gguf"]  # no temp files left
