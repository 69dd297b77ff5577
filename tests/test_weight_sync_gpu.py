"""GPU-only weight sync and placement (skipped without CUDA, see conftest): NCCL weight-update groups, CUDA IPC
tensor sync, memory release/resume of a colocated server, optimizer-state offload, streamed sync from a
Megatron actor on the server's GPU. Written for the GPU image; not run on the CPU development machine."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recast_mcore.config.rollout import SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.testing import constrained_logprobs, perturbed_state_dict

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.sglang]
TOL = 2e-4


@pytest.fixture(scope="module")
def gpu_setup(tmp_path_factory):
    from recast_mcore.rollout.placement import ServerSlot
    from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
    from recast_mcore.rollout.testing import exported_tiny_llama

    root = tmp_path_factory.mktemp("sglang_gpu")
    vocab, catalog, model = exported_tiny_llama(root)
    cfg = SGLangServerConfig(max_total_tokens=4096, mem_fraction_static=0.2, log_dir=str(root / "logs"))
    slot = ServerSlot(index=0, node=0, base_gpu_id=0, tp_size=1, dp_size=1)
    engine = SGLangRolloutEngine(cfg, WeightSyncConfig(method="distributed"), catalog, str(root / "hf"),
                                 work_dir=str(root / "work"), slots=[slot], memory_saver=True)
    prompts = [vocab.encode_prompt([i, (3 * i) % 40]) for i in range(8)]
    yield {"engine": engine, "model": model.cuda(), "catalog": catalog, "prompts": prompts, "root": root}
    engine.close()


def _check(setup, g):
    engine, catalog, prompts = setup["engine"], setup["catalog"], setup["prompts"]
    groups = engine.generate(prompts, [[0]] * len(prompts), SamplingConfig(group_size=g))
    assert groups.policy_version == engine.policy_version
    flat = groups.responses.reshape(-1, catalog.response_len)
    ref = constrained_logprobs(setup["model"], catalog, [p for p in prompts for _ in range(g)], flat.cuda()).cpu()
    assert (groups.token_logprobs.reshape(-1, catalog.response_len) - ref).abs().max().item() < TOL


@pytest.mark.parametrize("method", ["distributed", "tensor"])
def test_nccl_group_and_cuda_ipc_sync(gpu_setup, method):
    engine, model = gpu_setup["engine"], gpu_setup["model"]
    engine.sync_cfg = WeightSyncConfig(method=method, bucket_mb=0.05)
    assert engine.syncs.group_backend == "nccl"
    new = {k: v.cuda() for k, v in perturbed_state_dict(model, scale=0.05, seed=len(method)).items()}  # on the GPU
    engine.update_weights(new, engine.policy_version + 1)
    model.load_state_dict(new)
    _check(gpu_setup, 2)


def test_release_frees_gpu_memory_and_resume_restores_it(gpu_setup):
    engine = gpu_setup["engine"]
    free_before, _ = torch.cuda.mem_get_info(0)
    engine.release_memory()
    free_released, _ = torch.cuda.mem_get_info(0)
    assert free_released - free_before > 256 * 2**20, (free_before, free_released)  # KV cache + weights freed
    engine.resume_memory(["weights"])
    engine.sync_cfg = dataclasses.replace(engine.sync_cfg, method="distributed")
    new = {k: v.cuda() for k, v in perturbed_state_dict(gpu_setup["model"], scale=0.05, seed=7).items()}
    engine.update_weights(new, engine.policy_version + 1)  # weights must be resumed before a sync
    engine.resume_memory(["kv_cache", "cuda_graph"])
    gpu_setup["model"].load_state_dict(new)
    _check(gpu_setup, 2)


def test_optimizer_offload_and_gpu_export(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tests/dist/gpu_sync_worker.py"), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads((tmp_path / "gpu_offload.json").read_text())
    assert r["moved_bytes"] > 0 and r["restored_bytes"] == r["moved_bytes"], r
    assert r["allocated_before"] - r["allocated_offloaded"] >= 0.9 * r["moved_bytes"], r
    assert r["losses"][1] < r["losses"][0], r
    assert r["bucket_devices"] == ["cuda"] and r["bucket_dtypes"] == ["torch.bfloat16"], r


@pytest.mark.dist
def test_streamed_sync_from_a_colocated_actor_over_nccl(gpu_setup, tmp_path):
    """trainer.weights.stream_weights from a Megatron actor (world size 1, same GPU as the server)."""
    engine = gpu_setup["engine"]
    engine.sync_cfg = WeightSyncConfig(method="distributed", bucket_mb=0.05)
    target = engine.begin_sync(engine.policy_version + 1)
    (tmp_path / "target.json").write_text(json.dumps(dataclasses.asdict(target)))
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
                             str(ROOT / "tests/dist/sync_worker.py"), str(tmp_path), "1", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        import time

        deadline = time.monotonic() + 600
        while not (tmp_path / "pushed.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-5000:] if proc.stdout else ""
            time.sleep(0.2)
        engine.finish_sync(target, json.loads((tmp_path / "pushed.json").read_text())["pushed"])
        gpu_setup["model"].load_state_dict({k: v.cuda() for k, v in torch.load(tmp_path / "hf.pt", weights_only=True).items()})
        groups = engine.generate(gpu_setup["prompts"], [[0]] * 8, SamplingConfig(group_size=2))
        torch.save({"prompts": [p for p in gpu_setup["prompts"] for _ in range(2)],
                    "responses": groups.responses.reshape(-1, 4)}, tmp_path / "sampled.pt")
        while not (tmp_path / "actor_logprobs.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        err = (torch.load(tmp_path / "actor_logprobs.pt", weights_only=True) - groups.token_logprobs.reshape(-1, 4)).abs().max()
        assert err < TOL
    finally:
        if engine.syncs.active is not None:
            engine.fail_sync(target, "test failed")
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
