"""`stentor export onnx`: a real torch.onnx export, checked on onnxruntime against torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from stentor.cli import main
from stentor.errors import StentorError
from stentor.model.loading import load_model
from stentor.export.onnx import OnnxDecoder, export_onnx


@pytest.fixture(scope="module")
def exported(gqa_dir, tmp_path_factory):
    return export_onnx(gqa_dir, tmp_path_factory.mktemp("onnx") / "out")


def test_graph_interface_and_files(exported, gqa_dir):
    out = exported.path.parent
    assert {"config.json", "tokenizer.json", "generation_config.json", "model.onnx"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()
    graph = onnx.load(str(exported.path)).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert inputs["input_ids"] == ["batch", "seq"]
    assert inputs["past_key_values.1.value"] == ["batch", 2, "past", 16]  # GQA: 2 KV heads of 16
    assert outputs["present.0.key"] == ["batch", 2, "total", 16]
    assert outputs["logits"] == ["batch", "seq", 384]
    assert len(inputs) == 3 + 2 * 2 and len(outputs) == 1 + 2 * 2
    assert exported.max_abs_diff < 1e-4


def test_onnxruntime_matches_torch_on_new_shapes(exported, gqa_dir):
    """Batch 3, a 5-token prompt, then three cached single-token steps: logits within 1e-4 each time."""
    model = load_model(str(gqa_dir))
    decoder = OnnxDecoder(exported.path, 2, 2, 16)
    ids = torch.randint(0, 384, (3, 8), generator=torch.Generator().manual_seed(1))
    past = [np.zeros((3, 2, 0, 16), np.float32) for _ in range(4)]
    with torch.no_grad():
        want = model(ids).logits.numpy()
    got, past = decoder.step(ids[:, :5].numpy(), np.ones((3, 5), np.int64), past)
    assert np.abs(got - want[:, :5]).max() < 1e-4
    for t in range(5, 8):
        got, past = decoder.step(ids[:, t : t + 1].numpy(), np.ones((3, t + 1), np.int64), past)
        assert np.abs(got[:, 0] - want[:, t]).max() < 1e-4
    assert past[0].shape == (3, 2, 8, 16)


def test_greedy_on_onnxruntime_equals_hf_generate(exported, gqa_dir):
    model = load_model(str(gqa_dir))
    prompt = [7, 1, 200, 33, 9]
    with torch.no_grad():
        hf = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    want = hf[0, len(prompt) :].tolist()
    assert len(want) == 12
    assert OnnxDecoder(exported.path, 2, 2, 16).greedy(prompt, 12) == want


def test_bad_input(tiny_dir, tmp_path, capsys):
    with pytest.raises(StentorError, match="--opset 9"):
        export_onnx(tiny_dir, tmp_path / "o", opset=9)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "onnx", "--model", str(tiny_dir), "-o", str(blocker / "o")]) == 2
    assert "cannot write to" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "stentor: error:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
