import pickle
import random

import numpy as np
import pytest
import torch

from stentor.data import IGNORE_INDEX, PackedBlocks, collate_blocks
from stentor.errors import StentorError

EOS = 1


def reference_pack(docs: list[list[int]], block_size: int) -> list[tuple[list[int], list[int]]]:
    """The card's packing written the slow, obvious way: a remainder buffer carried across
    documents, full blocks emitted as they fill, the leftover padded with EOS (labels -100)."""
    blocks, buffer = [], []
    for doc in docs:
        buffer.extend(doc)
        while len(buffer) >= block_size:
            blocks.append((buffer[:block_size], buffer[:block_size]))
            buffer = buffer[block_size:]
    if buffer:
        pad = block_size - len(buffer)
        blocks.append((buffer + [EOS] * pad, buffer + [IGNORE_INDEX] * pad))
    return blocks


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_packing_equals_remainder_buffer_reference(seed, block_size):
    rng = random.Random(seed)
    docs = [[0, *(rng.randrange(2, 500) for _ in range(rng.randint(0, 150))), EOS] for _ in range(rng.randint(1, 30))]
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    packed = PackedBlocks(tokens, block_size, eos_id=EOS)
    expected = reference_pack(docs, block_size)
    assert len(packed) == len(expected)
    for i, (ids, labels) in enumerate(expected):
        item = packed[i]
        assert item["input_ids"].dtype == torch.long
        assert item["input_ids"].tolist() == ids
        assert item["labels"].tolist() == labels


def test_final_partial_block_is_eos_padded_with_masked_labels():
    packed = PackedBlocks(np.arange(10, 20, dtype=np.uint16), block_size=4, eos_id=EOS)
    assert len(packed) == 3
    assert packed[2]["input_ids"].tolist() == [18, 19, EOS, EOS]
    assert packed[2]["labels"].tolist() == [18, 19, IGNORE_INDEX, IGNORE_INDEX]
    assert packed[1]["labels"].tolist() == [14, 15, 16, 17]
    with pytest.raises(IndexError):
        packed[3]


def test_exact_multiple_has_no_padding_block():
    packed = PackedBlocks(np.arange(8, dtype=np.uint32), block_size=4, eos_id=EOS)
    assert len(packed) == 2
    assert IGNORE_INDEX not in packed[1]["labels"].tolist()


def test_bad_packing_arguments_are_clear_errors():
    with pytest.raises(StentorError, match="block_size"):
        PackedBlocks(np.arange(8), block_size=0, eos_id=EOS)
    with pytest.raises(StentorError, match="empty"):
        PackedBlocks(np.zeros(0, dtype=np.uint16), block_size=4, eos_id=EOS)


def test_collator_pads_to_multiple_of_eight():
    items = [{"input_ids": torch.arange(5), "labels": torch.arange(5)},
             {"input_ids": torch.arange(10, 19), "labels": torch.arange(10, 19)}]
    batch = collate_blocks(items, pad_id=3)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0].tolist() == [0, 1, 2, 3, 4] + [3] * 11
    assert batch["labels"][0].tolist() == [0, 1, 2, 3, 4] + [IGNORE_INDEX] * 11
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 11
    assert batch["attention_mask"][1].tolist() == [1] * 9 + [0] * 7
    assert batch["labels"][1, :9].tolist() == list(range(10, 19))


def test_collator_keeps_full_blocks_unpadded_and_respects_multiple():
    packed = PackedBlocks(np.arange(64, dtype=np.uint16), block_size=16, eos_id=EOS)
    batch = collate_blocks([packed[0], packed[1]], pad_id=0)
    assert batch["input_ids"].shape == (2, 16)
    assert bool(batch["attention_mask"].all())
    assert collate_blocks([packed[0]], pad_id=0, multiple=5)["input_ids"].shape == (1, 20)


def test_pickling_a_memmapped_stream_sends_the_file_name_not_the_tokens(tmp_path):
    tokens = np.arange(50_000, dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    mapped = PackedBlocks(np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r"), 64, eos_id=EOS)
    blob = pickle.dumps(mapped)
    assert len(blob) < 1000
    copy = pickle.loads(blob)
    assert isinstance(copy.tokens, np.memmap) and len(copy) == len(mapped)
    assert copy[len(copy) - 1]["labels"].tolist() == mapped[len(mapped) - 1]["labels"].tolist()
    # an in-memory array (or a slice of a file) is pickled by value, as usual
    sliced = PackedBlocks(mapped.tokens[64:], 64, eos_id=EOS)
    assert pickle.loads(pickle.dumps(sliced))[0]["input_ids"].tolist() == list(range(64, 128))
