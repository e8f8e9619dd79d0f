"""Build a preset as a Hugging Face `LlamaForCausalLM`, initialize it as the card does, save it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from stentor.errors import StentorError
from stentor.fileio import atomic_dir
from stentor.model.presets import MAX_NEW_TOKENS_DEFAULT, SAMPLING_DEFAULTS, ModelConfig


def to_llama_config(cfg: ModelConfig, attn_implementation: str = "sdpa") -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        hidden_act=cfg.hidden_act,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )
    config._attn_implementation = attn_implementation
    config.architectures = ["LlamaForCausalLM"]
    return config


def config_from_dir(model_dir: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a saved Llama-shaped model directory (its config.json), e.g. to fine-tune it."""
    from stentor.fileio import read_json
    from stentor.hub import local_path

    path = local_path(os.fspath(model_dir))
    if not (path / "config.json").is_file():
        raise StentorError(f"{model_dir} is not a model directory (no config.json); give a directory saved by stentor "
                           "or a hub id like StentorLabs/Stentor2-12M")  # fmt: skip
    from stentor.model.quant_format import is_quantized_dir

    raw = read_json(path / "config.json")
    if is_quantized_dir(path):
        raise StentorError(f"{path} is a `stentor quantize` directory; fine-tune the float model it was made from")
    if raw.get("model_type") != "llama":
        raise StentorError(f"{path} holds a {raw.get('model_type', 'unknown')!r} model; stentor trains Llama-shaped models")
    rope = raw.get("rope_parameters") or {}
    eos = raw.get("eos_token_id")
    try:
        return ModelConfig(
            name=path.name, vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            num_key_value_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
            max_position_embeddings=raw["max_position_embeddings"], bos_token_id=raw["bos_token_id"],
            eos_token_id=eos, pad_token_id=eos if raw.get("pad_token_id") is None else raw["pad_token_id"],
            rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10_000.0))),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-5), hidden_act=raw.get("hidden_act", "silu"),
            tie_word_embeddings=raw.get("tie_word_embeddings", True),
            initializer_range=raw.get("initializer_range", 0.02),
        )  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise StentorError(f"{path / 'config.json'} lacks or mistypes {exc}; it is damaged or not a Llama config") from None


def initialize_weights(model: nn.Module, std: float = 0.02) -> None:
    """The card's init: Linear/Embedding weights N(0, std), biases 0, every RMSNorm weight 1."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif "rmsnorm" in type(module).__name__.lower():
                if getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def build_model(
    cfg: ModelConfig,
    *,
    init: bool = True,
    seed: int | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> LlamaForCausalLM:
    """Instantiate `cfg` as `LlamaForCausalLM`; with `init`, apply the card's initialization."""
    config = to_llama_config(cfg, attn_implementation)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = LlamaForCausalLM(config)
    if init and str(device) != "meta":
        initialize_weights(model, cfg.initializer_range)
        model.tie_weights()
    return model


def generation_config_for(cfg: ModelConfig) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        do_sample=True,
        max_new_tokens=MAX_NEW_TOKENS_DEFAULT,
        **SAMPLING_DEFAULTS,
    )


def save_model_dir(model: LlamaForCausalLM, cfg: ModelConfig, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write a standard HF model directory atomically: config.json, model.safetensors, generation_config.json,
    and the tokenizer's files when one is given (model and tokenizer appear together or not at all)."""
    model.generation_config = generation_config_for(cfg)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
