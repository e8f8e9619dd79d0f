import csv
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stentor.data.sources import SourceSpec, check_source, iter_documents, mixed_documents
from stentor.errors import StentorError

DOCS = ["first doc\nwith two lines", "second, with a comma and \"quotes\"", "third ﬁ"]


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def test_jsonl(tmp_path):
    assert list(iter_documents(SourceSpec(path=str(write_jsonl(tmp_path / "a.jsonl", DOCS))))) == DOCS


def test_csv(tmp_path):
    path = tmp_path / "a.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "body"])
        writer.writerows([i, d] for i, d in enumerate(DOCS))
    assert list(iter_documents(SourceSpec(path=str(path), text_field="body"))) == DOCS


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": DOCS, "id": [0, 1, 2]}), path)
    assert list(iter_documents(SourceSpec(path=str(path)))) == DOCS


def test_txt_modes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"para one\r\nline two\n\n\npara two\n")
    assert list(iter_documents(SourceSpec(path=str(path)))) == ["para one\nline two\n\n\npara two\n"]
    assert list(iter_documents(SourceSpec(path=str(path), txt_mode="lines"))) == ["para one", "line two", "", "", "para two"]
    assert list(iter_documents(SourceSpec(path=str(path), txt_mode="paragraphs"))) == ["para one\nline two", "para two"]


def test_glob_and_directory_read_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl", ["b"])
    write_jsonl(tmp_path / "a.jsonl", ["a"])
    write_jsonl(tmp_path / "sub" / "c.jsonl", ["c"])
    (tmp_path / "notes.md").write_text("ignored by directory scans")
    assert list(iter_documents(SourceSpec(path=str(tmp_path / "*.jsonl")))) == ["a", "b"]
    assert list(iter_documents(SourceSpec(path=str(tmp_path / "**" / "*.jsonl")))) == ["a", "b", "c"]
    assert list(iter_documents(SourceSpec(path=str(tmp_path)))) == ["a", "b", "c"]
    (tmp_path / "README.txt").write_text("a readme is not a document")
    with pytest.raises(StentorError, match=r"holds jsonl and txt files; pick one kind with a glob"):
        check_source(SourceSpec(path=str(tmp_path)))


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_missing_text_field_names_available_fields(tmp_path, kind):
    path = tmp_path / f"a.{kind}"
    if kind == "jsonl":
        write_jsonl(path, DOCS, field="content")
    elif kind == "csv":
        path.write_text("id,content\n1,hello\n")
    else:
        pq.write_table(pa.table({"content": DOCS, "id": [0, 1, 2]}), path)
    with pytest.raises(StentorError, match=r"no field 'text'; available fields: .*content"):
        check_source(SourceSpec(path=str(path)))


@pytest.mark.parametrize(("spec", "match"), [
    (dict(path="does/not/exist.jsonl"), "does not exist"),
    (dict(path="nothing-*.jsonl"), "matches no"),
    (dict(), "exactly one of"),
    (dict(path="a.jsonl", hf_id="x/y"), "exactly one of"),
    (dict(path="a.jsonl", weight=0), "weight must be > 0"),
    (dict(path="a.txt", txt_mode="sentences"), "txt_mode"),
])
def test_bad_source_specs_are_clear_errors(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StentorError, match=match):
        check_source(SourceSpec(**spec))


def test_empty_source_and_bad_json_are_clear_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(StentorError, match="contains no documents"):
        check_source(SourceSpec(path=str(tmp_path / "empty.jsonl")))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(StentorError, match=r"bad.jsonl:2 is not valid JSON"):
        list(iter_documents(SourceSpec(path=str(tmp_path / "bad.jsonl"))))


def test_offline_hub_id_is_one_clear_error(monkeypatch):
    import datasets
    import huggingface_hub

    # The libraries' own offline switch: no request leaves the machine, as on an air-gapped host.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(StentorError, match=r"cannot stream hub dataset 'epfml/FineWeb-HQ'.*unreachable.*local `path` source") as err:
        check_source(SourceSpec(hf_id="epfml/FineWeb-HQ"))
    assert "\n" not in str(err.value)


def test_mixing_is_seeded_weighted_and_uses_every_document(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [f"a{i}" for i in range(3000)])
    b = write_jsonl(tmp_path / "b.jsonl", [f"b{i}" for i in range(1000)])
    sources = [SourceSpec(path=str(a), weight=3.0), SourceSpec(path=str(b), weight=1.0)]
    mixed = list(mixed_documents(sources, seed=7))
    assert mixed == list(mixed_documents(sources, seed=7))
    assert mixed != list(mixed_documents(sources, seed=8))
    assert sorted(mixed) == sorted([f"a{i}" for i in range(3000)] + [f"b{i}" for i in range(1000)])
    # each source keeps its own order, and the first 2,000 documents follow the 3:1 weights
    assert [d for d in mixed if d[0] == "a"] == [f"a{i}" for i in range(3000)]
    share = Counter(d[0] for d in mixed[:2000])
    assert 0.70 < share["a"] / 2000 < 0.80
