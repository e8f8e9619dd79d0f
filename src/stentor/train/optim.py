"""AdamW with the card's parameter groups.

Decay: the weight of every nn.Linear. No decay: biases, norms, embeddings and anything tied
to them. Tied embeddings matter: the lm_head Linear *is* the embedding matrix, so a weight
that also belongs to an nn.Embedding goes to the no-decay group.
"""

from __future__ import annotations

import torch
from torch import nn

from stentor.train.config import OptimSection


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_weights = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in embedding_weights
    }
    decay, no_decay = [], []
    for p in model.parameters():  # unique parameters: a tied weight appears once
        if p.requires_grad:
            (decay if id(p) in linear_weights else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimSection, device: torch.device) -> torch.optim.AdamW:
    """Fused AdamW on CUDA (card), the multi-tensor (foreach) path elsewhere: one kernel per group, not per tensor."""
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        **impl,
    )
