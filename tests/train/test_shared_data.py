"""Integration on real text (../shared FineWeb legal pilot): a small preset learns, with held-out docs."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from stentor.data import PreparedData
from stentor.train.config import load_config
from stentor.train.plan import unigram_entropy
from stentor.train.trainer import Trainer

pytestmark = [pytest.mark.shared, pytest.mark.slow, pytest.mark.timeout(180)]

PILOT = "data/fineweb_legal_pilot/fineweb_sample10bt_legal_annotated_2800docs.jsonl"


def byte_bpe_tokenizer(corpus, out_dir, docs: int = 150, vocab: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    with open(corpus) as f:
        for line, _ in zip(f, range(docs)):
            texts.append(json.loads(line)["text"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab - 2, special_tokens=["</s>", "<s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    fast.save_pretrained(str(out_dir))
    return out_dir


def test_small_preset_learns_fineweb_pilot(shared_dir, tmp_path, fresh_accelerate):
    corpus = shared_dir / PILOT
    tokenizer = byte_bpe_tokenizer(corpus, tmp_path / "tokenizer")
    recipe = {
        "model": {"preset": "stentor2-tiny", "overrides": {"vocab_size": 1024}},
        "tokenizer": str(tokenizer),
        "data": {"sources": [{"path": str(corpus), "text_field": "text"}], "val_docs": 40, "source_token_budget": 300_000},
        "prepare_workers": 1,
        "batch": {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "gradient_accumulation_steps": 1,
                  "block_size": 128, "world_size": 1},
        "optim": {"learning_rate": 3e-3},
        "schedule": {"scheduler": "wsd", "max_train_steps": 240, "token_budget": None, "num_train_epochs": 1},
        "eval": {"eval_steps": 120, "max_eval_samples": 64, "best_eval_steps": 120, "best_eval_start_step": 120},
        "checkpoint": {"save_every_minutes": None, "save_steps": None},
        "logging": {"logging_steps": 10},
        "precision": {"mixed_precision": "no", "t4_recipe": False},
    }
    (tmp_path / "pilot.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    result = Trainer(load_config(tmp_path / "pilot.yaml"), run).fit()

    data = PreparedData.load(run / "data")
    assert data.meta["val_docs"] == 40 and data.meta["train_docs"] > 40  # validation docs held out
    entropy = unigram_entropy(data.train_tokens)
    print(f"unigram entropy of the training tokens: {entropy:.4f} nats; final eval loss {result.final_eval_loss:.4f}")
    assert result.final_eval_loss < entropy - 0.5
    with open(run / "training_curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert math.isclose(float(rows[-1]["eval_loss"]), result.final_eval_loss)
    assert (run / "training_curves.png").is_file() and (run / "best" / "model.safetensors").is_file()
    assert (run / "final" / "tokenizer.json").is_file()
