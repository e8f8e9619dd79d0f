"""Model presets: named, validated architecture configs.

A preset is pure data (no torch import). `stentor2-12m` and `stentor-12m-v1` are the
card's models; the small presets are ours, for tests and the offline quickstart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from stentor.errors import StentorError


# The card's "Recommended Generation Settings" (personal favourites) are our sampling defaults.
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_p": 0.7, "repetition_penalty": 1.2}
MAX_NEW_TOKENS_DEFAULT = 500  # a ceiling: the model usually stops at EOS by itself
# The card's recommended ranges and what goes wrong outside them: (low, high, below low, above high).
SAMPLING_RANGES = {
    "temperature": (0.6, 0.9, "below 0.6 the model leans on PDF tokens that show as U+FFFD", "above 0.9 it gets chaotic"),
    "top_p": (0.6, 0.8, "below 0.6 PDF tokens (U+FFFD) become much more frequent", None),
    "repetition_penalty": (1.1, 1.4, "below 1.1 the model falls into loops", None),
}
# The card's hosted-widget examples: (title, prompt).
WIDGET_PROMPTS = [
    ("Story Generation", "Once upon a time"),
    ("Toy Explanation (Often Wrong)", "Explain neural networks in simple terms."),
    ("Code Continuation", "def fibonacci(n):"),
    ("Science Continuation", "The laws of thermodynamics describe"),
]


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder, in the card's vocabulary (see docs/architecture.md)."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    description: str = ""

    def __post_init__(self) -> None:
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            if getattr(self, field) <= 0:
                raise StentorError(f"model config {self.name!r}: {field} must be positive, got {getattr(self, field)}")
        if self.hidden_size % self.num_attention_heads:
            raise StentorError(
                f"model config {self.name!r}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}; pick heads that divide the hidden size"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise StentorError(
                f"model config {self.name!r}: num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}; KV heads must divide the query heads (GQA)"
            )
        for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(self, field)
            if not 0 <= token_id < self.vocab_size:
                raise StentorError(
                    f"model config {self.name!r}: {field} {token_id} is outside the vocabulary (size {self.vocab_size})"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed, validated again."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise StentorError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def padded_vocab_size(base_vocab: int, multiple: int = 128) -> int:
    """Base vocabulary + EOS + BOS, rounded up to a multiple (8,000 -> 8,064)."""
    return -(-(base_vocab + 2) // multiple) * multiple


def stentor2_special_ids(base_vocab: int) -> dict[str, int]:
    """Our special-token layout (docs/decisions.md): EOS = V, BOS = V + 1, PAD = EOS."""
    return {"eos_token_id": base_vocab, "bos_token_id": base_vocab + 1, "pad_token_id": base_vocab}


def _stentor2(name: str, description: str, base_vocab: int = 8000, **arch) -> ModelConfig:
    return ModelConfig(
        name=name,
        vocab_size=padded_vocab_size(base_vocab),
        description=description,
        **stentor2_special_ids(base_vocab),
        **arch,
    )


PRESETS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        _stentor2(
            "stentor2-12m",
            "Stentor2-12M as on the card: TokenMonster 8,000 + specials padded to 8,064; 12,294,400 params",
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=12,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
        ),
        ModelConfig(
            name="stentor-12m-v1",
            description="Stentor-12M v1 as on the card: Mistral 32,768 BPE vocab; 12,047,040 params",
            vocab_size=32768,
            hidden_size=192,
            intermediate_size=576,
            num_hidden_layers=12,
            num_attention_heads=3,
            num_key_value_heads=3,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        ),
        _stentor2(
            "stentor2-mini",
            "ours: 1.4M-param Stentor2-shaped model for the offline quickstart (CPU, minutes)",
            base_vocab=4000,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
        ),
        _stentor2(
            "stentor2-tiny",
            "ours: a few-hundred-thousand-param model for tests",
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
        ),
        _stentor2(
            "stentor2-tiny-gqa",
            "ours: tiny test model with grouped-query attention (4 heads, 2 KV heads)",
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        ),
    )
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise StentorError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}") from None
