"""The real pipeline: Stentor's TokenMonster tokenizer over real FineWeb documents (needs ../shared)."""

import json

import numpy as np
import pytest

from stentor.data import DataConfig, PackedBlocks, SourceSpec, clean_text, prepare_data

pytestmark = pytest.mark.shared
VOCAB = "tokenmonster/vocabs/english-8000-strict-cap1-oracle.vocab"
FINEWEB = "data/fineweb_legal_pilot/*.jsonl"


@pytest.fixture(scope="module")
def stentor_tokenizer(shared_dir):
    from stentor.tokenizer.hf import load_tokenizer

    return load_tokenizer(shared_dir / VOCAB)


def fineweb_docs(shared_dir, n):
    (path,) = (shared_dir / FINEWEB).parent.glob("*.jsonl")
    with open(path) as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


def test_stentor_tokenizer_on_fineweb(shared_dir, stentor_tokenizer, tmp_path):
    tok = stentor_tokenizer
    cfg = DataConfig(sources=[SourceSpec(path=str(shared_dir / FINEWEB))], val_docs=5, source_token_budget=30_000)
    data = prepare_data(cfg, tok, tmp_path / "o", num_workers=0)
    assert data.train_tokens.dtype == np.uint16 and len(data.train_tokens) == 30_000
    assert (data.meta["vocab_size"], data.meta["bos_id"], data.meta["eos_id"]) == (len(tok), tok.bos_token_id, tok.eos_token_id)
    # the fast TokenMonster path gives exactly the ids of the HF tokenizer API
    docs = fineweb_docs(shared_dir, 8)
    expected = [t for d in docs[:5] for t in [tok.bos_token_id, *tok.encode(clean_text(d), add_special_tokens=False), tok.eos_token_id]]
    assert data.val_tokens.tolist() == expected
    first_train = [tok.bos_token_id, *tok.encode(clean_text(docs[5]), add_special_tokens=False), tok.eos_token_id]
    assert data.train_tokens[: len(first_train)].tolist() == first_train
    assert "Ġ" not in tok.decode(data.val_tokens[:200].tolist())
    assert len(PackedBlocks(data.train_tokens, 1024, data.meta["eos_id"])) == data.num_blocks(1024) == 30


@pytest.mark.slow
def test_stentor_tokenizer_in_worker_processes(shared_dir, stentor_tokenizer, tmp_path):
    cfg = DataConfig(sources=[SourceSpec(path=str(shared_dir / FINEWEB))], val_docs=20, source_token_budget=200_000)
    prepare_data(cfg, stentor_tokenizer, tmp_path / "w0", num_workers=0)
    prepare_data(cfg, stentor_tokenizer, tmp_path / "w2", num_workers=2)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "w0" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
