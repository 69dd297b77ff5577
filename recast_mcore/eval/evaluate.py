"""Evaluation: constrained beam search over the full catalog, scored with eval/metrics.py.

For each user of the split, the prompt is ``vocab.encode_prompt(history)`` (``<bos>`` + history item tokens,
or the text template of an imported LLM, data/prompts.py); the engine's exact
constrained beam search (beam width W = ``eval.beam_width``) returns the W best catalog items by
sequence log-probability, best first; that ranked list is scored against the user's target set.
With ``eval.exclude_history`` items the user already interacted with are removed from the list first
(``drop_seen``; the count baselines and the oracle never rank them either).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from recast_mcore.config.train import EvalConfig
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.eval.metrics import ranking_metrics


def eval_examples(dataset: Any, eval_cfg: EvalConfig) -> list:
    """The users scored: ``dataset.examples(split)``, the first ``max_users`` when set."""
    examples = dataset.examples(eval_cfg.split)
    if not examples:
        raise ValueError(f"the prepared dataset has no '{eval_cfg.split}' examples to evaluate")
    return examples[: eval_cfg.max_users] if eval_cfg.max_users else examples


def ranked_items(engine: Any, vocab: ItemVocab, examples: list, eval_cfg: EvalConfig) -> torch.Tensor:
    """LongTensor[U, W]: beam-search ranked item ids per user (best first)."""
    chunks = []
    for lo in range(0, len(examples), eval_cfg.batch_size):
        chunk = examples[lo : lo + eval_cfg.batch_size]
        result = engine.beam_search([vocab.encode_prompt(ex.history) for ex in chunk], eval_cfg.beam_width)
        chunks.append(result.item_ids)
    return torch.cat(chunks)


def drop_seen(ranked: torch.Tensor, seen: list[list[int]]) -> torch.Tensor:
    """[U, W] ranked ids -> [U, W] with every item of the user's ``seen`` list removed, the rest moved up in
    order and -1 (never a hit) filling the tail."""
    width = max((len(s) for s in seen), default=0)
    padded = torch.full((len(seen), max(width, 1)), -2, dtype=torch.long)
    for u, s in enumerate(seen):
        padded[u, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    keep = ~(ranked.unsqueeze(-1) == padded.unsqueeze(1)).any(-1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept items first, in rank order
    return torch.where(torch.gather(keep, 1, order), torch.gather(ranked, 1, order), torch.full_like(ranked, -1))


def seen_items(dataset: Any, examples: list, split: str) -> list[list[int]]:
    """Every item each example's user interacted with before the targets (the FULL history, not the
    prompt's last max_history items): train (valid split), train + valid (test split)."""
    if split == "valid":
        return [dataset.train_sequences[ex.user] for ex in examples]
    return [dataset.train_sequences[ex.user] + dataset.valid_targets[ex.user] for ex in examples]


def evaluate(engine: Any, vocab: ItemVocab, examples: list, eval_cfg: EvalConfig,
             seen: list[list[int]] | None = None) -> dict[str, float]:
    """Pass@K, Recall@K, NDCG@K for every K in ``eval_cfg.ks`` plus ``num_users`` and ``eval_time_s``.

    With ``eval_cfg.exclude_history`` the items in ``seen`` (seen_items) are dropped from each ranked list
    before scoring, as the count baselines do (a beam width above max(ks) leaves room for them)."""
    start = time.perf_counter()
    ranked = ranked_items(engine, vocab, examples, eval_cfg)
    if eval_cfg.exclude_history:
        if seen is None:
            raise ValueError("eval.exclude_history needs the users' seen items")
        ranked = drop_seen(ranked, seen)
    metrics = ranking_metrics(ranked, [list(ex.targets) for ex in examples], eval_cfg.ks)
    metrics["num_users"] = float(len(examples))
    metrics["eval_time_s"] = time.perf_counter() - start
    return metrics
