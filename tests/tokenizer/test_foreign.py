"""Checkpoints in the released StentorLabs layout: their TokenMonster adapter is never run, their ids are read."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from stentor.errors import StentorError
from stentor.tokenizer.hf import StentorTokenizer, load_tokenizer
from stentor.tokenizer.tokenmonster import build_vocab_from_yaml

WORDS = ["the", "cat", "sat", "on", "mat", "and", "dog", "ran", "home", "once", "upon", "a", "time"]
ADAPTER = "import tokenmonster  # the official package: not installed here, and stentor must never import this file\n"


def vocab():
    lines = ["charset: utf-8", "capcode: 1", "normalization: nfd", "include-256-bytes: true", "tokens:"]
    for w in WORDS:
        lines += [f'  - token: "{w}"', f'  - token: " {w}"']
    return build_vocab_from_yaml("\n".join(lines) + "\n")


def official_dir(root, order: str):
    """fp16 weights, `tokenmonster.vocab`, an adapter module, specials after the TokenMonster ids in `order`."""
    from stentor.model import get_preset
    from stentor.model.build import build_model

    v = vocab()
    base = v.id_table_size
    names = {"bos_first": ["<s>", "</s>", "<unk>", "<pad>"], "eos_first": ["</s>", "<s>"]}[order]
    ids = {name: base + k for k, name in enumerate(names)}
    pad = ids.get("<pad>", ids["</s>"])
    out = root / order
    cfg = get_preset("stentor2-tiny").replace(vocab_size=base + 64, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                              pad_token_id=pad)  # fmt: skip
    model = build_model(cfg, seed=3)
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = ids["<s>"], ids["</s>"]
    model.half().save_pretrained(out, safe_serialization=True)
    v.save(out / "tokenmonster.vocab")
    (out / "tokenmonster_hf.py").write_text(ADAPTER)
    roles = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>" if "<pad>" in ids else "</s>"}
    if "<unk>" in ids:
        roles["unk_token"] = "<unk>"
    (out / "special_tokens_map.json").write_text(json.dumps(roles))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "TokenMonsterTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenmonster_hf.TokenMonsterTokenizer", None]},
        "added_tokens_decoder": {str(i): {"content": n, "special": True} for n, i in ids.items()},
        **roles,
    }))  # fmt: skip
    return out, ids


@pytest.fixture(scope="module", params=["bos_first", "eos_first"])
def official(request, tmp_path_factory):
    return official_dir(tmp_path_factory.mktemp("official"), request.param)


def test_the_native_tokenizer_takes_the_adapters_place_with_the_dirs_ids(official):
    path, ids = official
    tok = load_tokenizer(path)
    assert isinstance(tok, StentorTokenizer) and "tokenmonster" not in sys.modules
    assert (tok.bos_token_id, tok.eos_token_id) == (ids["<s>"], ids["</s>"])
    assert tok.pad_token_id == ids.get("<pad>", ids["</s>"])
    assert len(tok) == vocab().id_table_size + len(ids)
    plain = StentorTokenizer.from_vocab(vocab())
    text = "once upon a time the cat sat on the mat"
    assert tok(text).input_ids == [ids["<s>"], *plain(text, add_special_tokens=False).input_ids]
    assert tok.decode(tok(text + "</s>").input_ids, skip_special_tokens=True) == text
    assert tok(text + "</s>").input_ids[-1] == ids["</s>"]


def test_generation_equals_transformers_on_the_same_weights_and_stops_at_the_dirs_eos(official):
    import stentor
    from transformers import AutoModelForCausalLM

    path, ids = official
    lm = stentor.load(str(path))
    assert lm.eos_ids == frozenset({ids["</s>"]})
    prompt = lm.encode("once upon a time")
    assert prompt[0] == ids["<s>"]
    steps = list(lm.generate_ids([prompt], stentor.infer.decoding.SamplingParams(greedy=True, repetition_penalty=1.0,
                                                                                  max_new_tokens=12)))  # fmt: skip
    ours = [s.tokens[0] for s in steps]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # the released fp16 weights, as fp32
    seq = list(prompt)
    for _ in ours:
        with torch.no_grad():
            seq.append(int(hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert ours == seq[len(prompt) :][: len(ours)]


def test_contradicting_files_are_a_one_line_error_naming_them(tmp_path):
    path, ids = official_dir(tmp_path, "bos_first")
    config = json.loads((path / "config.json").read_text())
    config["eos_token_id"] = ids["<unk>"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(StentorError, match=r"eos_token_id is \d+ in config.json but \d+ in generation_config.json"):
        load_tokenizer(path)
    generation = json.loads((path / "generation_config.json").read_text())
    generation["eos_token_id"] = ids["<unk>"]
    (path / "generation_config.json").write_text(json.dumps(generation))
    with pytest.raises(StentorError, match=r"config.json says eos_token_id .* names '<unk>', not the eos_token '</s>'"):
        load_tokenizer(path)
    (path / "tokenmonster.vocab").write_bytes(b"not a vocabulary")
    assert not (path / "tokenizer.json").exists()
    with pytest.raises(StentorError):
        load_tokenizer(path)  # no vocabulary left: AutoTokenizer would need the adapter; a clear error, not its code


def test_eval_and_export_commands_run_on_the_official_layout(official, tmp_path, capsys):
    from stentor.cli import main

    path, _ = official
    text = tmp_path / "t.txt"
    text.write_text("once upon a time the cat sat on the mat and the dog ran home. " * 20)
    assert main(["eval", "ppl", "--model", str(path), "--data", str(text), "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out.lower()
    assert main(["export", "gguf", "--model", str(path), "-o", str(tmp_path / "m.gguf")]) == 0
    assert (tmp_path / "m.gguf").stat().st_size > 0


def test_convert_gives_a_dir_plain_transformers_loads_without_stentor_or_tokenmonster(official, tmp_path):
    from stentor.cli import main

    from test_hf_tokenizer import run_without_stentor

    path, ids = official
    out = tmp_path / "converted"
    assert main(["convert", str(path), "-o", str(out)]) == 0
    assert (out / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()  # weights untouched
    assert not (out / "tokenmonster_hf.py").exists()
    texts = ["once upon a time the cat sat</s>", "a dog ran home"]
    got = run_without_stentor(out, texts, tmp_path)
    native = load_tokenizer(path)
    assert got["ids"] == [native.encode(t) for t in texts] and got["len"] == len(native)
    assert got["ids"][0][0] == ids["<s>"] and got["ids"][0][-1] == ids["</s>"]
    assert main(["convert", str(out), "-o", str(tmp_path / "again")]) == 2  # already ours: a clear error


def hf_cache_with(root, repo_id: str, src) -> dict:
    """A real HF cache layout (models--ORG--NAME/snapshots/<rev>/, refs/main) holding `src`'s files; its env."""
    import shutil

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(src, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    import os

    return {**os.environ, "HF_HOME": str(root), "HF_HUB_OFFLINE": "1"}


def test_a_hub_id_loads_offline_from_the_hf_cache_and_uncached_ids_say_how_to_fix(official, tmp_path):
    import subprocess

    path, ids = official
    env = hf_cache_with(tmp_path / "hf", "StentorLabs/Tiny-Test", path)
    cmd = [sys.executable, "-m", "stentor", "generate", "--model", "StentorLabs/Tiny-Test", "once upon a time",
           "--greedy", "--max-new-tokens", "6"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "local Hugging Face cache" in run.stderr
    offline_text = run.stdout
    direct = subprocess.run([*cmd[:5], str(path), *cmd[6:]], capture_output=True, text=True, env=env, timeout=300)
    assert direct.returncode == 0 and direct.stdout == offline_text  # the cached copy is the same model
    missing = subprocess.run([*cmd[:5], "StentorLabs/Not-Cached", *cmd[6:]], capture_output=True, text=True, env=env,
                             timeout=300)  # fmt: skip
    assert missing.returncode == 2
    assert "not in the local Hugging Face cache" in missing.stderr and "hf download StentorLabs/Not-Cached" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_quantize_keeps_the_dirs_special_ids(official, tmp_path):
    import stentor
    from stentor.cli import main

    path, ids = official
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(path), "--method", "int8", "-o", str(out)]) == 0
    lm = stentor.load(str(out))
    assert (lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id) == (ids["<s>"], ids["</s>"])
    assert lm.eos_ids == frozenset({ids["</s>"]})
    assert isinstance(lm.generate("once upon a time", greedy=True, max_new_tokens=4), str)


def greedy_hf(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_half_weights_load_as_fp32_unless_dtype_keeps_them(official):
    import stentor
    from stentor.infer.decoding import SamplingParams
    from stentor.infer.engine import Engine
    from stentor.model.loading import load_model

    path, _ = official
    assert next(load_model(path).parameters()).dtype == torch.float32
    assert next(load_model(path, dtype="auto").parameters()).dtype == torch.float16  # as saved
    assert next(load_model(path, dtype="bfloat16").parameters()).dtype == torch.bfloat16
    with pytest.raises(StentorError, match="unknown dtype 'half'; choose one of float32, float16, bfloat16, auto"):
        load_model(path, dtype="half")
    lm = stentor.load(str(path), dtype="float16")
    assert isinstance(lm.engine, Engine) and lm.engine.dtype == torch.float16 and lm.model.dtype == torch.float16
    prompt = lm.encode("once upon a time")
    params = SamplingParams(greedy=True, repetition_penalty=1.0, max_new_tokens=8)
    ours = [s.tokens[0] for s in lm.generate_ids([prompt], params)]
    assert ours == greedy_hf(lm.model, prompt, len(ours))[: len(ours)]  # the same fp16 weights, computed in fp16


def test_serve_answers_on_the_official_layout(official):
    import httpx
    import stentor
    from serving import stentor_serve

    path, ids = official
    with stentor_serve(path) as (_, url):
        body = {"prompt": "once upon a time", "max_tokens": 8, "temperature": 0, "repetition_penalty": 1.0}
        served = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    direct = stentor.load(str(path)).generate("once upon a time", greedy=True, repetition_penalty=1.0, max_new_tokens=8)
    assert served["choices"][0]["text"] == direct
    assert served["usage"]["prompt_tokens"] == len(load_tokenizer(path)("once upon a time").input_ids)


def test_every_engine_stops_at_the_dirs_own_eos(official, tmp_path):
    """Weights rigged so that the dir's EOS is always the most likely token: output ends there, at once."""
    import shutil

    import stentor
    from safetensors.torch import load_file, save_file

    src, ids = official
    path = shutil.copytree(src, tmp_path / "eos")
    weights = load_file(path / "model.safetensors")
    for name, tensor in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor.zero_()  # the layers add nothing: the last hidden state is the token's embedding
    weights["model.norm.weight"].zero_()[0] = 1  # only feature 0 survives the final norm
    embed = weights["model.embed_tokens.weight"]  # tied: also the LM head
    embed[:, 0] = 1
    embed[ids["</s>"], 0] = 10
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    for engine in ("stentor", "torch", "hf"):
        lm = stentor.load(str(path), engine=engine)
        assert lm.generate("once upon a time", greedy=True, max_new_tokens=8) == "", engine
        steps = list(lm.generate_ids([lm.encode("once upon a time")], stentor.infer.decoding.SamplingParams(greedy=True)))
        assert [s.tokens for s in steps] == [[ids["</s>"]]] and steps[-1].finished == [True], engine
