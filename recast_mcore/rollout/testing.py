"""Small fixtures for rollout tests and benchmarks: a random tiny HF Llama and a fixed-length catalog.

Until the actor and the HF export land these stand in for them: ``hf_logits_fn`` plays the actor's
``logits_fn`` and ``constrained_logprobs`` is the reference ``log pi_c`` of docs/contracts.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process
from recast_mcore.rollout.catalog import ItemCatalog


def random_catalog(num_items: int, codes_per_level: list[int], seed: int = 0):
    """An ``ItemVocab`` with ``num_items`` distinct random code rows (special tokens 0..3, EOS = 2)."""
    from recast_mcore.data.tokens import ItemVocab

    total = 1
    for k in codes_per_level:
        total *= k
    if num_items > total:
        raise ValueError(f"{num_items} items do not fit in {total} code combinations")
    g = torch.Generator().manual_seed(seed)
    if total > 2**26:  # e.g. 3 x 8192 codes: draw with replacement, keep distinct rows, shuffle
        flat = torch.zeros(0, dtype=torch.long)
        while flat.numel() < num_items:
            draw = torch.randint(0, total, (int(1.1 * num_items) + 1024,), generator=g)
            flat = torch.unique(torch.cat([flat, draw]))
        flat = flat[torch.randperm(flat.numel(), generator=g)[:num_items]]
    else:
        flat = torch.randperm(total, generator=g)[:num_items]
    codes = []
    for k in reversed(codes_per_level):
        codes.append(flat % k)
        flat = flat // k
    return ItemVocab(torch.stack(codes[::-1], 1), codes_per_level)


def make_tiny_llama(out_dir: str | Path, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, init_std: float = 0.2, seed: int = 0):
    """Save a random ``LlamaForCausalLM`` (fp32) to ``out_dir`` and return the model (eval mode)."""
    declare_torchvision_ops_in_process()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, initializer_range=init_std,
    )
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(str(out_dir))
    return model


def actor_model_cfg():
    """The Megatron/HF shape of ``make_tiny_llama``'s defaults (Llama layout, untied, 512 positions)."""
    from recast_mcore.config.actor import ModelConfig

    return ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                       qk_layernorm=False, tie_embeddings=False, rotary_base=10000, norm_epsilon=1e-6,
                       max_seq_len=512, init_method_std=0.2)


def perturbed_state_dict(model, scale: float = 0.05, seed: int = 1) -> dict[str, torch.Tensor]:
    """``{hf_name: w + scale * N(0, 1)}``: stands in for the actor's updated weights."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def hf_logits_fn(model):
    """``input_ids [B, S] -> logits [B, S, V]`` with the HF model (no attention mask: right padding is safe)."""

    @torch.no_grad()
    def logits_fn(input_ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids).logits.float()

    return logits_fn


@torch.no_grad()
def constrained_logprobs(model, catalog: ItemCatalog, prompt_ids: list[list[int]], responses: torch.Tensor,
                         batch_size: int = 256) -> torch.Tensor:
    """Reference ``log pi_c(y_t | x, y_<t)`` [N, T] for flat ``responses [N, T]`` (teacher forcing).

    Row n runs ``prompt_n + y_n[:-1]`` (right-padded, exact for a causal LM); the logits at positions
    ``len(prompt_n) - 1 + t`` give the distribution of ``y_n[t]``, masked by the trie and renormalized.
    """
    n, t_len = responses.shape
    out = torch.zeros(n, t_len, dtype=torch.float32)
    for lo in range(0, n, batch_size):
        rows = range(lo, min(lo + batch_size, n))
        seqs = [list(prompt_ids[i]) + responses[i, :-1].tolist() for i in rows]
        ids = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq)
        logits = model(input_ids=ids).logits.float()[..., : catalog.vocab_size]
        for r, i in enumerate(rows):
            start = len(prompt_ids[i]) - 1
            resp = responses[i].tolist()
            mask = catalog.allowed_mask([resp[:t] for t in range(t_len)])
            lp = torch.log_softmax(logits[r, start : start + t_len].masked_fill(~mask, float("-inf")), -1)
            out[i] = lp.gather(1, responses[i][:, None]).squeeze(1)
    return out


@torch.no_grad()
def exhaustive_scores(model, catalog: ItemCatalog, prompt: list[int]) -> torch.Tensor:
    """[N] sequence log-probs s(y) of every catalog item for one prompt (the exact ranking)."""
    responses = catalog.responses_of(torch.arange(catalog.num_items))
    return constrained_logprobs(model, catalog, [prompt] * catalog.num_items, responses).sum(-1)


def exported_tiny_llama(root: Path):
    """The tests' served model: a 40-item catalog, a tiny random Llama and its project export in ``root/hf``
    (what the trainer hands the engine at the first launch). Returns (vocab, catalog, model)."""
    from recast_mcore.checkpoint.hf_mapping import export_hf_dir

    vocab = random_catalog(40, [6, 5, 4], seed=3)
    model = make_tiny_llama(Path(root) / "hf_raw", vocab.vocab_size)
    export_hf_dir(Path(root) / "hf", model.state_dict(), actor_model_cfg(), vocab.token_strings,
                  pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)
    return vocab, ItemCatalog.from_vocab(vocab), model
