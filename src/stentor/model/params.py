"""The card's parameter formula and breakdown, checked against a real model."""

from __future__ import annotations

from dataclasses import dataclass

from stentor.errors import StentorError
from stentor.model.presets import ModelConfig


@dataclass(frozen=True)
class ParamBreakdown:
    embedding: int
    attention: int
    mlp: int
    layer_norms: int
    final_norm: int

    @property
    def layers(self) -> int:
        return self.attention + self.mlp + self.layer_norms

    @property
    def total(self) -> int:
        return self.embedding + self.layers + self.final_norm

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    def share(self, part: int) -> float:
        return 100.0 * part / self.total

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "embedding": self.embedding,
            "layers": self.layers,
            "attention": self.attention,
            "mlp": self.mlp,
            "layer_norms": self.layer_norms,
            "final_norm": self.final_norm,
            "non_embedding": self.non_embedding,
            "embedding_share_pct": round(self.share(self.embedding), 1),
        }

    def table(self, name: str, num_layers: int) -> str:
        rows = [
            ("Embedding table (tied with LM head)", self.embedding),
            (f"Transformer layers x {num_layers}", self.layers),
            ("  Attention", self.attention),
            ("  FFN/MLP", self.mlp),
            ("  Layer norms", self.layer_norms),
            ("Final RMS norm", self.final_norm),
            ("Total", self.total),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name}", f"{'Component':<{width}}  {'Parameters':>12}  {'% of total':>10}"]
        lines += [f"{label:<{width}}  {n:>12,}  {self.share(n):>9.3g}%" for label, n in rows]
        lines.append(f"{'Embedding share':<{width}}  {self.share(self.embedding):>23.1f}%")
        lines.append(f"{'Non-embedding params':<{width}}  {self.non_embedding:>12,}")
        return "\n".join(lines)


def estimate_llama_params(cfg: ModelConfig) -> ParamBreakdown:
    """The card's `estimate_llama_params`, split into its parts (tied embeddings counted once)."""
    h = cfg.hidden_size
    kv_dim = h * cfg.num_key_value_heads // cfg.num_attention_heads
    attn = 2 * h * h + 2 * h * kv_dim
    mlp = 3 * h * cfg.intermediate_size
    norm = 2 * h
    n = cfg.num_hidden_layers
    embedding = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return ParamBreakdown(embedding=embedding, attention=n * attn, mlp=n * mlp, layer_norms=n * norm, final_norm=h)


def config_parameters(config: dict) -> int:
    """The parameter count of a Llama-shaped model from its config.json (the card's formula)."""
    from types import SimpleNamespace

    fields = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vocab_size")
    cfg = SimpleNamespace(**{k: config[k] for k in fields}, tie_word_embeddings=config.get("tie_word_embeddings", True),
                          num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"])
    return estimate_llama_params(cfg).total


def count_parameters(model) -> int:
    """Unique parameters of a torch module (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def verified_breakdown(cfg: ModelConfig) -> ParamBreakdown:
    """The formula's breakdown, after checking it against an instantiated model."""
    from stentor.model.build import build_model

    breakdown = estimate_llama_params(cfg)
    real = count_parameters(build_model(cfg, init=False, device="meta"))
    if real != breakdown.total:
        raise StentorError(
            f"preset {cfg.name!r}: the card's formula gives {breakdown.total:,} parameters but the built model has "
            f"{real:,}; the architecture and the formula disagree"
        )
    return breakdown
