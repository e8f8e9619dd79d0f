"""Model presets, construction with the card's initialization, the parameter formula, the T4 recipe."""

from stentor.model.presets import PRESETS, ModelConfig, get_preset, padded_vocab_size, stentor2_special_ids

__all__ = ["PRESETS", "ModelConfig", "get_preset", "padded_vocab_size", "stentor2_special_ids"]
