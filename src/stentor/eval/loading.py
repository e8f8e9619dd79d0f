"""Load any Hugging Face causal LM and its tokenizer for evaluation, with one-line errors."""

from __future__ import annotations

from pathlib import Path

from stentor.errors import StentorError
from stentor.model.loading import load_model


def load_tokenizer(path: str):
    """`stentor.tokenizer.hf.load_tokenizer`, with the error a model dir without a tokenizer deserves."""
    from stentor.tokenizer.hf import load_tokenizer as load_any_tokenizer

    try:
        return load_any_tokenizer(path)
    except StentorError:
        raise
    except Exception as exc:  # tokenizer loaders raise OSError, ValueError, TypeError, KeyError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(
            f"no usable tokenizer at {path} ({first}); save one beside the model with "
            f"tokenizer.save_pretrained({path}) or pass --tokenizer PATH"
        ) from None


def load_model_and_tokenizer(model_path: str, tokenizer_path: str | None = None, device: str = "cpu",
                             dtype: str | None = None):
    """Tokenizer first (cheap, and its absence is the commoner mistake), then the model; check they agree."""
    if not Path(model_path).exists() and (model_path.startswith((".", "/", "~")) or model_path.count("/") > 1):
        raise StentorError(f"model dir {model_path} does not exist; pass a directory written by save_pretrained")
    tokenizer = load_tokenizer(tokenizer_path or model_path)
    model = load_model(model_path, device, dtype)
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
