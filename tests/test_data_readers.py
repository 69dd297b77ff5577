"""Readers on small files in the real formats, including malformed rows."""

import gzip
import json

import numpy as np
import pytest
import torch

from recast_mcore.data.readers import (
    MalformedRowError,
    read_amazon,
    read_csv,
    read_interactions,
    read_ml100k_item_features,
    read_movielens,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write(path, text):
    path.write_text(text)
    return path


def test_grouplens_u_data(tmp_path):
    f = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n22\t377\t1\t878887116\n")
    raw = read_movielens(f)
    assert raw.users == ["196", "186", "22"] and raw.items == ["242", "302", "377"]
    assert raw.timestamps.tolist() == [881250949, 891717742, 878887116]
    assert raw.ratings.tolist() == [3, 3, 1]


def test_ratings_dat_double_colon(tmp_path):
    f = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    raw = read_movielens(f)
    assert raw.items == ["1193", "661"] and raw.ratings.tolist() == [5, 3]


def test_recbole_inter_columns_by_name(tmp_path):
    f = write(
        tmp_path / "x.inter",
        "item_id:token\ttimestamp:float\tuser_id:token\trating:float\n10\t5.0\tu1\t4\n11\t6.0\tu2\t2\n",
    )
    raw = read_movielens(f)
    assert raw.users == ["u1", "u2"] and raw.items == ["10", "11"] and raw.timestamps.tolist() == [5.0, 6.0]


def test_recbole_inter_malformed_line_names_file_and_line(tmp_path):
    f = write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\tnot-a-time\n")
    with pytest.raises(MalformedRowError, match=r"x\.inter:3: timestamp 'not-a-time' is not a number"):
        read_movielens(f)
    bad_header = write(tmp_path / "y.inter", "user_id:token\ttimestamp:float\n1\t3\n")
    with pytest.raises(MalformedRowError, match=r"y\.inter:1: RecBole header lacks 'item_id'"):
        read_movielens(bad_header)


def test_malformed_rows_raise_or_are_counted(tmp_path):
    f = write(tmp_path / "u.data", "1\t2\t3\t100\n1\t3\t4\n1\t4\t5\tabc\n\t5\t1\t100\n2\t2\t3\t101\n")
    with pytest.raises(MalformedRowError, match=r"u\.data:2: expected 4 fields"):
        read_movielens(f)
    raw = read_movielens(f, skip_malformed=True)
    assert len(raw) == 2 and raw.skipped_rows == 3
    assert [e.split(": ")[0] for e in raw.skipped_examples] == [f"{f}:2", f"{f}:3", f"{f}:4"]
    assert "empty user" in raw.skipped_examples[2]


def test_amazon_json_lines_and_gzip(tmp_path):
    rows = [
        {"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1400000000, "overall": 5.0},
        {"reviewerID": "A2", "asin": "B02", "unixReviewTime": 1400000100},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    raw = read_amazon(write(tmp_path / "Books_5.json", text))
    assert raw.users == ["A1", "A2"] and raw.items == ["B01", "B02"]
    assert raw.ratings[0] == 5.0 and np.isnan(raw.ratings[1])
    gz = tmp_path / "Books_5.json.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(text)
    assert read_amazon(gz).items == ["B01", "B02"]


def test_amazon_json_errors(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1}\n{"reviewerID": "A1"\n')
    with pytest.raises(MalformedRowError, match=r"a\.jsonl:2: invalid JSON"):
        read_amazon(f)
    f = write(tmp_path / "b.jsonl", '{"reviewerID": "A1", "unixReviewTime": 1}\n')
    with pytest.raises(MalformedRowError, match=r"b\.jsonl:1: missing key 'asin'"):
        read_amazon(f)
    with pytest.raises(ValueError, match="expects .json/.jsonl"):
        read_amazon(write(tmp_path / "c.txt", "x"))


def test_amazon_ratings_only_csv(tmp_path):
    f = write(tmp_path / "ratings_Books.csv", "A1,B1,5.0,1400000000\nA2,B1,4.0,1400000001\nA3,B2,x,1\n")
    with pytest.raises(MalformedRowError, match=r"ratings_Books\.csv:3: rating 'x'"):
        read_amazon(f)
    raw = read_amazon(f, skip_malformed=True)
    assert raw.users == ["A1", "A2"] and raw.ratings.tolist() == [5.0, 4.0] and raw.skipped_rows == 1


def test_generic_csv_with_header_and_rating(tmp_path):
    f = write(tmp_path / "log.csv", "user,item,ts,rating\nu1,i1,10,4\nu1,i2,11,5\n")
    raw = read_csv(f)
    assert raw.users == ["u1", "u1"] and raw.timestamps.tolist() == [10, 11] and raw.ratings.tolist() == [4, 5]


def test_generic_tsv_without_rating(tmp_path):
    f = write(tmp_path / "log.tsv", "u1\ti1\t10\nu2\ti2\t11\n")
    raw = read_csv(f)
    assert raw.items == ["i1", "i2"] and raw.ratings is None


def test_generic_csv_mixed_columns_and_bad_time(tmp_path):
    f = write(tmp_path / "log.csv", "u1,i1,10\nu1,i2,11,5\nu2,i3,1e400\n")
    with pytest.raises(MalformedRowError, match=r"log\.csv:2: 4 columns, but earlier rows have 3"):
        read_csv(f)
    raw = read_csv(f, skip_malformed=True)
    assert len(raw) == 1 and raw.skipped_rows == 2 and "not finite" in raw.skipped_examples[1]


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_csv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="no valid interaction rows"):
        read_csv(write(tmp_path / "empty.csv", "u,i,ts\n"))
    with pytest.raises(ValueError, match="unknown format 'parquet'; valid: amazon, csv, movielens"):
        read_interactions("parquet", tmp_path / "x")


def test_ml100k_item_features(tmp_path):
    f = write(
        tmp_path / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction Thriller\n3\tOld\t\tComedy\n",
    )
    feats = read_ml100k_item_features(f)
    assert set(feats) == {"1", "2", "3"}
    # genres sorted: Action, Animation, Children's, Comedy, Thriller; then the standardized year
    assert feats["1"][:5].tolist() == [0, 1, 1, 1, 0] and feats["2"][:5].tolist() == [1, 0, 0, 0, 1]
    assert feats["3"][-1] == pytest.approx(feats["1"][-1])  # missing year -> mean year (all 1995)
