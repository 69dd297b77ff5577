"""Evaluation: constrained beam search over the full catalog, scored with eval/metrics.py.

For each user of the split, the prompt is ``vocab.encode_prompt(history)`` (``<bos>`` + history item tokens,
or the text template of an imported LLM, data/prompts.py); the engine's exact
constrained beam search (beam width W = ``eval.beam_width``) returns the W best catalog items by
sequence log-probability, best first; that ranked list is scored against the user's target set.
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


def evaluate(engine: Any, vocab: ItemVocab, examples: list, eval_cfg: EvalConfig) -> dict[str, float]:
    """Pass@K, Recall@K, NDCG@K for every K in ``eval_cfg.ks`` plus ``num_users`` and ``eval_time_s``."""
    start = time.perf_counter()
    ranked = ranked_items(engine, vocab, examples, eval_cfg)
    metrics = ranking_metrics(ranked, [list(ex.targets) for ex in examples], eval_cfg.ks)
    metrics["num_users"] = float(len(examples))
    metrics["eval_time_s"] = time.perf_counter() - start
    return metrics
