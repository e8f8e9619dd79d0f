"""A damaged checkpoint, curves log or token file is refused with one error naming it, before a resume changes anything."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from stentor.errors import StentorError
from stentor.model.build import build_model
from stentor.model.presets import get_preset
from stentor.train.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint


def _parts():
    model = build_model(get_preset("stentor2-tiny"), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "extra.pt", "trainer_state.json"])
def test_a_flipped_byte_in_any_checkpoint_file_is_found_before_resuming(tmp_path, name):
    model, optimizer, scheduler = _parts()
    path = save_checkpoint(tmp_path, TrainerState(step=3), model, optimizer, scheduler, None, [rng_state()], 2)
    fresh = _parts()
    assert load_checkpoint(latest_checkpoint(tmp_path), *fresh, None, 0).step == 3  # intact: it loads
    data = bytearray((path / name).read_bytes())
    data[random.Random(name).randrange(len(data))] ^= 0x10
    (path / name).write_bytes(bytes(data))
    with pytest.raises(StentorError, match=f"{name} does not match its checksum.*earlier checkpoint"):
        load_checkpoint(path, *_parts(), None, 0)


def test_a_damaged_latest_pointer_and_an_unchecked_damaged_checkpoint_are_one_line(tmp_path):
    model, optimizer, scheduler = _parts()
    path = save_checkpoint(tmp_path, TrainerState(step=3), model, optimizer, scheduler, None, [rng_state()], 2)
    (path.parent / "latest").write_bytes(b"\xffstep-3\n")
    with pytest.raises(StentorError, match="latest is damaged: not UTF-8"):
        latest_checkpoint(tmp_path)
    (path.parent / "latest").write_text("steq-3\n")
    with pytest.raises(StentorError, match="should name a checkpoint"):
        latest_checkpoint(tmp_path)
    (path / "checksums.json").unlink()  # as a checkpoint from before checksums
    (path / "optimizer.pt").write_bytes((path / "optimizer.pt").read_bytes()[:100])
    with pytest.raises(StentorError, match="cannot resume from"):
        load_checkpoint(path, *_parts(), None, 0)


def test_a_damaged_curves_log_is_named_and_a_line_cut_by_a_kill_is_dropped(tmp_path):
    from stentor.train.curves import read_rows

    path = tmp_path / "training_curves.csv"
    path.write_text("step,epoch,train_loss,eval_loss,eval_ppl,note\n1,0.1,3.0,,,\n2,0.2,2.9,,,\n3,0.3")
    assert [r["step"] for r in read_rows(path)] == ["1", "2"]
    for damaged in (b"step,epoch,train_loss,eval_loss,eval_ppl,note\n1,0.1,3.x,,,\n2,0.2,2.9,,,\n",
                    b"step,epoch,train_loss,eval_loss,eval_ppl,note\n1,0.1,3.0,,,\xff\n"):  # fmt: skip
        path.write_bytes(damaged)
        with pytest.raises(StentorError, match="training_curves.csv"):
            read_rows(path)


def test_flipped_tokens_in_prepared_data_are_found(tmp_path):
    from train_helpers import make_corpus, make_tokenizer

    from stentor.data.prepare import FORMAT_VERSION, DataConfig, PreparedData, prepare_data
    from stentor.data.sources import SourceSpec
    from stentor.tokenizer.hf import load_tokenizer

    corpus = make_corpus(tmp_path / "corpus.jsonl", docs=40)
    tokenizer = load_tokenizer(str(make_tokenizer(tmp_path / "tok", corpus)))
    cfg = DataConfig(sources=[SourceSpec(path=str(corpus))], val_docs=5, source_token_budget=None)
    out = tmp_path / "data"
    prepare_data(cfg, tokenizer, out, num_workers=0)
    assert len(PreparedData.load(out).train_tokens) > 0
    tokens = np.fromfile(out / "train.bin", dtype=np.uint16)
    tokens[7] ^= 1
    tokens.tofile(out / "train.bin")
    with pytest.raises(StentorError, match="train.bin does not match the checksum"):
        PreparedData.load(out)
    (out / "meta.json").write_text(f'{{"format_version": {FORMAT_VERSION}, "dtype": "uint1k"}}')
    with pytest.raises(StentorError, match="meta.json is damaged"):
        PreparedData.load(out)
