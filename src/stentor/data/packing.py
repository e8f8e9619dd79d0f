"""Packing a flat token stream into fixed-length causal-LM blocks, and batching them.

Block i is simply tokens[i*bs:(i+1)*bs]: over a stream of concatenated <s> doc </s>
sequences this is the card's packing with a remainder buffer, with labels equal to the
inputs and no masking at document boundaries. Only the last, partial block is padded.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from stentor.errors import StentorError

IGNORE_INDEX = -100  # label value the cross-entropy loss skips


class PackedBlocks(torch.utils.data.Dataset):
    """Map-style dataset of `block_size`-token blocks over `tokens`.

    The final partial block is padded with `eos_id`, and its padded positions get label -100.
    Random access makes a shuffled epoch just a permutation of block indices.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, eos_id: int):
        if block_size < 1:
            raise StentorError(f"block_size must be >= 1 (got {block_size})")
        if len(tokens) == 0:
            raise StentorError("cannot pack an empty token stream; prepare data with at least one document")
        self.tokens = tokens
        self.block_size = block_size
        self.eos_id = eos_id

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn/forkserver (macOS, Windows) get the file name and map it
        # themselves, instead of each receiving a pickled copy of a token file that can be gigabytes.
        state = self.__dict__.copy()
        t = self.tokens
        if isinstance(t, np.memmap) and t.filename and t.offset == 0 and t.nbytes == os.path.getsize(t.filename):
            state["tokens"] = (t.filename, t.dtype.str)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["tokens"], tuple):
            filename, dtype = state["tokens"]
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r")
        self.__dict__.update(state)

    def __len__(self) -> int:
        return -(-len(self.tokens) // self.block_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        chunk = torch.from_numpy(np.asarray(self.tokens[i * self.block_size : (i + 1) * self.block_size], dtype=np.int64))
        labels = chunk.clone()
        pad = self.block_size - len(chunk)
        if pad:
            chunk = torch.cat([chunk, torch.full((pad,), self.eos_id, dtype=torch.long)])
            labels = torch.cat([labels, torch.full((pad,), IGNORE_INDEX, dtype=torch.long)])
        return {"input_ids": chunk, "labels": labels}


def collate_blocks(items: list[dict[str, torch.Tensor]], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Stack items, padding to the longest rounded up to `multiple` (tensor-core friendly shapes).

    `input_ids` are padded with `pad_id`, `labels` with -100 and `attention_mask` with 0.
    """
    longest = max(len(item["input_ids"]) for item in items)
    width = -(-longest // multiple) * multiple
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, :n] = item["input_ids"]
        labels[row, :n] = item["labels"]
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
