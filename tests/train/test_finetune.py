"""`stentor finetune`: supervised fine-tuning on conversations (loss on the assistant turns only) and continued
pretraining, both from a model a real `stentor train` run made, on data the test makes."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import yaml
from train_helpers import ADJS, NOUNS, VERBS, make_corpus, run_stentor, tiny_recipe, word_tokenizer, write_recipe

from stentor.data.chat import encode_conversation, load_chat
from stentor.data.packing import IGNORE_INDEX
from stentor.data.sources import SourceSpec
from stentor.errors import StentorError

pytestmark = pytest.mark.timeout(300)

WORDS = [*NOUNS, *VERBS, *ADJS, "the", ".", "what", "does", "do", "?", "one", "two", "three", "four", "and"]


def tokenizer():
    """A StentorTokenizer over the test's words and the chat template's role lines."""
    return word_tokenizer(WORDS, ("<|user|>\n", "<|assistant|>\n", "\n"))


def conversation(rng: random.Random) -> dict:
    """The corpus's rule as questions: an adjective fixes its noun and a noun its verb."""
    adj = rng.choice(ADJS)
    noun = NOUNS[ADJS.index(adj)]
    verb = VERBS[NOUNS.index(noun) % len(VERBS)]
    return {"messages": [{"role": "user", "content": f"what does the {adj} {noun} do ?"},
                         {"role": "assistant", "content": f"the {adj} {noun} {verb} the {rng.choice(NOUNS)} ."}]}  # fmt: skip


def test_only_assistant_turns_and_their_eos_are_learned_and_the_context_is_the_inference_prompt(base_model):
    import stentor

    tok = tokenizer()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what does the cat do ?"},
                {"role": "assistant", "content": "the cat sees the dog ."}, {"role": "user", "content": "and the owl ?"},
                {"role": "assistant", "content": "the owl hears the fox ."}]  # fmt: skip
    ids, labels = encode_conversation(tok, messages)
    assert len(ids) == len(labels)
    learned = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tok.decode(learned) == "the cat sees the dog .</s>the owl hears the fox .</s>"
    assert learned.count(tok.eos_token_id) == 2 and labels[-1] == tok.eos_token_id
    # Up to each reply, the tokens are exactly what generate --chat and the server would feed the model.
    lm = stentor.load(base_model)  # saved with this vocabulary
    first_reply = labels.index(next(label for label in labels if label != IGNORE_INDEX))
    assert ids[:first_reply] == lm.encode_chat(messages[:2])


def test_bad_conversations_are_one_line_naming_them(tmp_path):
    tok = tokenizer()
    cases = {"no reply": [{"role": "user", "content": "hi"}],
             "bad role": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}],
             "not a list": "hello"}  # fmt: skip
    for name, messages in cases.items():
        path = tmp_path / f"{name}.jsonl"
        good = json.dumps(conversation(random.Random(0)))
        path.write_text(good + "\n" + json.dumps({"messages": messages}) + "\n")
        with pytest.raises(StentorError, match="conversation 2: "):
            load_chat([SourceSpec(path=str(path), text_field="messages")], tok, val_docs=1, block_size=64, seed=0)


def test_long_conversations_are_cut_with_a_warning_never_in_silence(tmp_path, caplog):
    tok = tokenizer()
    path = tmp_path / "chat.jsonl"
    rng = random.Random(1)
    rows = [conversation(rng) for _ in range(4)]
    rows[3]["messages"][1]["content"] = " ".join(["the cat ."] * 40)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, val = load_chat([SourceSpec(path=str(path), text_field="messages")], tok, val_docs=1, block_size=32, seed=0)
    assert len(val) == 1 and len(train) == 3 and max(len(x) for x in train.ids) == 32
    assert "1 conversations were longer than block_size 32" in caplog.text


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny model pretrained by `stentor train` on the template corpus, with a StentorTokenizer."""
    from stentor.model.presets import padded_vocab_size

    root = tmp_path_factory.mktemp("finetune-base")
    tok = tokenizer()
    (root / "words.vocab").write_bytes(tok.vocab.to_bytes())
    corpus = make_corpus(root / "corpus.jsonl", docs=300)
    recipe = tiny_recipe(corpus, root / "words.vocab", model={"preset": "stentor2-tiny",
                         "overrides": {"vocab_size": padded_vocab_size(len(tok) - 2)}}, schedule={"max_train_steps": 60})  # fmt: skip
    recipe["prepared_dir"], recipe["prepare_workers"] = str(root / "prepared"), 0
    result = run_stentor("train", "--config", str(write_recipe(root / "base.yaml", recipe)), "--out", str(root / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "final"


def eval_losses(run: Path) -> list[tuple[int, float, str]]:
    with open(run / "training_curves.csv", newline="") as f:
        return [(int(r["step"]), float(r["eval_loss"]), r["note"]) for r in csv.DictReader(f) if r["eval_loss"]]


SCHEDULE = {"scheduler": "cosine", "warmup_ratio": 0.05, "max_train_steps": 60, "token_budget": None, "num_train_epochs": 10}


def finetune_recipe(root: Path, sources: list[dict], task: str, **changes) -> Path:
    recipe = yaml.safe_load((Path(__file__).parents[2] / "configs" / f"finetune-{'chat' if task == 'chat' else 'text'}.yaml").read_text())
    recipe["data"]["sources"] = sources
    recipe["batch"].update(per_device_train_batch_size=8, block_size=64)
    recipe["schedule"].update(SCHEDULE)
    recipe["eval"].update(eval_steps=20, best_eval_steps=20, best_eval_start_step=20)
    recipe.update(changes)
    return write_recipe(root / f"{task}.yaml", recipe)


def test_chat_fine_tune_lowers_held_out_assistant_loss_and_answers_in_the_template(base_model, tmp_path):
    import stentor

    rng = random.Random(3)
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps(conversation(rng)) + "\n" for _ in range(400)))
    sources = [{"path": str(chats), "text_field": "messages"}]
    recipe = finetune_recipe(tmp_path, sources, "chat", data={"sources": sources, "val_docs": 40, "seed": 1},
                             optim={"learning_rate": 3e-3}, schedule={**SCHEDULE, "max_train_steps": 150})  # fmt: skip
    run = tmp_path / "run"
    result = run_stentor("finetune", "--from", str(base_model), "--config", str(recipe), "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fine-tuned 150 steps" in result.stdout
    losses = eval_losses(run)
    assert losses[0][0] == 0 and losses[0][2] == "before fine-tuning"
    assert losses[-1][1] < 0.7 * losses[0][1], losses  # held-out assistant tokens: the replies were learned
    from stentor.infer.decoding import SamplingParams

    lm = stentor.load(run / "final")
    prompt = lm.encode("what does the red bird do ?", chat=True)
    steps = list(lm.generate_ids([prompt], SamplingParams(greedy=True, max_new_tokens=24)))
    reply = [s.tokens[0] for s in steps]
    text = lm.tokenizer.decode(reply[:-1])
    assert reply[-1] in lm.eos_ids and "<|" not in text, text  # a reply, then EOS: the template's turn ends
    words = text.split()  # an answer in the replies' own form, obeying the corpus's rule
    assert len(words) == 7 and words[0] == words[4] == "the" and words[6] == "." and words[1] in ADJS, text
    assert words[2] == NOUNS[ADJS.index(words[1])] and words[3] == VERBS[NOUNS.index(words[2]) % len(VERBS)], text


def test_continued_pretraining_lowers_held_out_loss_on_the_new_domain_and_resumes(base_model, tmp_path):
    rng = random.Random(5)
    counting = tmp_path / "counting.jsonl"
    numbers = ["one", "two", "three", "four"]
    with open(counting, "w") as f:
        for _ in range(300):
            start = rng.randrange(4)
            f.write(json.dumps({"text": " ".join(numbers[(start + i) % 4] for i in range(rng.randint(8, 30)))}) + "\n")
    sources = [{"path": str(counting), "text_field": "text"}]
    recipe = finetune_recipe(tmp_path, sources, "text", prepared_dir=str(tmp_path / "prepared"),
                             checkpoint={"save_every_minutes": None, "save_steps": 20, "save_total_limit": 2})  # fmt: skip
    run = tmp_path / "run"
    result = run_stentor("finetune", "--from", str(base_model), "--config", str(recipe), "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = eval_losses(run)
    # 60 steps at the shipped recipe's LR: 7.64 -> 4.65 here, under 3.8 on another CPU (fp32 kernels round
    # differently, and 60 steps at this LR amplify it); well below the start is what the test is about.
    assert losses[0][2] == "before fine-tuning" and losses[-1][1] < 0.7 * losses[0][1], losses
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["init_from"] == str(base_model) and saved["task"] == "pretrain"
    again = run_stentor("finetune", "--resume", str(run))
    assert again.returncode == 0 and "already finished" in again.stderr, again.stderr[-2000:]
    refused = run_stentor("finetune", "--config", str(recipe), "--out", str(tmp_path / "other"))
    assert refused.returncode == 2 and refused.stderr.strip().endswith("(e.g. quickstart/run/final)")


def test_a_run_from_before_fine_tuning_existed_still_resumes_its_config(tmp_path):
    from stentor.train.config import CONFIG_FILE, TrainConfig, load_run_config

    saved = TrainConfig().to_dict()
    del saved["init_from"], saved["task"]  # what a run made before these keys existed wrote
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    assert load_run_config(tmp_path).task == "pretrain"
    del saved["optim"]["learning_rate"]
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    with pytest.raises(StentorError, match="is damaged: it lacks optim.learning_rate"):
        load_run_config(tmp_path)


def test_lora_trains_adapters_only_and_saves_merged_plain_weights(base_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    rng = random.Random(4)
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps(conversation(rng)) + "\n" for _ in range(200)))
    sources = [{"path": str(chats), "text_field": "messages"}]
    recipe = finetune_recipe(tmp_path, sources, "chat", data={"sources": sources, "val_docs": 20, "seed": 1},
                             optim={"learning_rate": 1e-2}, lora={"r": 8, "alpha": 16})  # fmt: skip
    run = tmp_path / "run"
    result = run_stentor("finetune", "--from", str(base_model), "--config", str(recipe), "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA r=8 on q_proj" in result.stderr
    losses = eval_losses(run)
    assert losses[-1][1] < 0.8 * losses[0][1], losses
    base, tuned = load_file(base_model / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert set(tuned) == set(base)  # plain weights: the adapters are merged, no peft names left
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all("proj" in k for k in changed), changed  # only the adapted matrices moved
    again = run_stentor("finetune", "--resume", str(run))  # the checkpoint (adapters unmerged) loads back
    assert again.returncode == 0 and "already finished" in again.stderr, again.stderr[-2000:]
    bad = finetune_recipe(tmp_path, sources, "chat", data={"sources": sources, "val_docs": 20, "seed": 1},
                          lora={"r": 8, "target_modules": ["no_such_layer"]})  # fmt: skip
    refused = run_stentor("finetune", "--from", str(base_model), "--config", str(bad), "--out", str(tmp_path / "bad"))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("stentor: error: lora: ")
