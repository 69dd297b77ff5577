"""In-process rollout engine with a KV cache (``rollout.engine: torch_kv``): the policy's weights in a
Hugging Face ``transformers`` model (the same export the SGLang engine serves, checkpoint/hf_mapping.py),
each prompt encoded ONCE, candidates and beams decoded over its cached keys and values.

Why: the ``torch`` engine runs the actor's Megatron model, which has no KV cache here, so every decoding step
re-runs prompt + prefix for every candidate: B*G*T*(P+t) token positions per rollout step, and
U*(1 + W*(L-1))*(P+t) per beam-search evaluation. With the cache: B*P + B*G*T (sampling) and
U*(P + W*(1 + 2 + ... + (L-1))) (beam search: the prompt cache is shared by a prompt's beams; a level-t beam
feeds its t prefix tokens). On the studies' sizes (P ~ 81, G = 8, W = 20, L = 4) that is ~6x (sampling)
and ~35x (beam search) fewer positions; measured speed-ups are in docs/study.md.

Semantics are those of the ``torch`` engine: the same trie constraint (``ItemCatalog.allowed_mask``), the
same sampling step (``torch_engine.sample_constrained``: temperature / top-k / top-p on the masked logits,
log-probs of the temperature-1 constrained policy), the same exact beam search (rollout/beam.py), a
``torch.Generator`` the trainer reseeds from ``(seed, "rollout", step)`` (reproducible and resumable). The
step after a complete item allows only EOS (log-prob exactly 0), so no forward is run for it.
Prompts are left-padded (attention mask + explicit position ids, so RoPE sees each prompt from position 0).
Weights: ``update_weights(hf_state_dict, version)`` loads the gathered HF state dict (the trainer's
``push_weights`` after every update, as for SGLang). It runs on rank 0 for any actor layout.
Numerics: fp32 transformers vs Megatron differ by float rounding only (tests: log-probs agree to ~1e-5).
"""

from __future__ import annotations

import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.rollout.base import EngineResources, register_engine
from recast_mcore.rollout.beam import constrained_beam_search, masked_top_candidates
from recast_mcore.rollout.catalog import ItemCatalog, check_prompts
from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process
from recast_mcore.rollout.torch_engine import sample_constrained
from recast_mcore.rollout.types import BeamResults, RolloutGroups


class PromptCache:
    """Left-padded prompts run once: last-position logits [B, V], the KV cache, attention mask [B, P], lengths [B]."""

    def __init__(self, model, prompts: list[list[int]], vocab_size: int):
        self.lengths = torch.tensor([len(p) for p in prompts])
        width = int(self.lengths.max())
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        self.mask = (torch.arange(width)[None, :] >= (width - self.lengths)[:, None]).long()
        positions = (self.mask.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True)
        self.last = out.logits[:, -1, :vocab_size].float()
        self.cache = out.past_key_values

    def rows(self, owner: torch.Tensor):
        """A new cache holding prompt ``owner[r]``'s keys/values for every row r."""
        from transformers import DynamicCache

        rows = DynamicCache()
        for idx, layer in enumerate(self.cache.layers):
            rows.update(layer.keys[owner], layer.values[owner], idx)
        return rows

    def continue_rows(self, model, owner: torch.Tensor, tokens: torch.Tensor, cache, vocab_size: int, past: int = 0) -> torch.Tensor:
        """Feed ``tokens [R, t]`` (continuing ``past`` already-cached generated tokens) after each row's prompt;
        returns the logits [R, V] at the last fed position."""
        r, t = tokens.shape
        mask = torch.cat([self.mask[owner], torch.ones(r, past + t, dtype=torch.long)], 1)
        positions = self.lengths[owner][:, None] + past + torch.arange(t)[None, :]
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :vocab_size].float()


class KVCacheRolloutEngine:
    """Constrained sampling and beam search over a cached prompt (module docstring)."""

    def __init__(self, catalog: ItemCatalog, model_dir: str, *, batch_size: int = 256, seed: int = 0, initial_version: int = 0):
        declare_torchvision_ops_in_process()  # transformers may import torchvision (rollout/cpu_bridge.py)
        from transformers import AutoModelForCausalLM

        self.catalog = catalog
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.policy_version = initial_version

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], targets: list[list[int]], sampling: SamplingConfig) -> RolloutGroups:
        check_prompts(prompt_ids, self.catalog.vocab_size)
        if len(targets) != len(prompt_ids):
            raise ValueError(f"{len(targets)} target lists for {len(prompt_ids)} prompts")
        g, t_len = sampling.group_size, self.catalog.response_len
        per_chunk = max(1, self.batch_size // g)
        responses, logprobs = [], []
        for lo in range(0, len(prompt_ids), per_chunk):
            r, lp = self._sample_chunk(prompt_ids[lo : lo + per_chunk], sampling)
            responses.append(r)
            logprobs.append(lp)
        b = len(prompt_ids)
        resp = torch.cat(responses).reshape(b, g, t_len)
        groups = RolloutGroups(
            prompt_ids=[list(p) for p in prompt_ids], responses=resp, token_logprobs=torch.cat(logprobs).reshape(b, g, t_len),
            item_ids=self.catalog.item_ids(resp), targets=[list(x) for x in targets],
            policy_version=self.policy_version, num_sampled=b * g,
        )
        groups.validate()
        return groups

    def _sample_chunk(self, prompts: list[list[int]], sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """[len(prompts) * G, T] sampled responses and their constrained log-probs (rows prompt-major)."""
        v, t_len = self.catalog.vocab_size, self.catalog.response_len
        prompt = PromptCache(self.model, prompts, v)
        owner = torch.arange(len(prompts)).repeat_interleave(sampling.group_size)
        cache = prompt.rows(owner)
        logits = prompt.last[owner]
        generated = torch.zeros(owner.shape[0], t_len, dtype=torch.long)
        logprobs = torch.zeros(owner.shape[0], t_len)
        for t in range(t_len):
            prefixes = generated[:, :t].tolist()
            generated[:, t], logprobs[:, t] = sample_constrained(logits, self.catalog.allowed_mask(prefixes), sampling,
                                                                 self.generator)
            if t + 1 < t_len - 1:  # the last step (after a full item) allows only EOS: no forward needed
                logits = prompt.continue_rows(self.model, owner, generated[:, t : t + 1], cache, v, past=t)
            else:
                logits = torch.zeros_like(logits)
        return generated, logprobs

    @torch.no_grad()
    def beam_search(self, prompt_ids: list[list[int]], beam_width: int) -> BeamResults:
        check_prompts(prompt_ids, self.catalog.vocab_size)
        per_chunk = max(1, self.batch_size // beam_width)
        parts = [self._beam_chunk(prompt_ids[lo : lo + per_chunk], beam_width) for lo in range(0, len(prompt_ids), per_chunk)]
        responses, token_lp, scores = (torch.cat([p[i] for p in parts]) for i in range(3))
        result = BeamResults(
            prompt_ids=[list(p) for p in prompt_ids], responses=responses, token_logprobs=token_lp, scores=scores,
            item_ids=self.catalog.item_ids(responses), policy_version=self.policy_version,
        )
        result.validate()
        return result

    def _beam_chunk(self, prompts: list[list[int]], beam_width: int):
        v = self.catalog.vocab_size
        prompt = PromptCache(self.model, prompts, v)

        def top_candidates(owner: torch.Tensor, prefixes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            allowed = self.catalog.allowed_mask(prefixes.tolist())
            if prefixes.shape[1] == 0:
                return masked_top_candidates(prompt.last[owner], allowed, k)
            parts = []
            for lo in range(0, owner.shape[0], self.batch_size):
                sub = owner[lo : lo + self.batch_size]
                logits = prompt.continue_rows(self.model, sub, prefixes[lo : lo + self.batch_size], prompt.rows(sub), v)
                parts.append(masked_top_candidates(logits, allowed[lo : lo + self.batch_size], k))
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

        cat = self.catalog
        return constrained_beam_search(len(prompts), cat.item_len, cat.eos_id, beam_width, top_candidates, v)

    def update_weights(self, hf_state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """Load the gathered HF-layout weights (a tied model has no lm_head entry) as ``version``."""
        if hf_state_dict is None:
            raise ValueError("the torch_kv engine needs the HF-layout state dict (push_weights gathers it)")
        if version <= self.policy_version:
            raise ValueError(f"weight version must increase: {version} <= current {self.policy_version}")
        missing, unexpected = self.model.load_state_dict(hf_state_dict, strict=False)
        tied = getattr(self.model.config, "tie_word_embeddings", False)
        missing = [k for k in missing if not (tied and k == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"HF state dict does not fit the engine's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.policy_version = version

    def close(self) -> None:
        pass


@register_engine("torch_kv")
def build_kv_engine(cfg: RolloutConfig, resources: EngineResources) -> KVCacheRolloutEngine:
    if not resources.model_dir:
        raise ValueError("the 'torch_kv' rollout engine needs resources.model_dir (an exported HF directory)")
    return KVCacheRolloutEngine(resources.catalog, resources.model_dir, batch_size=cfg.torch_batch_size,
                                seed=cfg.seed, initial_version=resources.initial_version)
