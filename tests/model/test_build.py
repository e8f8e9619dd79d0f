import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from stentor.model.build import build_model, initialize_weights, save_model_dir
from stentor.model.presets import get_preset


def test_initialization_follows_the_card():
    torch.manual_seed(0)
    model = build_model(get_preset("stentor2-12m"), init=False)
    with torch.no_grad():  # make the check meaningful: start far from the target values
        for p in model.parameters():
            p.fill_(3.0)
    initialize_weights(model)
    emb = model.model.embed_tokens.weight
    assert abs(emb.mean().item()) < 1e-3
    assert abs(emb.std().item() - 0.02) < 5e-4
    mlp = model.model.layers[5].mlp.down_proj.weight
    assert abs(mlp.std().item() - 0.02) < 5e-4
    norms = [m for m in model.modules() if "rmsnorm" in type(m).__name__.lower()]
    assert len(norms) == 25
    assert all(torch.all(n.weight == 1.0) for n in norms)


def test_tied_embeddings():
    model = build_model(get_preset("stentor2-tiny"), seed=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_saved_dir_loads_without_stentor_and_generates(tmp_path):
    cfg = get_preset("stentor2-tiny")
    model = build_model(cfg, seed=1).eval()
    out = save_model_dir(model, cfg, tmp_path / "m")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors"]
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_p"], gen["repetition_penalty"]) == (0.8, 0.7, 1.2)
    assert set(load_file(out / "model.safetensors")) >= {"model.embed_tokens.weight"}

    ids = torch.tensor([[cfg.bos_token_id, 5, 17, 300, 42, 7]])
    with torch.no_grad():
        expected = model(ids).logits
    torch.save(expected, tmp_path / "expected.pt")

    # A fresh interpreter where importing stentor is impossible: plain transformers only.
    script = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "stentor" or name.startswith("stentor."):
                    raise ImportError("stentor is blocked in this test")
        sys.meta_path.insert(0, Block())
        import torch, warnings
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging
        logging.set_verbosity_warning()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model, info = AutoModelForCausalLM.from_pretrained({str(out)!r}, output_loading_info=True)
        assert not any(info.values()), info
        model.eval()
        ids = torch.tensor([[{cfg.bos_token_id}, 5, 17, 300, 42, 7]])
        with torch.no_grad():
            logits = model(ids).logits
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        assert torch.equal(logits, expected), (logits - expected).abs().max()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             min_new_tokens=8)
        assert out.shape[1] == ids.shape[1] + 8, out.shape
        print("OK", out[0, ids.shape[1]:].tolist())
        """
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("OK")
