"""End to end: synthetic generator, `recast-data prepare`, PreparedDataset, leakage, fetch."""

import json

import numpy as np
import pytest
import torch

from recast_mcore.config.data import DataConfig, SyntheticConfig
from recast_mcore.data.cli import main
from recast_mcore.data.dataset import PreparedDataset
from recast_mcore.data.prepare import prepare_dataset
from recast_mcore.data.readers import RawInteractions
from recast_mcore.data.synthetic import generate_synthetic

SMALL = ["synthetic.num_users=200", "synthetic.num_items=150", "synthetic.num_clusters=5"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def as_csv(raw: RawInteractions) -> str:
    return "".join(f"{u},{i},{int(t)}\n" for u, i, t in zip(raw.users, raw.items, raw.timestamps))


def files_of(directory, skip=("meta.json",)):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name not in skip}


def test_synthetic_same_seed_same_bytes():
    cfg = SyntheticConfig(num_users=100, num_items=80, num_clusters=4)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    assert as_csv(a) == as_csv(b)
    assert all(np.array_equal(a.item_features[k], b.item_features[k]) for k in a.item_features)
    other = generate_synthetic(SyntheticConfig(num_users=100, num_items=80, num_clusters=4, seed=7))
    assert as_csv(other) != as_csv(a)
    with pytest.raises(ValueError, match="num_clusters=90 > num_items=80"):
        generate_synthetic(SyntheticConfig(num_users=10, num_items=80, num_clusters=90))


def test_prepare_twice_gives_identical_files(tmp_path):
    for name in ("a", "b"):
        assert main(["prepare", "--dataset", "synthetic", "--out", str(tmp_path / name), *sum([["--set", s] for s in SMALL], [])]) == 0
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    meta_a = json.loads((tmp_path / "a" / "meta.json").read_text())
    meta_b = json.loads((tmp_path / "b" / "meta.json").read_text())
    for meta in (meta_a, meta_b):
        meta.pop("timings")
        for key in ("embedding_seconds", "kmeans_seconds"):
            meta["semantic_ids"].pop(key)
    assert meta_a == meta_b


def test_default_synthetic_prepare_is_learnable_and_sparse(tmp_path):
    # prepare's time is recorded in meta["timings"] (docs/data.md), never asserted: the machine is shared
    assert main(["prepare", "--dataset", "synthetic", "--out", str(tmp_path / "syn")]) == 0
    ds = PreparedDataset.load(tmp_path / "syn")
    meta = ds.meta
    assert meta["users"] == 2000 and 900 <= meta["items"] <= 1000 and meta["sparsity"] > 0.95
    assert set(meta["timings"]) >= {"read_s", "sequences_s", "semantic_ids_s", "write_s", "total_s"}
    markov, popularity = meta["baselines_valid"]["markov"], meta["baselines_valid"]["popularity"]
    assert 0.01 < markov["pass@1"] < 0.15  # learnable, but hits are sparse
    assert markov["recall@10"] > 3 * popularity["recall@10"]
    sid = meta["semantic_ids"]
    assert sid["levels"] == 3 and sid["item_len"] == len(sid["codes_per_level"]) == ds.vocab.item_len
    assert min(sid["codebook_utilization"]) > 0.5 and sid["collision_rate"] < 0.2
    responses = torch.tensor([ds.vocab.encode_response(i) for i in range(ds.num_items)])
    assert ds.trie.item_ids(responses).tolist() == list(range(ds.num_items))


def write_log(path, sequences):
    rows = [f"u{u},i{item},{t}" for u, seq in enumerate(sequences) for t, item in enumerate(seq)]
    path.write_text("user,item,ts\n" + "\n".join(rows) + "\n")
    return path


def test_examples_follow_the_contract(tmp_path):
    seqs = [[1, 2, 3, 4, 5, 6, 7], [2, 3, 4, 5, 6], [7, 6, 5, 4, 3, 2, 1]]
    log = write_log(tmp_path / "log.csv", seqs)
    cfg = DataConfig(dataset="csv", path=str(log), kcore=1, max_history=3)
    cfg.semantic_ids.codes_per_level = 4
    prepare_dataset(cfg, tmp_path / "out")
    ds = PreparedDataset.load(tmp_path / "out")
    raw = {f"i{i}": idx for idx, i in enumerate(range(1, 8))}  # items i1..i7 -> 0..6
    s0 = [raw[f"i{i}"] for i in seqs[0]]
    assert ds.train_sequences[0] == s0[:5] and ds.valid_targets[0] == [s0[5]] and ds.test_targets[0] == [s0[6]]
    by_split = {split: ds.examples(split) for split in ("train", "valid", "test", "sft")}
    assert (by_split["train"][0].history, by_split["train"][0].targets) == (s0[1:4], [s0[4]])
    assert (by_split["valid"][0].history, by_split["valid"][0].targets) == (s0[2:5], [s0[5]])
    assert (by_split["test"][0].history, by_split["test"][0].targets) == (s0[3:6], [s0[6]])
    sft0 = [e for e in by_split["sft"] if e.user == 0]
    assert [(e.history, e.targets) for e in sft0] == [
        (s0[:1], [s0[1]]), (s0[:2], [s0[2]]), (s0[:3], [s0[3]]), (s0[1:4], [s0[4]])
    ]
    assert (tmp_path / "out" / "config.yaml").read_text().count("max_history: 3") == 1
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ds.examples("dev")


def test_target_set_examples(tmp_path):
    log = write_log(tmp_path / "log.csv", [[1, 2, 3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8, 1, 2]])
    cfg = DataConfig(dataset="csv", path=str(log), kcore=1, target_set_size=2)
    cfg.semantic_ids.codes_per_level = 4
    prepare_dataset(cfg, tmp_path / "out")
    ds = PreparedDataset.load(tmp_path / "out")
    test = ds.examples("test")[0]
    assert len(test.targets) == 2 and len(test.history) == 6
    train = ds.examples("train")[0]
    assert train.history == ds.train_sequences[0][:2] and train.targets == ds.train_sequences[0][2:]


def swap_test_items(raw: RawInteractions) -> tuple[RawInteractions, int]:
    """Exchange the last item between neighbouring users where neither already saw the other's."""
    last_row, history = {}, {}
    for row, (u, i) in enumerate(zip(raw.users, raw.items)):
        last_row[u] = row  # synthetic rows are in time order per user
        history.setdefault(u, set()).add(i)
    items = list(raw.items)
    users = list(last_row)
    swapped = 0
    for a, b in zip(users[0::2], users[1::2]):
        ia, ib = items[last_row[a]], items[last_row[b]]
        if ia != ib and ib not in history[a] and ia not in history[b]:
            items[last_row[a]], items[last_row[b]] = ib, ia
            swapped += 2
    return RawInteractions(users=raw.users, items=items, timestamps=raw.timestamps, source="swapped"), swapped


def test_changing_only_test_items_keeps_semantic_ids(tmp_path):
    raw = generate_synthetic(SyntheticConfig(num_users=300, num_items=200, num_clusters=6))
    changed, swapped = swap_test_items(raw)
    assert swapped > 200
    (tmp_path / "a.csv").write_text(as_csv(raw))
    (tmp_path / "b.csv").write_text(as_csv(changed))
    for name in ("a", "b"):
        cfg = DataConfig(dataset="csv", path=str(tmp_path / f"{name}.csv"))
        prepare_dataset(cfg, tmp_path / f"out_{name}")
    a, b = PreparedDataset.load(tmp_path / "out_a"), PreparedDataset.load(tmp_path / "out_b")
    assert a.test_targets != b.test_targets  # the test items really differ...
    assert a.train_sequences == b.train_sequences and a.valid_targets == b.valid_targets
    assert (tmp_path / "out_a" / "vocab.json").read_bytes() == (tmp_path / "out_b" / "vocab.json").read_bytes()
    assert (tmp_path / "out_a" / "items.tsv").read_bytes() == (tmp_path / "out_b" / "items.tsv").read_bytes()


def test_features_embedding_on_synthetic(tmp_path):
    sets = SMALL + ["semantic_ids.embedding=features", "semantic_ids.levels=2"]
    assert main(["prepare", "--dataset", "synthetic", "--out", str(tmp_path / "f"), *sum([["--set", s] for s in sets], [])]) == 0
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["semantic_ids"]["embedding"] == "features" and meta["semantic_ids"]["levels"] == 2


def test_load_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepared dataset directory not found"):
        PreparedDataset.load(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing config.yaml, vocab.json, items.tsv, users.tsv, sequences.jsonl"):
        PreparedDataset.load(tmp_path / "half")
    main(["prepare", "--dataset", "synthetic", "--out", str(tmp_path / "ok"), *sum([["--set", s] for s in SMALL], [])])
    meta = json.loads((tmp_path / "ok" / "meta.json").read_text())
    meta["users"] += 1
    (tmp_path / "ok" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"sequences.jsonl has 200 users but meta.json says 201"):
        PreparedDataset.load(tmp_path / "ok")


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["prepare", "--dataset", "csv", "--out", str(tmp_path / "x")]) == 2
    assert "needs a path" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "synthetic", "--out", str(tmp_path / "x"), "--set", "kcorr=3"]) == 2
    assert "unknown key 'kcorr'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("u1,i1,1\nu1,i2\n")
    assert main(["prepare", "--dataset", "csv", "--path", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: expected 3 or 4 fields" in capsys.readouterr().err


@pytest.mark.slow
def test_fetch_and_prepare_ml100k(tmp_path, monkeypatch):
    """Real download of the recbole wheel from PyPI (needs the network), then prepare."""
    monkeypatch.setenv("RECAST_CACHE", str(tmp_path / "cache"))
    assert main(["fetch", "ml-100k"]) == 0
    assert (tmp_path / "cache" / "ml-100k" / "ml-100k.inter").is_file()
    assert main(["prepare", "--dataset", "ml-100k", "--out", str(tmp_path / "ml")]) == 0
    ds = PreparedDataset.load(tmp_path / "ml")
    assert ds.meta["filtering"]["rows_read"] == 100_000 and ds.meta["users"] == 943
    assert ds.meta["baselines_valid"]["markov"]["recall@10"] > 0.05


def test_cli_reads_data_section_of_a_run_config(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  kcore: 3\n  synthetic:\n    num_users: 150\n    num_items: 100\n    num_clusters: 4\n")
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "o"), "--set", "max_history=7"]) == 0
    written = (tmp_path / "o" / "config.yaml").read_text()
    assert "kcore: 3" in written and "max_history: 7" in written and "num_users: 150" in written
    assert PreparedDataset.load(tmp_path / "o").meta["users"] == 150
