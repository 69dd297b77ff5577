"""Trainer-side worker of the real-server weight-sync test (torchrun, gloo): a TP2 x PP2 Megatron actor
streams its weights into the test's SGLang server, then scores what the server sampled.

    torchrun --nproc-per-node 4 tests/dist/sync_worker.py OUT [TP PP]      (default TP 2, PP 2)

OUT/target.json: the SyncTarget the test opened (``engine.begin_sync``), API key included (test files only).
The worker writes OUT/pushed.json (every stage's ``{name: file}``) and OUT/hf.pt (the full HF weights, only as
the test's reference), waits for OUT/sampled.pt, and writes OUT/actor_logprobs.pt.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def _wait(path: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path}")
        time.sleep(0.2)


def main(out: Path, tp: int, pp: int) -> None:
    from recast_mcore.actor.actor import MegatronActor
    from recast_mcore.actor.parallel import destroy_distributed, initialize_distributed
    from recast_mcore.checkpoint.hf_mapping import mcore_to_hf
    from recast_mcore.config.actor import OptimConfig, ParallelConfig
    from recast_mcore.data.trie import ItemTrie
    from recast_mcore.rollout.testing import actor_model_cfg, random_catalog
    from recast_mcore.rollout.weight_sync import ServerEndpoint, SyncTarget
    from recast_mcore.trainer.weights import stream_weights

    raw = json.loads((out / "target.json").read_text())
    raw["endpoints"] = [ServerEndpoint(**e) for e in raw["endpoints"]]
    raw["shapes"] = {k: tuple(v) for k, v in raw["shapes"].items()}
    target = SyncTarget(**raw)
    vocab = random_catalog(40, [6, 5, 4], seed=3)
    model_cfg = actor_model_cfg()
    parallel_cfg = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    initialize_distributed(parallel_cfg)
    trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(lr=1e-2), vocab.vocab_size, trie)
    prompts = [vocab.encode_prompt([i, i + 1]) for i in range(8)]
    responses = torch.tensor([vocab.encode_response(i + 2) for i in range(8)])
    actor.sft_step(prompts, responses)  # the weights the server gets are "after an actor update"
    t0 = time.perf_counter()
    pushed = stream_weights(actor, target)
    sync_s = time.perf_counter() - t0
    full = actor.full_state_dict()  # the test's reference only (tiny model)
    if dist.get_rank() == 0:
        torch.save(mcore_to_hf(full, model_cfg, vocab.vocab_size), out / "hf.pt")
        (out / "pushed.tmp").write_text(json.dumps({"pushed": pushed, "sync_s": sync_s}))
        (out / "pushed.tmp").rename(out / "pushed.json")
    _wait(out / "sampled.pt")
    sampled = torch.load(out / "sampled.pt", weights_only=True)
    lp = actor.logprobs(sampled["prompts"], sampled["responses"])
    if dist.get_rank() == 0:
        torch.save(lp, out / "actor.tmp")
        (out / "actor.tmp").rename(out / "actor_logprobs.pt")
    destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(x) for x in (sys.argv[2:4] or ["2", "2"])))
