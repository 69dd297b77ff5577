"""The supervised stage: next-item cross-entropy on the training sequences, optionally to convergence.

Examples (``sft.examples``): ``prefixes`` (one prompt per training position -> its next item + <eos>) or
``windows`` (runs of consecutive items as one causal sequence, every item after the first a target;
data/dataset.py). A window is encoded as prompt ``<bos> + first item`` and response ``the remaining
items' tokens``, right-padded with ``<pad>`` to the batch's longest (pad tokens are not scored).

Convergence (``sft.eval_every`` > 0): every ``eval_every`` steps the weights are evaluated on the eval
split; the best evaluation by ``eval.select_metric`` is saved as a checkpoint (trainer/hooks.py), and after
``sft.patience`` evaluations without a new best SFT stops. SFT always ends on the best evaluation's
weights: the actor reloads that checkpoint (weights, optimizer and LR schedule, as if training had stopped
there) before the end-of-SFT checkpoint is written; ``sft_best_step`` in the trainer state names it.
"""

from __future__ import annotations

import torch

from recast_mcore.data.tokens import PAD_ID, ItemVocab
from recast_mcore.trainer import checkpoints as ckpt
from recast_mcore.trainer.data_feed import EpochSampler
from recast_mcore.trainer.hooks import due, evaluate_and_log, save_checkpoint
from recast_mcore.trainer.weights import push_weights
from recast_mcore.utils.rng import derive_seed, seed_everything


def encode_examples(vocab: ItemVocab, examples: list) -> tuple[list[list[int]], torch.Tensor]:
    """(prompt_ids: N lists, responses: LongTensor[N, T]) with the first target as the response item."""
    prompt_ids = [vocab.encode_prompt(ex.history) for ex in examples]
    responses = torch.tensor([vocab.encode_response(ex.targets[0]) for ex in examples], dtype=torch.long)
    return prompt_ids, responses


def encode_windows(vocab: ItemVocab, windows: list) -> tuple[list[list[int]], torch.Tensor]:
    """(prompt_ids: ``<bos>`` + first item, responses [N, T]: the other items' tokens, ``<pad>``-padded)."""
    prompt_ids = [vocab.encode_prompt(w.history) for w in windows]
    width = max(len(w.targets) for w in windows) * vocab.item_len
    responses = torch.full((len(windows), width), PAD_ID, dtype=torch.long)
    for i, w in enumerate(windows):
        tokens = vocab.item_tokens[torch.as_tensor(w.targets, dtype=torch.long)].reshape(-1)
        responses[i, : tokens.numel()] = tokens
    return prompt_ids, responses


def sft_feed(job) -> tuple[EpochSampler, object]:
    """The step-addressed example sampler and the encoder of the configured example kind."""
    cfg = job.cfg.sft
    if cfg.examples == "windows":
        return EpochSampler(job.dataset.sft_windows(), cfg.batch_size, job.cfg.seed, "sft_window_epoch"), encode_windows
    return EpochSampler(job.dataset.sft_examples(), cfg.batch_size, job.cfg.seed, "sft_epoch"), encode_examples


def run_sft(job) -> None:
    """SFT steps until the configured epochs (or max_steps, or early stopping); then sync, evaluate and save."""
    cfg, st = job.cfg.sft, job.state
    if st.stage != "sft":
        return
    feed, encode = sft_feed(job)
    total = feed.steps_for_epochs(cfg.epochs)
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    job.logger.start_bar("sft", total, st.sft_step)
    while st.sft_step < total and not st.sft_stopped:
        step = st.sft_step + 1
        seed_everything(derive_seed(job.cfg.seed, "sft", step))
        metrics = job.actor.sft_step(*encode(job.dataset.vocab, feed.batch(step - 1)))
        st.sft_step = step
        if due(step, cfg.log_every, total):
            job.logger.log("sft", step, 0, metrics)
        job.logger.update_bar({"loss": metrics["loss"]})
        if step < total and cfg.eval_every and step % cfg.eval_every == 0:
            periodic_evaluation(job, step)
        if step < total and cfg.save_every and step % cfg.save_every == 0:
            save_checkpoint(job, "sft", step)
    job.logger.close_bar()
    finish_sft(job)


def periodic_evaluation(job, step: int) -> None:
    """Evaluate the current weights (a new best is saved by the hook); decide on early stopping."""
    sync_weights(job)
    evaluate_and_log(job, "sft", step)
    patience = job.cfg.sft.patience
    if patience and job.state.evals_since_best >= patience:
        job.state.sft_stopped = True
        job.logger.write_line(f"[sft] early stop at step {step}: no better {job.cfg.eval.select_metric} "
                              f"than step {job.state.best_step} in {patience} evaluations")


def finish_sft(job) -> None:
    """End of SFT: last evaluation, back to the best evaluation's weights, end-of-SFT checkpoint."""
    cfg, st = job.cfg.sft, job.state
    sync_weights(job)
    if not (st.sft_stopped or st.sft_evaluated) and (cfg.eval_at_end or cfg.eval_every):
        st.sft_evaluated = True  # before the hook's best save, so a resume from that save does not repeat it
        evaluate_and_log(job, "sft", st.sft_step)
    if cfg.eval_every and st.best_step and st.best_step != st.sft_step:
        best = ckpt.checkpoints_root(job.run_dir) / ckpt.checkpoint_name("sft", st.best_step)
        job.actor.load(best)
        job.logger.write_line(f"[sft] ends on the weights of step {st.best_step} "
                              f"({job.cfg.eval.select_metric}={st.best_value:.4f}), from {best}")
        sync_weights(job)
    st.sft_best_step = st.best_step if cfg.eval_every else 0
    st.best_step, st.best_value, st.evals_since_best = 0, None, 0
    st.stage = "rl"
    save_checkpoint(job, "sft", st.sft_step)


def sync_weights(job) -> None:
    """Serve the actor's current weights to the rollout engine as a new policy version."""
    job.state.policy_version += 1
    push_weights(job.engine, job.cfg.rollout, job.actor, job.cfg.model, job.dataset.vocab.vocab_size,
                 job.state.policy_version)
