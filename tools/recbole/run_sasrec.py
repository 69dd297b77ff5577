"""SASRec (RecBole 1.2.1) on a recast_mcore prepared dataset, on exactly its leave-one-out split.

Runs inside the RecBole virtual environment (tools/recbole/setup.sh), never in the project's:

    tools/recbole/.venv/bin/python tools/recbole/run_sasrec.py --prepared runs/data/ml-100k --out runs/sasrec/ml-100k

What it does:
1. Writes RecBole benchmark atomic files ``<out>/data/recast/recast.{train,valid,test}.inter`` from the
   prepared ``sequences.jsonl`` (``benchmark_filename: [train, valid, test]``, so RecBole neither filters nor
   re-splits): columns ``user_id:token  item_id_list:token_seq  item_id:token``, item tokens = our item
   indices. train: every prefix of a user's training sequence -> the next training item (what RecBole's own
   sequential augmentation makes); valid: the training sequence -> the first valid target; test: training +
   valid items -> the first test target. Histories keep the last ``MAX_ITEM_LIST_LENGTH`` items
   (= the prepared ``max_history`` unless ``--max-len`` says otherwise), like the generative model's prompts.
2. Trains SASRec with RecBole's trainer: CE loss over the full catalog, evaluation on the valid file after
   every epoch (full ranking, NDCG@10), early stopping after ``--stopping-step`` epochs without improvement,
   the best-valid model restored.
3. Scores every valid and test user against the FULL catalog (``full_sort_predict``; items already in the
   history are NOT masked, as RecBole does for sequential models and as the generative model's beam search
   does) and writes the top ``--top`` item indices per user, in user order, to ``ranked_valid.json`` and
   ``ranked_test.json``; RecBole's own metrics go to ``recbole_metrics.json``. The project side
   (recast_mcore/study/sasrec.py) scores the ranked lists with recast_mcore.eval.metrics, so every model in a
   study is measured by the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

DATASET = "recast"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prepared", required=True, help="recast_mcore prepared dataset directory")
    p.add_argument("--out", required=True, help="output directory (atomic files, checkpoints, ranked lists)")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--stopping-step", type=int, default=10, help="epochs without a better valid NDCG@10")
    p.add_argument("--max-len", type=int, default=0, help="history length (0 = the prepared max_history)")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.5, help="hidden and attention dropout (RecBole default 0.5)")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--top", type=int, default=50, help="ranked items written per user")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def read_prepared(prepared: Path) -> tuple[list[dict], dict]:
    meta = json.loads((prepared / "meta.json").read_text())
    users = [json.loads(line) for line in (prepared / "sequences.jsonl").read_text().splitlines() if line]
    return users, meta


def write_atomic_files(users: list[dict], max_len: int, data_dir: Path) -> dict[str, int]:
    """The three benchmark files (module docstring); returns their row counts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"

    def row(user: int, history: list[int], target: int) -> str:
        return f"{user}\t{' '.join(map(str, history[-max_len:]))}\t{target}\n"

    rows = {"train": [], "valid": [], "test": []}
    for u in users:
        train, valid, test = u["train"], u["valid"], u["test"]
        rows["train"] += [row(u["user"], train[:i], train[i]) for i in range(1, len(train))]
        rows["valid"].append(row(u["user"], train, valid[0]))
        rows["test"].append(row(u["user"], train + valid, test[0]))
    for split, lines in rows.items():
        (data_dir / f"{DATASET}.{split}.inter").write_text(header + "".join(lines))
    return {split: len(lines) for split, lines in rows.items()}


def recbole_config(args, max_len: int, out: Path) -> dict:
    return {
        "model": "SASRec", "dataset": DATASET, "data_path": str(out / "data"),
        "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "MAX_ITEM_LIST_LENGTH": max_len,
        "hidden_size": args.hidden_size, "inner_size": 4 * args.hidden_size, "n_layers": args.layers,
        "n_heads": args.heads, "hidden_dropout_prob": args.dropout, "attn_dropout_prob": args.dropout,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE",
        "train_neg_sample_args": None,
        "epochs": args.epochs, "train_batch_size": args.batch_size, "learning_rate": args.lr,
        "stopping_step": args.stopping_step, "eval_step": 1,
        "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG", "Hit"], "topk": [1, 10], "valid_metric": "NDCG@10",
        "eval_batch_size": 1024, "seed": args.seed, "reproducibility": True,
        "device": "cpu", "use_gpu": False, "gpu_id": "", "show_progress": False,
        "checkpoint_dir": str(out / "checkpoints"), "save_dataset": False, "save_dataloaders": False,
        "log_wandb": False, "state": "INFO",
    }


def ranked_lists(model, loader, dataset, top: int) -> dict[int, list[int]]:
    """Our user index -> our item indices of the top ``top`` full-catalog scores (padding item excluded)."""
    import torch

    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    out = {}
    model.eval()
    with torch.no_grad():
        for batch in loader:
            interaction = batch[0]
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -float("inf")
            top_ids = scores.topk(top, dim=1).indices.numpy()
            users = dataset.id2token(uid_field, interaction[uid_field].numpy())
            items = dataset.id2token(iid_field, top_ids)
            for user, row in zip(users, items):
                out[int(user)] = [int(i) for i in row]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    torch.set_num_threads(args.threads)
    prepared, out = Path(args.prepared).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # RecBole writes ./log/ and ./log_tensorboard/ relative to the working directory
    users, meta = read_prepared(prepared)
    max_len = args.max_len or int(meta["max_history"])
    counts = write_atomic_files(users, max_len, out / "data" / DATASET)
    config = Config(model="SASRec", dataset=DATASET, config_dict=recbole_config(args, max_len, out))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if dataset.item_num - 1 != meta["items"]:
        raise SystemExit(f"RecBole sees {dataset.item_num - 1} items but the prepared catalog has {meta['items']}")
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    start = time.perf_counter()
    curve: list[tuple[int, float]] = []
    _, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                                       callback_fn=lambda epoch, score: curve.append((int(epoch), float(score))))
    train_s = time.perf_counter() - start
    # RecBole's own load_best_model calls torch.load with torch >= 2.6's weights_only=True default, which
    # rejects its checkpoint (it pickles the config); the file is the one this process just wrote.
    best = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    trainer.model.load_state_dict(best["state_dict"])
    trainer.model.load_other_parameter(best.get("other_parameter"))
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    for split, loader in (("valid", valid_data), ("test", test_data)):
        ranked = ranked_lists(trainer.model, loader, dataset, args.top)
        ordered = [ranked[u["user"]] for u in users]
        (out / f"ranked_{split}.json").write_text(json.dumps(ordered))
    summary = {
        "model": "SASRec", "recbole": __import__("recbole").__version__, "torch": torch.__version__,
        "rows": counts, "items": meta["items"], "max_len": max_len, "seed": args.seed,
        "epochs_run": len(curve), "best_epoch": max(curve, key=lambda c: c[1])[0] if curve else None,
        "valid_ndcg10_by_epoch": [score for _, score in curve],
        "train_seconds": round(train_s, 1),
        "recbole_valid": {k: float(v) for k, v in best_valid_result.items()},
        "recbole_test": {k: float(v) for k, v in test_result.items()},
        "args": vars(args),
    }
    (out / "recbole_metrics.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
