"""In-process rollout engine: runs the actor's own model through ``logits_fn`` (quick tests, small runs).

No KV cache: at decoding step t every row (prompt + t generated tokens, right-padded) is run through
``logits_fn`` and the logits at its last real position are used. Right padding is exact for a causal LM
(later positions never influence earlier ones). Rows are processed ``batch_size`` at a time.

Sampling step for a row with allowed set A_t (trie):
    z' = z masked to -inf outside A_t
    returned log-prob = log_softmax(z')[y_t]                      (temperature-1 constrained policy)
    y_t ~ softmax(top_p(top_k(z' / temperature)))                  (SGLang's order: temperature, top-k, top-p)
"""

from __future__ import annotations

import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.rollout.base import EngineResources, LogitsFn, register_engine
from recast_mcore.rollout.beam import constrained_beam_search, masked_top_candidates
from recast_mcore.rollout.catalog import ItemCatalog, check_prompts
from recast_mcore.rollout.types import BeamResults, RolloutGroups


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """[R, V] -> [R, V] with tokens outside the top-k / nucleus set to -inf (-1 / 1.0 disable them)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop_sorted = (torch.cumsum(sorted_p, dim=-1) - sorted_p) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_constrained(logits: torch.Tensor, allowed: torch.Tensor, sampling: SamplingConfig,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step (module docstring): logits [R, V], allowed [R, V] bool -> (tokens [R], log-probs [R])
    with the log-probs of the temperature-1 constrained policy."""
    masked = logits.masked_fill(~allowed, float("-inf"))
    policy_lp = torch.log_softmax(masked, dim=-1)
    sample_logits = filter_top_k_top_p(masked / sampling.temperature, sampling.top_k, sampling.top_p)
    tok = torch.multinomial(torch.softmax(sample_logits, dim=-1), 1, generator=generator).squeeze(1)
    return tok, policy_lp.gather(1, tok[:, None]).squeeze(1)


class TorchRolloutEngine:
    """Constrained sampling and beam search with an in-process ``logits_fn``."""

    def __init__(self, catalog: ItemCatalog, logits_fn: LogitsFn, *, batch_size: int = 256, seed: int = 0,
                 initial_version: int = 0):
        self.catalog = catalog
        self.logits_fn = logits_fn
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.policy_version = initial_version

    @torch.no_grad()
    def last_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """[R, V] float32 logits of the next token after each sequence (catalog vocab columns only)."""
        out = []
        for lo in range(0, len(sequences), self.batch_size):
            chunk = sequences[lo : lo + self.batch_size]
            lengths = torch.tensor([len(s) for s in chunk])
            ids = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            logits = self.logits_fn(ids)
            if logits.dim() != 3 or logits.shape[:2] != ids.shape or logits.shape[-1] < self.catalog.vocab_size:
                raise ValueError(
                    f"logits_fn returned shape {tuple(logits.shape)} for input {tuple(ids.shape)}; "
                    f"expected [B, S, V>={self.catalog.vocab_size}]"
                )
            out.append(logits[torch.arange(len(chunk)), lengths - 1, : self.catalog.vocab_size].float())
        return torch.cat(out)

    def generate(self, prompt_ids: list[list[int]], targets: list[list[int]], sampling: SamplingConfig) -> RolloutGroups:
        check_prompts(prompt_ids, self.catalog.vocab_size)
        if len(targets) != len(prompt_ids):
            raise ValueError(f"{len(targets)} target lists for {len(prompt_ids)} prompts")
        b, g, t_len = len(prompt_ids), sampling.group_size, self.catalog.response_len
        rows = [list(p) for p in prompt_ids for _ in range(g)]
        generated = torch.zeros(b * g, t_len, dtype=torch.long)
        logprobs = torch.zeros(b * g, t_len)
        for t in range(t_len):
            prefixes = generated[:, :t].tolist()
            logits = self.last_logits([r + p for r, p in zip(rows, prefixes)])
            generated[:, t], logprobs[:, t] = sample_constrained(logits, self.catalog.allowed_mask(prefixes), sampling,
                                                                 self.generator)
        responses = generated.reshape(b, g, t_len)
        groups = RolloutGroups(
            prompt_ids=[list(p) for p in prompt_ids], responses=responses, token_logprobs=logprobs.reshape(b, g, t_len),
            item_ids=self.catalog.item_ids(responses), targets=[list(x) for x in targets],
            policy_version=self.policy_version, num_sampled=b * g,
        )
        groups.validate()
        return groups

    def beam_search(self, prompt_ids: list[list[int]], beam_width: int) -> BeamResults:
        check_prompts(prompt_ids, self.catalog.vocab_size)

        def top_candidates(owner: torch.Tensor, prefixes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            rows = prefixes.tolist()
            seqs = [list(prompt_ids[o]) + p for o, p in zip(owner.tolist(), rows)]
            parts = [masked_top_candidates(self.last_logits(seqs[lo : lo + self.batch_size]),
                                           self.catalog.allowed_mask(rows[lo : lo + self.batch_size]), k)
                     for lo in range(0, len(seqs), self.batch_size)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

        cat = self.catalog
        responses, token_lp, scores = constrained_beam_search(len(prompt_ids), cat.item_len, cat.eos_id, beam_width,
                                                              top_candidates, cat.vocab_size)
        result = BeamResults(
            prompt_ids=[list(p) for p in prompt_ids], responses=responses, token_logprobs=token_lp, scores=scores,
            item_ids=self.catalog.item_ids(responses), policy_version=self.policy_version,
        )
        result.validate()
        return result

    def update_weights(self, hf_state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """The engine runs the actor's live model: only the version changes (weights must be None)."""
        if hf_state_dict is not None:
            raise ValueError("the torch engine shares the actor's model; pass hf_state_dict=None")
        if version <= self.policy_version:
            raise ValueError(f"weight version must increase: {version} <= current {self.policy_version}")
        self.policy_version = version

    def close(self) -> None:
        pass


@register_engine("torch")
def build_torch_engine(cfg: RolloutConfig, resources: EngineResources) -> TorchRolloutEngine:
    if resources.logits_fn is None:
        raise ValueError("the 'torch' rollout engine needs resources.logits_fn (the actor's forward)")
    return TorchRolloutEngine(resources.catalog, resources.logits_fn, batch_size=cfg.torch_batch_size,
                              seed=cfg.seed, initial_version=resources.initial_version)
