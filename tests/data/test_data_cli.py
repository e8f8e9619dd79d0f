import json

from stentor.cli import main


def test_prepare_then_info(tmp_path, tokenizer, make_docs, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"part{i}.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in make_docs(30, seed=i)))
    out = tmp_path / "prepared"
    rc = main(["data", "prepare", "--source", str(corpus), "--text-field", "body", "--tokenizer", str(tmp_path / "tok"),
               "--out", str(out), "--workers", "0", "--set", "data.val_docs=10", "--set", "data.source_token_budget=null"])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["val_docs"], meta["train_docs"]) == (10, 80)
    assert meta["config"]["sources"][0]["text_field"] == "body"
    capsys.readouterr()
    assert main(["data", "info", str(out), "--block-size", "64"]) == 0
    text = capsys.readouterr().out
    assert f"train: {meta['train_tokens']:,} tokens, 80 documents, {-(-meta['train_tokens'] // 64):,} blocks of 64" in text


def test_bad_source_is_one_line_before_the_tokenizer_loads(tmp_path, capsys):
    rc = main(["data", "prepare", "--source", str(tmp_path / "missing"), "--tokenizer", str(tmp_path / "no-tokenizer"),
               "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stentor: error: data source") and "does not exist" in err and "\n" not in err


def test_info_on_an_unprepared_dir(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "run `stentor data prepare` first" in capsys.readouterr().err
