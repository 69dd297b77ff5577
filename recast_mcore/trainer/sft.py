"""The supervised stage: next-item cross-entropy on every prefix of the training sequences."""

from __future__ import annotations

import torch

from recast_mcore.data.tokens import ItemVocab
from recast_mcore.trainer.data_feed import EpochSampler
from recast_mcore.trainer.hooks import due, evaluate_and_log, save_checkpoint
from recast_mcore.trainer.weights import push_weights
from recast_mcore.utils.rng import derive_seed, seed_everything


def encode_examples(vocab: ItemVocab, examples: list) -> tuple[list[list[int]], torch.Tensor]:
    """(prompt_ids: N lists, responses: LongTensor[N, T]) with the first target as the response item."""
    prompt_ids = [vocab.encode_prompt(ex.history) for ex in examples]
    responses = torch.tensor([vocab.encode_response(ex.targets[0]) for ex in examples], dtype=torch.long)
    return prompt_ids, responses


def run_sft(job) -> None:
    """SFT steps until the configured epochs (or max_steps); then sync, evaluate and save."""
    cfg, st = job.cfg.sft, job.state
    if st.stage != "sft":
        return
    feed = EpochSampler(job.dataset.sft_examples(), cfg.batch_size, job.cfg.seed, "sft_epoch")
    total = feed.steps_for_epochs(cfg.epochs)
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    job.logger.start_bar("sft", total, st.sft_step)
    while st.sft_step < total:
        step = st.sft_step + 1
        seed_everything(derive_seed(job.cfg.seed, "sft", step))
        metrics = job.actor.sft_step(*encode_examples(job.dataset.vocab, feed.batch(step - 1)))
        st.sft_step = step
        if due(step, cfg.log_every, total):
            job.logger.log("sft", step, 0, metrics)
        job.logger.update_bar({"loss": metrics["loss"]})
        if step < total and cfg.save_every and step % cfg.save_every == 0:
            save_checkpoint(job, "sft", step)
    job.logger.close_bar()
    st.policy_version += 1
    push_weights(job.engine, job.cfg.rollout, job.actor, job.cfg.model, job.dataset.vocab.vocab_size, st.policy_version)
    if cfg.eval_at_end:
        evaluate_and_log(job, "sft", st.sft_step)
    st.stage = "rl"
    save_checkpoint(job, "sft", st.sft_step)
