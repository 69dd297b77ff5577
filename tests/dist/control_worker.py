"""Control-plane worker (torchrun, 3 processes, gloo): followers outlive a short default-group timeout.

    torchrun --nproc-per-node 3 tests/dist/control_worker.py OUT

The default group gets a short timeout (3 s, standing in for NCCL's 10 minutes), the control group a long
one (60 s). Rank 0 "rolls out" for 8 s, then sends the batch with ``Step0.finish``: the followers, waiting in
``collective.follow`` over the control group, must receive it. Then the same wait on the default group must
time out (the failure the control plane prevents). Results: OUT/control.json (written by rank 0).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

SHORT_S, LONG_S, WORK_S = 3, 60, 8


def _start_together() -> None:
    """Wait until every rank got here (a counter in torchrun's store)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=300))
    world = int(os.environ["WORLD_SIZE"])
    store.add("control_test_ready", 1)
    while int(store.add("control_test_ready", 0)) < world:
        time.sleep(0.02)


def main(out: Path) -> None:
    from recast_mcore.actor.parallel import init_default_group
    from recast_mcore.trainer.collective import Step0, follow
    from recast_mcore.utils.dist import all_gather_object, init_control_group

    _start_together()  # imports take seconds under load: the 3 s groups must not see that skew
    init_default_group("gloo", timedelta(seconds=SHORT_S))
    init_control_group(LONG_S)
    rank = dist.get_rank()
    t0 = time.monotonic()
    if rank == 0:
        time.sleep(WORK_S)  # a rollout far longer than the default group's timeout
        got = Step0(actor=None).finish({"batch": 42})
    else:
        got = follow(actor=None)
    waited = time.monotonic() - t0
    # the same wait on the default group (what the followers did before the control plane)
    t0 = time.monotonic()
    if rank == 0:
        time.sleep(WORK_S)
        default_error = ""
    else:
        try:
            box = [None]
            dist.broadcast_object_list(box, src=0)
            default_error = "no error"
        except Exception as exc:  # noqa: BLE001
            default_error = f"{type(exc).__name__}: {str(exc)[:200]}"
    default_waited = time.monotonic() - t0
    rows = all_gather_object({"rank": rank, "got": got, "waited_s": waited, "default_error": default_error,
                              "default_waited_s": default_waited})
    if rank == 0:
        (out / "control.json").write_text(json.dumps({"short_s": SHORT_S, "long_s": LONG_S, "work_s": WORK_S, "ranks": rows}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
