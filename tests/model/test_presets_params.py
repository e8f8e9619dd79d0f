import pytest

from stentor.errors import StentorError
from stentor.model.build import build_model
from stentor.model.params import count_parameters, estimate_llama_params, verified_breakdown
from stentor.model.presets import PRESETS, ModelConfig, get_preset, padded_vocab_size, stentor2_special_ids


def test_stentor2_12m_matches_the_card():
    b = verified_breakdown(get_preset("stentor2-12m"))
    assert b.to_dict() == {
        "total": 12_294_400,
        "embedding": 2_064_384,
        "layers": 10_229_760,
        "attention": 3_145_728,
        "mlp": 7_077_888,
        "layer_norms": 6_144,
        "final_norm": 256,
        "non_embedding": 10_230_016,
        "embedding_share_pct": 16.8,
    }


def test_stentor_v1_matches_the_card_total():
    b = verified_breakdown(get_preset("stentor-12m-v1"))
    assert b.total == 12_047_040
    assert b.embedding == 32_768 * 192
    assert round(b.share(b.embedding), 1) == 52.2


@pytest.mark.parametrize("name", list(PRESETS))
def test_formula_equals_instantiated_model(name):
    cfg = get_preset(name)
    assert count_parameters(build_model(cfg, init=False, device="meta")) == estimate_llama_params(cfg).total


def test_padding_and_special_ids():
    assert padded_vocab_size(8000) == 8064
    assert padded_vocab_size(4000) == 4096
    assert padded_vocab_size(126) == 128
    assert padded_vocab_size(127) == 256
    assert stentor2_special_ids(8000) == {"eos_token_id": 8000, "bos_token_id": 8001, "pad_token_id": 8000}


def test_unknown_preset_lists_presets():
    with pytest.raises(StentorError, match="stentor2-12m.*stentor2-tiny"):
        get_preset("stentor9")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_attention_heads": 3}, "not divisible by num_attention_heads"),
        ({"num_key_value_heads": 3, "num_attention_heads": 4}, "KV heads must divide"),
        ({"hidden_size": 0}, "must be positive"),
        ({"eos_token_id": 9000}, "outside the vocabulary"),
        ({"hidden_sise": 12}, "unknown model config field"),
    ],
)
def test_inconsistent_config_is_rejected_before_any_tensor(changes, message):
    with pytest.raises(StentorError, match=message):
        get_preset("stentor2-12m").replace(**changes)


def test_gqa_preset_builds_with_fewer_kv_heads():
    cfg = get_preset("stentor2-tiny-gqa")
    model = build_model(cfg, seed=0)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features == cfg.num_key_value_heads * cfg.head_dim
    assert attn.q_proj.out_features == cfg.num_attention_heads * cfg.head_dim
    assert isinstance(cfg, ModelConfig)
