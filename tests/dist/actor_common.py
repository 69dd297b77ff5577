"""Shared fixtures of the actor's multi-process workers: a tiny catalog, model, and update batches."""

from __future__ import annotations

import torch

from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.signal import ContrastLossConfig, PpoLossConfig
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.data.trie import ItemTrie
from recast_mcore.signal.batch import Role, UpdateBatch

TP_PP_LAYOUTS = {"tp1pp1": (1, 1, 1), "tp2": (2, 1, 1), "tp2only": (2, 1, 1), "pp2": (1, 2, 1), "pp2vpp2": (1, 2, 2), "tp2pp2": (2, 2, 1), "dp2": (1, 1, 1)}


def catalog(num_items: int = 40, seed: int = 0) -> tuple[ItemVocab, ItemTrie]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.randint(0, 6, (num_items * 2, 3), generator=g), dim=0)[:num_items]
    vocab = ItemVocab(codes, [6, 6, 6])
    return vocab, ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)


def model_cfg(**kw) -> ModelConfig:
    base = dict(num_layers=4, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2,
                qk_layernorm=True, tie_embeddings=False, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def parallel_cfg(tp: int, pp: int, vpp: int = 1, **kw) -> ParallelConfig:
    return ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, virtual_pipeline_parallel=vpp, **kw)


def optim_cfg(**kw) -> OptimConfig:
    base = dict(lr=3e-3, clip_grad=1.0, weight_decay=0.01)
    base.update(kw)
    return OptimConfig(**base)


def prompts_and_items(vocab: ItemVocab, n: int, seed: int) -> tuple[list[list[int]], torch.Tensor, list[int]]:
    """n prompts of 2..5 history items and n random catalog responses ([n, item_len+1])."""
    g = torch.Generator().manual_seed(seed)
    prompts, items = [], torch.randint(0, vocab.num_items, (n,), generator=g).tolist()
    for _ in range(n):
        h = int(torch.randint(2, 6, (1,), generator=g))
        prompts.append(vocab.encode_prompt(torch.randint(0, vocab.num_items, (h,), generator=g).tolist()))
    responses = torch.tensor([vocab.encode_response(i) for i in items], dtype=torch.long)
    return prompts, responses, items


def grpo_batch(vocab: ItemVocab, groups: int, group_size: int, seed: int) -> UpdateBatch:
    """``groups`` prompts x ``group_size`` sampled candidates with random advantages (ppo_clip)."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses, _ = prompts_and_items(vocab, groups * group_size, seed)
    prompts = [prompts[(i // group_size) * group_size] for i in range(len(prompts))]  # one prompt per group
    n, t = responses.shape
    return UpdateBatch(
        prompt_ids=prompts, responses=responses, old_logprobs=-torch.rand(n, t, generator=g),
        advantages=torch.randn(n, generator=g), weights=torch.ones(n), roles=torch.full((n,), int(Role.SAMPLED)),
        group_index=torch.arange(groups).repeat_interleave(group_size), token_mask=torch.ones(n, t, dtype=torch.bool),
        pairs=torch.zeros(0, 2, dtype=torch.long), pair_weights=torch.zeros(0), loss_name="ppo_clip",
        loss_params=PpoLossConfig(),
    )


def contrast_batch(vocab: ItemVocab, groups: int, seed: int) -> UpdateBatch:
    """ReCast-shaped: 2 rows per group (positive/anchor, negative), one pair each (pairwise_contrast)."""
    b = grpo_batch(vocab, groups, 2, seed)
    n = b.num_sequences
    b.roles = torch.tensor([int(Role.ANCHOR) if i % 4 == 0 else int(Role.POSITIVE) if i % 2 == 0 else int(Role.NEGATIVE) for i in range(n)])
    b.advantages = torch.zeros(n)
    b.pairs = torch.stack([torch.arange(0, n, 2), torch.arange(1, n, 2)], dim=1)
    b.pair_weights = torch.ones(groups)
    b.loss_name, b.loss_params = "pairwise_contrast", ContrastLossConfig(anchor_nll_coef=0.1)
    return b
