"""`stentor quantize`: real safetensors files, real torch kernels, HF models with the Linear layers replaced."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from stentor.cli import main
from stentor.errors import StentorError
from stentor.model.loading import load_model
from stentor.export.quantize import quantize_dir
from stentor.model.quant_format import QuantConfig, is_quantized_dir
from stentor.model.quantized import Int4Linear, Int8DynamicLinear, Int8Linear, load_quantized

# Relative logit error allowed against the float model (random-init tiny model, 8-bit vs 4-bit weights).
TOLERANCE = {"int8": 0.03, "int8-dynamic": 0.04, "int4": 0.15}


def _ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["int8", "int8-dynamic", "int4"])
@pytest.mark.parametrize("fixture", ["tiny_dir", "untied_dir"])
def test_quantized_dir_roundtrip(method, fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    out = quantize_dir(src, tmp_path / "q", method, group_size=32)
    assert is_quantized_dir(out) and not is_quantized_dir(src)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {
        "method": method, "group_size": 32, "quant_method": "stentor", "format_version": 1
    }
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    q_proj = "model.layers.0.self_attn.q_proj.qweight"
    assert dtypes[q_proj] == ("U8" if method == "int4" else "I8")
    assert dtypes["lm_head.qweight"] == "I8"
    assert not any(name.endswith(".weight") and "norm" not in name for name in dtypes), "a float matrix was stored"
    assert ("model.embed_tokens.qweight" in dtypes) == (fixture == "untied_dir")
    assert (out / "model.safetensors").stat().st_size < 0.45 * (src / "model.safetensors").stat().st_size

    reference = load_model(str(src))
    model = load_quantized(out)
    expected_cls = {"int8": Int8Linear, "int8-dynamic": Int8DynamicLinear, "int4": Int4Linear}[method]
    assert type(model.model.layers[1].mlp.down_proj) is expected_cls
    ids = _ids(reference.config.vocab_size)
    with torch.no_grad():
        want, got = reference(ids).logits, model(ids).logits
    assert ((got - want).norm() / want.norm()).item() < TOLERANCE[method]
    # The quantized model is a normal HF model: generate() runs.
    out_ids = model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)
    assert out_ids.shape == (1, 10)


def test_kernels_match_their_dequantized_weights():
    torch.manual_seed(0)
    weight = torch.randn(48, 128) * 0.05
    x = torch.randn(5, 128)
    for module in (Int8Linear.from_weight(weight), Int8DynamicLinear.from_weight(weight), Int4Linear.from_weight(weight, 32)):
        dense = x @ module.dequantize().T
        assert (module(x) - dense).abs().max().item() < 0.02 * dense.abs().max().item()
    int4 = Int4Linear.from_weight(weight, 64)
    assert int4.unpacked().max() <= 15 and (int4.dequantize() - weight).abs().max() < (weight.abs().max() / 7)
    int8 = Int8Linear.from_weight(weight)
    assert (int8.dequantize() - weight).abs().max() <= int8.scales.max() / 2 + 1e-7


def test_bad_method_and_group_size():
    with pytest.raises(StentorError, match="unknown quantization method 'int3'"):
        QuantConfig("int3")
    with pytest.raises(StentorError, match="group-size 48"):
        QuantConfig("int4", group_size=48)


def test_int4_rejects_unsupported_shapes_before_loading(make_model, tmp_path):
    src = make_model(tmp_path / "odd", hidden_size=96, num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(StentorError, match="in_features divisible by the group size.*96 inputs.*--group-size 32"):
        quantize_dir(src, tmp_path / "q", "int4", group_size=64)
    assert not (tmp_path / "q").exists()
    quantize_dir(src, tmp_path / "q", "int4", group_size=32)  # 96 = 3 x 32 works


def test_int8_weight_only_rejects_inputs_not_multiple_of_16(make_model, tmp_path):
    """torch's int8 weight-only kernel silently returns wrong numbers for such shapes: refuse them."""
    src = make_model(tmp_path / "odd", hidden_size=72, num_attention_heads=2, num_key_value_heads=2)
    for method in ("int8", "int4"):
        with pytest.raises(StentorError, match=f"{method} needs in_features divisible by 16.*72 inputs.*int8-dynamic"):
            quantize_dir(src, tmp_path / "q", method, group_size=32)
    out = quantize_dir(src, tmp_path / "q", "int8-dynamic")  # the integer matmul takes any shape
    ids = _ids(384)
    with torch.no_grad():
        want, got = load_model(str(src))(ids).logits, load_quantized(out)(ids).logits
    assert ((got - want).norm() / want.norm()).item() < TOLERANCE["int8-dynamic"]


def test_cli_quantize_and_errors(tiny_dir, tmp_path, capsys):
    assert main(["quantize", "--model", str(tiny_dir), "--method", "int8", "-o", str(tmp_path / "q8")]) == 0
    assert "wrote" in capsys.readouterr().out and is_quantized_dir(tmp_path / "q8")

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["quantize", "--model", str(tiny_dir), "--method", "int8", "-o", str(blocker / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stentor: error: cannot write to") and "\n" not in err

    assert main(["quantize", "--model", str(tmp_path / "q8"), "--method", "int4", "-o", str(tmp_path / "x")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["quantize", "--model", str(tmp_path / "nope"), "--method", "int4", "-o", str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["quantize", "--model", str(tiny_dir), "--method", "fp4", "-o", str(tmp_path / "x")])


def dequantized_copy(model):
    """The float model that a quantized one stands for: every quantized Linear replaced by its dequantized weights."""
    import copy

    from torch import nn


    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, (Int8Linear, Int4Linear)):
            linear = nn.Linear(module.in_features, module.out_features, bias=False)
            linear.weight.data = module.dequantize()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, linear)
    return model.float().eval()


@pytest.mark.parametrize("method", ["int8", "int8-dynamic", "int4"])
def test_stentor_load_runs_quantized_dirs_in_the_engine(method, gqa_dir, tmp_path):
    import stentor
    from stentor.export import quantize_dir

    out = quantize_dir(gqa_dir, tmp_path / method, method)
    lm = stentor.load(out)
    assert lm.engine is not None and lm.model.stentor_quantization.method == method
    ids = torch.randint(0, 300, (2, 9))
    greedy = dict(greedy=True, max_new_tokens=6, repetition_penalty=1.0)
    if method == "int8":  # the compiled runtime: the int8 weights with float32 activations
        assert lm.backend == "NativeEngine"
        reference = dequantized_copy(lm.model)
        with torch.no_grad():
            expected = reference(ids).logits.numpy()
        assert abs(lm.engine.logits(ids.numpy()) - expected).max() <= 1e-4
        prompt = lm.encode("Once upon a time")
        with torch.no_grad():
            tokens = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                        do_sample=False, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
        steps = list(lm.generate_ids([prompt], stentor.infer.SamplingParams(stop_at_eos=False, **greedy)))
        assert [s.tokens[0] for s in steps] == tokens[0, len(prompt):].tolist()
        return
    assert lm.backend == "Engine"  # int8-dynamic and int4 run on the torch engine's kernels
    with torch.no_grad():
        expected = lm.model(ids).logits
    assert torch.allclose(lm.engine.logits(ids), expected, atol=1e-4)
    assert lm.generate("Once upon a time", **greedy) == stentor.load(out, engine="hf").generate("Once upon a time", **greedy)
