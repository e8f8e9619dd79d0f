import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stentor.data import DataConfig, PackedBlocks, PreparedData, SourceSpec, clean_text, prepare_data
from stentor.data import prepare as prepare_mod
from stentor.errors import StentorError

def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def reference_stream(tokenizer, docs):
    return [[tokenizer.bos_token_id, *tokenizer.encode(clean_text(d), add_special_tokens=False), tokenizer.eos_token_id]
            for d in docs if d.strip()]


def config(path, **kw):
    kw.setdefault("val_docs", 20)
    kw.setdefault("source_token_budget", None)
    return DataConfig(sources=[SourceSpec(path=path)], **kw)


def test_val_is_the_first_documents_and_train_the_rest(tmp_path, tokenizer, make_docs):
    docs = make_docs(120)
    docs.insert(5, "  \n\t ")  # whitespace-only documents are dropped and not counted
    data = prepare_data(config(write_jsonl(tmp_path / "d.jsonl", docs)), tokenizer, tmp_path / "out", num_workers=0)
    expected = reference_stream(tokenizer, docs)
    assert data.val_tokens.tolist() == [t for d in expected[:20] for t in d]
    assert data.train_tokens.tolist() == [t for d in expected[20:] for t in d]
    assert data.train_tokens.dtype == np.uint16
    meta = data.meta
    assert (meta["val_docs"], meta["train_docs"]) == (20, 100)
    assert (meta["val_tokens"], meta["train_tokens"]) == (len(data.val_tokens), len(data.train_tokens))
    assert (meta["bos_id"], meta["eos_id"], meta["vocab_size"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))
    assert meta["budget_reached"] is False and meta["config"]["clean"] is True
    assert not (tmp_path / "out" / ".work").exists()
    # val documents never reach train: no val document text appears in the decoded training stream
    train_text = tokenizer.decode(data.train_tokens.tolist())
    assert not any(f"doc {i}:" in train_text for i in range(20))
    assert all(f"doc {i}:" in train_text for i in range(20, 120))


def test_clean_off_keeps_raw_text(tmp_path, tokenizer):
    docs = ["a  b\n\nc", "ﬁne"] * 3
    data = prepare_data(config(write_jsonl(tmp_path / "d.jsonl", docs), val_docs=1, clean=False), tokenizer, tmp_path / "o", num_workers=0)
    assert tokenizer.decode(data.val_tokens.tolist(), skip_special_tokens=True) == "a  b\n\nc"


def test_budgets_cut_at_exact_token_counts(tmp_path, tokenizer, make_docs):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(200))
    full = prepare_data(config(path), tokenizer, tmp_path / "full", num_workers=0)
    capped = prepare_data(config(path, source_token_budget=1001, max_val_tokens=77), tokenizer, tmp_path / "cap", num_workers=0)
    assert capped.train_tokens.tolist() == full.train_tokens[:1001].tolist()
    assert capped.val_tokens.tolist() == full.val_tokens[:77].tolist()
    assert capped.meta["budget_reached"] is True
    # documents with at least one token inside the cap are counted
    starts = np.flatnonzero(full.train_tokens == full.meta["bos_id"])
    assert capped.meta["train_docs"] == int((starts < 1001).sum())
    assert capped.num_blocks(100) == 11 and capped.num_blocks(7, split="val") == 11


def test_output_is_identical_for_any_worker_count(tmp_path, tokenizer, make_docs, monkeypatch):
    monkeypatch.setattr(prepare_mod, "CHUNK_DOCS", 16)  # many chunks, so ordering across workers matters
    cfg = config(write_jsonl(tmp_path / "d.jsonl", make_docs(400)), val_docs=40, source_token_budget=5000)
    one = prepare_data(cfg, tokenizer, tmp_path / "w0", num_workers=0)
    two = prepare_data(cfg, tokenizer, tmp_path / "w2", num_workers=2)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "w0" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    assert one.meta == two.meta


def test_existing_result_is_reused_and_a_new_config_rebuilds(tmp_path, tokenizer, make_docs, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(60))
    prepare_data(config(path), tokenizer, tmp_path / "o", num_workers=0)
    stamp = (tmp_path / "o" / "train.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="stentor.data.prepare"):
        again = prepare_data(config(path), tokenizer, tmp_path / "o", num_workers=0)
    assert "reusing" in caplog.text
    assert (tmp_path / "o" / "train.bin").stat().st_mtime_ns == stamp
    assert again.meta["val_docs"] == 20
    rebuilt = prepare_data(config(path, val_docs=10), tokenizer, tmp_path / "o", num_workers=0)
    assert (rebuilt.meta["val_docs"], rebuilt.meta["train_docs"]) == (10, 50)
    assert PreparedData.load(tmp_path / "o").meta == rebuilt.meta


def test_too_little_data_for_the_validation_split(tmp_path, tokenizer, make_docs):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(20) + ["   "])
    with pytest.raises(StentorError, match="only 20 non-empty documents, but val_docs=20"):
        prepare_data(config(path), tokenizer, tmp_path / "o", num_workers=0)
    assert not (tmp_path / "o" / "meta.json").exists()


def test_bad_inputs_fail_before_work(tmp_path, tokenizer):
    with pytest.raises(StentorError, match="does not exist"):
        prepare_data(config(str(tmp_path / "missing.jsonl")), tokenizer, tmp_path / "o")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(StentorError, match="contains no documents"):
        prepare_data(config(str(tmp_path / "empty.jsonl")), tokenizer, tmp_path / "o")
    with pytest.raises(StentorError, match="no sources"):
        DataConfig(sources=[])
    with pytest.raises(StentorError, match="no prepared data"):
        PreparedData.load(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text('{"format_version": 1, "dty')
    with pytest.raises(StentorError, match="missing or unreadable"):
        PreparedData.load(tmp_path / "broken")


def test_tokenizer_without_bos_is_a_clear_error(tmp_path, tokenizer, make_docs):
    from transformers import PreTrainedTokenizerFast

    no_bos = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    with pytest.raises(StentorError, match="needs both a BOS and an EOS"):
        prepare_data(config(write_jsonl(tmp_path / "d.jsonl", make_docs(30))), no_bos, tmp_path / "o")
    assert not (tmp_path / "o" / ".work").exists()


def test_default_config_is_the_cards():
    cfg = DataConfig()
    assert [s.hf_id for s in cfg.sources] == ["epfml/FineWeb-HQ", "StentorLabs/StenCore"]
    assert (cfg.val_docs, cfg.source_token_budget, cfg.clean) == (2000, 240_000_000, True)


def test_prepared_tokens_pack_into_blocks(tmp_path, tokenizer, make_docs):
    data = prepare_data(config(write_jsonl(tmp_path / "d.jsonl", make_docs(50))), tokenizer, tmp_path / "o", num_workers=0)
    blocks = PackedBlocks(data.train_tokens, 32, data.meta["eos_id"])
    assert len(blocks) == data.num_blocks(32)
    assert blocks[0]["input_ids"][0].item() == data.meta["bos_id"]


KILLED_RUN = """
import sys
from transformers import PreTrainedTokenizerFast
from stentor.data import DataConfig, SourceSpec, prepare_data
from stentor.data import prepare

if __name__ == "__main__":
    prepare.CHUNK_DOCS = 64
    tok = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    cfg = DataConfig(sources=[SourceSpec(path=sys.argv[2])], val_docs=100, source_token_budget=None)
    prepare_data(cfg, tok, sys.argv[3], num_workers=0)
"""


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_bytes(tmp_path, tokenizer, make_docs, monkeypatch, caplog):
    tokenizer.save_pretrained(tmp_path / "tok")
    tok = type(tokenizer).from_pretrained(tmp_path / "tok")
    data_path = write_jsonl(tmp_path / "d.jsonl", make_docs(3000))
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "tok"), data_path, str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / ".work" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(progress.read_text())["shards"]) >= 5:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "meta.json").exists()

    monkeypatch.setattr(prepare_mod, "CHUNK_DOCS", 64)
    cfg = DataConfig(sources=[SourceSpec(path=data_path)], val_docs=100, source_token_budget=None)
    with caplog.at_level(logging.INFO, logger="stentor.data.prepare"):
        resumed = prepare_data(cfg, tok, out, num_workers=0)
    assert "resuming" in caplog.text
    fresh = prepare_data(cfg, tok, tmp_path / "fresh", num_workers=0)
    for name in ("train.bin", "val.bin"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    assert resumed.meta == fresh.meta


def test_reuse_needs_no_network_for_hub_sources(tmp_path, tokenizer, make_docs, monkeypatch):
    import datasets
    import huggingface_hub

    # A directory prepared earlier (online) from a hub source: made here from local data, then labelled as such.
    local = prepare_data(config(write_jsonl(tmp_path / "d.jsonl", make_docs(40))), tokenizer, tmp_path / "o", num_workers=0)
    hub_cfg = DataConfig(sources=[SourceSpec(hf_id="epfml/FineWeb-HQ")], val_docs=20, source_token_budget=None)
    meta = dict(local.meta, fingerprint=prepare_mod._fingerprint(hub_cfg, local.meta["tokenizer_hash"]))
    (tmp_path / "o" / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert prepare_data(hub_cfg, tokenizer, tmp_path / "o").train_tokens.tolist() == local.train_tokens.tolist()
    with pytest.raises(StentorError, match="cannot stream hub dataset"):
        prepare_data(hub_cfg, tokenizer, tmp_path / "other")


def test_waiting_processes_take_the_main_processs_preparation_and_refuse_another(tmp_path, tokenizer, make_docs):
    """Ranks other than 0 wait for meta.json instead of a barrier. A stale meta.json of another preparation
    does not satisfy them; a new one of another preparation (files that differ between machines) is an error."""
    import threading

    from stentor.data import wait_for_prepared

    path = write_jsonl(tmp_path / "d.jsonl", make_docs(120))
    out = tmp_path / "out"
    prepare_data(config(path, val_docs=10), tokenizer, out, num_workers=0)  # stale: another val split
    wanted, got = config(path), {}
    waiter = threading.Thread(target=lambda: got.update(data=wait_for_prepared(wanted, tokenizer, out, poll_s=0.05)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # the stale preparation is not taken
    made = prepare_data(wanted, tokenizer, out, num_workers=0)
    waiter.join(timeout=10)
    assert got["data"].train_tokens.tolist() == made.train_tokens.tolist()

    errors = []

    def wait_for_other():
        try:
            wait_for_prepared(config(path, val_docs=30), tokenizer, out, poll_s=0.05)
        except StentorError as exc:
            errors.append(str(exc))

    waiter = threading.Thread(target=wait_for_other)
    waiter.start()
    time.sleep(0.3)
    prepare_data(config(path, val_docs=40), tokenizer, out, num_workers=0)
    waiter.join(timeout=10)
    assert not waiter.is_alive() and "prepared other data" in errors[0] and "shared filesystem" in errors[0]


def test_a_meta_json_with_a_damaged_field_names_it(tmp_path, tokenizer, make_docs):
    prepared = prepare_data(config(write_jsonl(tmp_path / "d.jsonl", make_docs(30))), tokenizer, tmp_path / "o", num_workers=0)
    meta_path = tmp_path / "o" / "meta.json"
    original = meta_path.read_text()
    # What one flipped byte in a key or a value gives: the field is gone, or of another type.
    for damaged, field in ((original.replace('"config"', '"confiw"'), "config.clean"),
                           (original.replace('"eos_id"', '"eos_iu"'), "eos_id"),
                           (json.dumps(dict(prepared.meta, budget_reached=1)), "budget_reached"),
                           (json.dumps(dict(prepared.meta, val_docs="20")), "val_docs")):  # fmt: skip
        meta_path.write_text(damaged)
        with pytest.raises(StentorError, match=f"meta.json is damaged \\(.*{field}.*\\); prepare the data again"):
            PreparedData.load(tmp_path / "o")
    meta_path.write_text(original)
    assert PreparedData.load(tmp_path / "o").meta == prepared.meta
