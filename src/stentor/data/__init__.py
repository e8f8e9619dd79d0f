"""Data pipeline: sources → clean_text → validation split → token budget → token files → packed blocks.

    from stentor.data import DataConfig, SourceSpec, prepare_data, PackedBlocks, collate_blocks
    data = prepare_data(DataConfig(sources=[SourceSpec(path="corpus/*.jsonl")], val_docs=100), tokenizer, "prepared/")
    train = PackedBlocks(data.train_tokens, block_size=1024, eos_id=data.meta["eos_id"])
"""

from stentor.data.clean import clean_text
from stentor.data.prepare import DataConfig, PreparedData, prepare_data
from stentor.data.sources import SourceSpec

__all__ = ["IGNORE_INDEX", "DataConfig", "PackedBlocks", "PreparedData", "SourceSpec", "clean_text", "collate_blocks", "prepare_data"]


def __getattr__(name: str):
    # The packing helpers need torch; loading them lazily keeps tokenizer worker processes
    # (which import stentor.data.prepare, and so this package) free of a multi-second torch import.
    if name in ("IGNORE_INDEX", "PackedBlocks", "collate_blocks"):
        from stentor.data import packing

        return getattr(packing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
