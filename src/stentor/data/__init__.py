"""Data pipeline: sources → clean_text → validation split → token budget → token files → packed blocks.

    from stentor.data import DataConfig, SourceSpec, prepare_data, PackedBlocks, collate_blocks
    data = prepare_data(DataConfig(sources=[SourceSpec(path="corpus/*.jsonl")], val_docs=100), tokenizer, "prepared/")
    train = PackedBlocks(data.train_tokens, block_size=1024, eos_id=data.meta["eos_id"])

Names are imported on first use: the CLI imports this package for `stentor data`, and `--help`
should not pay for numpy and tqdm (nor tokenizer worker processes for torch, which packing needs).
"""

from stentor.lazy import lazy_exports

_EXPORTS = {
    "clean_text": "stentor.data.clean",
    "DataConfig": "stentor.data.prepare",
    "PreparedData": "stentor.data.prepare",
    "prepare_data": "stentor.data.prepare",
    "wait_for_prepared": "stentor.data.prepare",
    "SourceSpec": "stentor.data.sources",
    "IGNORE_INDEX": "stentor.data.packing",
    "PackedBlocks": "stentor.data.packing",
    "collate_blocks": "stentor.data.packing",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
