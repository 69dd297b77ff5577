"""Fault injection for the data pipeline (docs/reliability.md): bad input files, ids that used to merge or
break files, and `recast-data prepare` output locations that used to be overwritten or fail late."""

import gzip
import json
import os

import pytest

from recast_mcore.data import prepare as prepare_mod
from recast_mcore.data.cli import main
from recast_mcore.data.dataset import PreparedDataset, fingerprint
from recast_mcore.data.ids import escape_id, unescape_id
from recast_mcore.data.readers import MalformedRowError, read_amazon, read_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--set", "kcore=1", "--set", "semantic_ids.codes_per_level=4", "--set", "semantic_ids.levels=2"]
SYNTH = ["--dataset", "synthetic", "--set", "synthetic.num_users=60", "--set", "synthetic.num_items=30",
         "--set", "synthetic.num_clusters=3", "--set", "kcore=3", "--set", "semantic_ids.codes_per_level=6",
         "--set", "semantic_ids.levels=2", "--set", "semantic_ids.kmeans_iters=5"]


def _prepare(out, *args):
    return main(["prepare", *SYNTH, "--out", str(out), *args])


def _amazon_rows(users=20, items=10, per_user=8):
    return [{"reviewerID": f"u{u}", "asin": f"i{(u + k) % items}", "unixReviewTime": 1000 + k}
            for u in range(users) for k in range(per_user)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- gzip input
def test_truncated_gzip_names_file_and_line_even_with_skip_malformed(tmp_path, capsys):
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in _amazon_rows(per_user=40)).encode())
    path = tmp_path / "Beauty.json.gz"
    path.write_bytes(data[: len(data) // 2])
    for skip in (False, True):
        with pytest.raises(MalformedRowError, match=r"Beauty\.json\.gz:\d+: cannot read this line: .*truncated"):
            read_amazon(path, skip_malformed=skip)
    assert main(["prepare", "--dataset", "amazon", "--path", str(path), "--out", str(tmp_path / "o"), *SMALL,
                 "--set", "skip_malformed=true"]) == 2
    assert "truncated or damaged" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_non_gzip_dot_gz_is_a_clear_error(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "plain.json.gz", _amazon_rows())
    with pytest.raises(MalformedRowError, match=r"plain\.json\.gz:1: .*not gzip data"):
        read_amazon(path)
    assert main(["prepare", "--dataset", "amazon", "--path", str(path), "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "drop the .gz suffix" in capsys.readouterr().err


# --------------------------------------------------------------------------- ids
def test_ids_beyond_int64_sort_numerically(tmp_path):
    rows = "".join(f"{10**20 + u},{k},{k}\n" for u in range(3) for k in range(4)) + "".join(f"7,{k},{k}\n" for k in range(4))
    (tmp_path / "huge.csv").write_text(rows)
    assert main(["prepare", "--dataset", "csv", "--path", str(tmp_path / "huge.csv"), "--out", str(tmp_path / "o"), *SMALL]) == 0
    users = (tmp_path / "o" / "users.tsv").read_text().splitlines()[1:]
    assert [u.split("\t")[1] for u in users] == ["7", str(10**20), str(10**20 + 1), str(10**20 + 2)]


def test_invalid_utf8_ids_stay_distinct_and_round_trip(tmp_path):
    body = b"".join(b"caf\xe9,i%d,%d\n" % (k, k) for k in range(4)) + b"".join(b"caf\xe8,i%d,%d\n" % (k, k) for k in range(4))
    (tmp_path / "log.csv").write_bytes(body)
    raw = read_csv(tmp_path / "log.csv")
    assert len(set(raw.users)) == 2  # errors="replace" made both 'caf\ufffd'
    assert main(["prepare", "--dataset", "csv", "--path", str(tmp_path / "log.csv"), "--out", str(tmp_path / "o"), *SMALL]) == 0
    text = (tmp_path / "o" / "users.tsv").read_text(encoding="utf-8")  # valid UTF-8
    stored = [line.split("\t")[1] for line in text.splitlines()[1:]]
    assert stored == ["caf\\xe8", "caf\\xe9"]
    assert [unescape_id(s).encode("utf-8", "surrogateescape") for s in stored] == [b"caf\xe8", b"caf\xe9"]


def test_tab_and_newline_in_asin_cannot_break_items_tsv(tmp_path):
    rows = _amazon_rows(users=6, items=4, per_user=4)
    rows[0]["asin"], rows[1]["asin"] = "B0\tX", "B0\nY"
    path = _write_jsonl(tmp_path / "r.json", rows)
    assert main(["prepare", "--dataset", "amazon", "--path", str(path), "--out", str(tmp_path / "o"), *SMALL]) == 0
    lines = (tmp_path / "o" / "items.tsv").read_text().split("\n")[1:-1]
    assert all(len(line.split("\t")) == 3 for line in lines)
    assert {unescape_id(line.split("\t")[1]) for line in lines} >= {"B0\tX", "B0\nY"}


@pytest.mark.parametrize("raw", ["plain", "a\\b", "t\tn\nr\r", "\u2028\x85\x00", "caf\udce9", "é😀", "\\x41\\u0009"])
def test_escape_id_round_trips_and_is_one_utf8_field(raw):
    text = escape_id(raw)
    assert unescape_id(text) == raw
    assert not any(c in text for c in "\t\n\r\u2028") and text.encode("utf-8")


def test_null_reviewer_is_an_error_or_skipped_never_user_none(tmp_path, capsys):
    rows = _amazon_rows() + [{"reviewerID": None, "asin": "i1", "unixReviewTime": 5}]
    path = _write_jsonl(tmp_path / "r.json", rows)
    with pytest.raises(MalformedRowError, match=r"r\.json:161: reviewerID is null"):
        read_amazon(path)
    raw = read_amazon(path, skip_malformed=True)
    assert raw.skipped_rows == 1 and "None" not in raw.users
    for bad, message in (({"asin": 7.5}, "asin must be a string or an integer"), ({"unixReviewTime": None}, "unixReviewTime is null")):
        _write_jsonl(path, [{**rows[0], **bad}])
        with pytest.raises(MalformedRowError, match=message):
            read_amazon(path)


# --------------------------------------------------------------------------- output directory
def test_prepare_refuses_a_foreign_non_empty_directory(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("keep me")
    assert _prepare(tmp_path / "notes", "--force") == 2
    assert "not a prepared dataset (it holds thesis.txt)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["thesis.txt"]


def test_prepare_replaces_a_prepared_dataset_only_with_force(tmp_path, capsys):
    out = tmp_path / "data"
    assert _prepare(out) == 0
    before = fingerprint(out)
    assert _prepare(out, "--set", "semantic_ids.seed=5") == 2
    assert "already holds a prepared dataset; pass --force" in capsys.readouterr().err
    assert fingerprint(out) == before
    assert _prepare(out, "--set", "semantic_ids.seed=5", "--force") == 0
    assert fingerprint(out)["vocab"] != before["vocab"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging directory left behind


def test_failed_prepare_leaves_the_old_dataset_untouched(tmp_path, monkeypatch):
    out = tmp_path / "data"
    assert _prepare(out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # interrupted while writing the new files

    monkeypatch.setattr(prepare_mod, "write_prepared", killed)
    with pytest.raises(KeyboardInterrupt):
        _prepare(out, "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unwritable_output_fails_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(prepare_mod, "load_raw", lambda cfg: pytest.fail("read input before checking --out"))
    assert _prepare(tmp_path / "afile" / "sub") == 2
    assert "afile is a file, not a directory" in capsys.readouterr().err
    assert _prepare(tmp_path / "afile") == 2
    assert "is an existing file" in capsys.readouterr().err


def test_fingerprint_names_each_part(tmp_path):
    out = tmp_path / "data"
    assert _prepare(out) == 0
    fp = PreparedDataset.load(out).fingerprint
    assert fp == fingerprint(out) and set(fp) == {"vocab", "items", "splits", "path"}
    seq = out / "sequences.jsonl"
    seq.write_text(seq.read_text().replace('"test":[', '"test": [', 1))
    changed = fingerprint(out)
    assert changed["splits"] != fp["splits"] and changed["vocab"] == fp["vocab"] and changed["items"] == fp["items"]
    assert os.path.samefile(fp["path"], out)
