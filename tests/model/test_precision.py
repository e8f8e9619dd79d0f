import copy

import pytest
import torch

from stentor.model.build import build_model
from stentor.model.precision import apply_t4_recipe
from stentor.model.presets import get_preset


def test_counts_match_the_card():
    model = build_model(get_preset("stentor2-12m"), init=False, device="meta")
    report = apply_t4_recipe(model)
    assert (report.fp32_norms, report.critical_layers, report.fp32_softmax) == (25, 2, 0)
    assert "sdpa" in report.softmax_note


def _record_dtypes(model):
    seen = {}

    def hook(name):
        def fn(module, inputs, output):
            seen[name] = (inputs[0].dtype, output.dtype if isinstance(output, torch.Tensor) else output[0].dtype)

        return fn

    handles = [
        model.model.norm.register_forward_hook(hook("final_norm")),
        model.model.layers[0].register_forward_hook(hook("layer0")),
        model.model.layers[0].mlp.down_proj.register_forward_hook(hook("layer0_mlp")),
        model.model.layers[1].mlp.down_proj.register_forward_hook(hook("layer1_mlp")),
        model.model.layers[2].mlp.down_proj.register_forward_hook(hook("layer2_mlp")),
    ]
    return seen, handles


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_cpu_autocast(dtype):
    model = build_model(get_preset("stentor2-tiny").replace(num_hidden_layers=4), seed=0)
    apply_t4_recipe(model, critical_layers=2)
    norm_calls = []
    orig = torch.Tensor.pow

    seen, handles = _record_dtypes(model)
    ids = torch.randint(0, 8000, (2, 12))
    with torch.autocast("cpu", dtype=dtype):
        # Inside a norm the squared activations must be FP32 even under autocast.
        def spy(self, *a, **k):
            norm_calls.append(self.dtype)
            return orig(self, *a, **k)

        torch.Tensor.pow = spy
        try:
            logits = model(ids).logits
        finally:
            torch.Tensor.pow = orig
    for h in handles:
        h.remove()
    assert norm_calls and all(d == torch.float32 for d in norm_calls)
    assert seen["layer0_mlp"][1] == torch.float32  # critical layers: autocast off
    assert seen["layer1_mlp"][1] == torch.float32
    assert seen["layer2_mlp"][1] == dtype  # the rest runs in reduced precision
    assert seen["final_norm"][1] == seen["final_norm"][0]  # output dtype restored
    assert torch.isfinite(logits.float()).all()
    for layer in model.model.layers[:2]:
        assert all(p.dtype == torch.float32 for p in layer.parameters())


def test_half_model_critical_layers_stay_fp32_and_return_half():
    model = build_model(get_preset("stentor2-tiny").replace(num_hidden_layers=3), seed=0).half()
    apply_t4_recipe(model)
    assert all(p.dtype == torch.float32 for p in model.model.layers[0].parameters())
    assert all(p.dtype == torch.float16 for p in model.model.layers[2].mlp.parameters())
    assert model.model.layers[2].input_layernorm.weight.dtype == torch.float32  # FP32 norms
    seen, handles = _record_dtypes(model)
    model(torch.randint(0, 8000, (1, 8)))
    assert seen["layer0"] == (torch.float16, torch.float16)
    assert seen["final_norm"] == (torch.float16, torch.float16)
    for h in handles:
        h.remove()


def test_recipe_keeps_outputs_and_state_dict():
    model = build_model(get_preset("stentor2-tiny"), seed=3).eval()
    ids = torch.randint(0, 8000, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
    keys = list(model.state_dict())
    apply_t4_recipe(model)
    with torch.no_grad():
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert list(model.state_dict()) == keys
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.allclose(clone(ids).logits, after)


def test_training_steps_under_the_recipe():
    torch.manual_seed(0)
    model = build_model(get_preset("stentor2-tiny"), seed=0)
    apply_t4_recipe(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 200, (4, 32))
    losses = []
    for _ in range(12):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 1.0


def test_bad_critical_layer_count():
    model = build_model(get_preset("stentor2-tiny"), init=False, device="meta")
    with pytest.raises(ValueError, match="critical_layers"):
        apply_t4_recipe(model, critical_layers=5)
