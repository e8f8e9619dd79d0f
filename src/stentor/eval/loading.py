"""Load any Hugging Face causal LM and its tokenizer for evaluation, with one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from stentor.errors import StentorError


def load_model(path: str, device: str = "cpu"):
    """`AutoModelForCausalLM` from a local dir (safetensors only) or a hub id, in eval mode, float32."""
    import torch
    from transformers import AutoModelForCausalLM

    local = Path(path).is_dir()
    if not local and Path(path).exists():
        raise StentorError(f"--model {path} is a file; pass the model directory (config.json + model.safetensors)")
    if local and not (Path(path) / "config.json").is_file():
        raise StentorError(f"model dir {path} has no config.json; pass a directory written by save_pretrained")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError) as exc:
        where = "the directory" if local else "the Hugging Face hub (are you offline?)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(f"cannot load a causal LM from {path} via {where}: {first}") from None
    return model.to(device).eval()


def load_tokenizer(path: str):
    """Our TokenMonster loader when it is installed, else `AutoTokenizer`; a clear error if there is none."""
    try:
        if importlib.util.find_spec("stentor.tokenizer.hf") is not None:
            from stentor.tokenizer.hf import load_tokenizer as load_stentor_tokenizer

            return load_stentor_tokenizer(path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except StentorError:
        raise
    except Exception as exc:  # tokenizer loaders raise OSError, ValueError, TypeError, KeyError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(
            f"no usable tokenizer at {path} ({first}); save one beside the model with "
            f"tokenizer.save_pretrained({path}) or pass --tokenizer PATH"
        ) from None


def load_model_and_tokenizer(model_path: str, tokenizer_path: str | None = None, device: str = "cpu"):
    """Tokenizer first (cheap, and its absence is the commoner mistake), then the model; check they agree."""
    if not Path(model_path).exists() and (model_path.startswith((".", "/", "~")) or model_path.count("/") > 1):
        raise StentorError(f"model dir {model_path} does not exist; pass a directory written by save_pretrained")
    tokenizer = load_tokenizer(tokenizer_path or model_path)
    model = load_model(model_path, device)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise StentorError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model's embedding has only {vocab:,}; "
            "pair the model with the tokenizer it was trained with"
        )
    return model, tokenizer


def start_token_id(tokenizer) -> int:
    """The token every document/sentence is conditioned on: BOS, else EOS (lm-evaluation-harness's rule)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise StentorError("the tokenizer defines neither a BOS nor an EOS token; set tokenizer.bos_token and save it")
