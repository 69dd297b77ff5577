"""Against the session's real SGLang server (tests/conftest.py): locked-down endpoints, streamed weight sync
from a TP2 x PP2 Megatron actor over the ``distributed`` transport (gloo on CPU), versions after a failed
sync, and release/resume of the server's memory around a sync.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import dill
import pytest
import requests
import torch

from recast_mcore.config.rollout import SamplingConfig, WeightSyncConfig
from recast_mcore.rollout.sglang_engine import StaleWeightsError
from recast_mcore.rollout.testing import constrained_logprobs, perturbed_state_dict
from recast_mcore.rollout.weight_sync import dict_buckets, open_sender

pytestmark = pytest.mark.sglang
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def _marker_processor() -> str:
    """A custom logit processor (shipped by value, as SGLang expects) that creates the file named in its params."""

    def call(self, logits, custom_param_list=None):
        for params in custom_param_list or []:
            if params and "marker" in params:
                open(params["marker"], "w").write("ran")
        return logits

    fn = types.FunctionType(call.__code__, {"__builtins__": builtins}, "__call__")
    fn.__module__, fn.__qualname__ = "__main__", "__call__"
    cls = type("Marker", (), {"__module__": "__main__", "__call__": fn})
    return json.dumps({"callable": dill.dumps(cls, recurse=True).hex()})


def _check_reference(setup, groups, g):
    catalog, prompts = setup["catalog"], setup["prompts"]
    flat = groups.responses.reshape(-1, catalog.response_len)
    ref = constrained_logprobs(setup["model"], catalog, [p for p in prompts for _ in range(g)], flat)
    err = (groups.token_logprobs.reshape(-1, catalog.response_len) - ref).abs().max().item()
    assert err < TOL, f"SGLang vs reference constrained log-probs differ by {err}"


def test_requests_need_the_key_and_a_processor_without_it_never_runs(sglang_setup, tmp_path):
    engine = sglang_setup["engine"]
    url, key = engine.pool.clients[0].url, engine._api_key
    marker = tmp_path / "processor_ran"
    body = {"input_ids": [sglang_setup["prompts"][0]], "sampling_params": {"max_new_tokens": 1, "temperature": 1.0,
            "custom_params": {"marker": str(marker)}}, "custom_logit_processor": _marker_processor()}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        assert requests.post(url + "/generate", json=body, headers=headers, timeout=60).status_code == 401
        for path in ("/update_weights_from_disk", "/init_weights_update_group", "/release_memory_occupation"):
            assert requests.post(url + path, json={}, headers=headers, timeout=60).status_code == 401
    time.sleep(1.0)
    assert not marker.exists()  # the code shipped without the key never ran
    ok = requests.post(url + "/generate", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert ok.status_code == 200 and marker.read_text() == "ran"  # with the key it does (the engine's own use)
    assert requests.get(url + "/health", timeout=30).status_code == 200  # probes need no key
    log = engine.pool.servers[0].log_path.read_text()
    assert key not in log and "<redacted>" in log  # SGLang's server_args line shows no key
    cmdline = Path(f"/proc/{engine.pool.servers[0].proc.pid}/cmdline").read_bytes()
    assert key.encode() not in cmdline and b"--api-key" not in cmdline


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _wait(path: Path, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"sync worker exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"sync worker produced no {path.name}:\n{log.read_text()[-5000:]}")
        time.sleep(0.2)


@pytest.mark.dist
def test_distributed_sync_from_tp2_pp2_actor_then_sglang_logprobs_equal_the_actor(sglang_setup, tmp_path):
    """The trainer's streamed sync (trainer.weights.stream_weights): each pipeline stage's source rank
    joins its own weight-update group with the server (gloo on CPU) and broadcasts its buckets."""
    engine = sglang_setup["engine"]
    engine.sync_cfg = dataclasses.replace(engine.sync_cfg, method="distributed", bucket_mb=0.05)  # several buckets
    version = engine.policy_version + 1
    target = engine.begin_sync(version)
    (tmp_path / "target.json").write_text(json.dumps(dataclasses.asdict(target)))
    log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-addr", "127.0.0.1",
           "--master-port", _free_port(), str(ROOT / "tests/dist/sync_worker.py"), str(tmp_path)]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    try:
        _wait(tmp_path / "pushed.json", proc, log)
        pushed = json.loads((tmp_path / "pushed.json").read_text())
        assert len(pushed["pushed"]) == 2  # one part per pipeline stage
        engine.finish_sync(target, pushed["pushed"])
        assert engine.policy_version == version
        sglang_setup["model"].load_state_dict(torch.load(tmp_path / "hf.pt", weights_only=True))
        groups = engine.generate(sglang_setup["prompts"], [[0]] * 8, SamplingConfig(group_size=4))
        assert groups.policy_version == version
        _check_reference(sglang_setup, groups, 4)
        prompts = [p for p in sglang_setup["prompts"] for _ in range(4)]
        torch.save({"prompts": prompts, "responses": groups.responses.reshape(-1, 4)}, tmp_path / "sampled.pt")
        _wait(tmp_path / "actor_logprobs.pt", proc, log)
        assert proc.wait(timeout=120) == 0
    except BaseException:
        if engine.syncs.active is not None:
            engine.fail_sync(target, "test failed")
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (torch.load(tmp_path / "actor_logprobs.pt", weights_only=True) - groups.token_logprobs.reshape(-1, 4)).abs().max()
    print(f"distributed sync from TP2xPP2 in {pushed['sync_s']:.2f} s; max |SGLang - actor| log-prob {err:.2e}")
    assert err < TOL


def test_in_process_distributed_sync_reuses_a_group_name_left_by_a_dead_sender(sglang_setup):
    """This process becomes the sender of stage 0: the server still holds that group from the worker above
    (dead now); the sender destroys it first and builds its own."""
    engine, model = sglang_setup["engine"], sglang_setup["model"]
    engine.sync_cfg = dataclasses.replace(engine.sync_cfg, method="distributed", bucket_mb=0.05)
    new_weights = perturbed_state_dict(model, scale=0.05, seed=41)
    engine.update_weights(new_weights, engine.policy_version + 1)
    model.load_state_dict(new_weights)
    groups = engine.generate(sglang_setup["prompts"], [[0]] * 8, SamplingConfig(group_size=2))
    assert groups.policy_version == engine.policy_version
    _check_reference(sglang_setup, groups, 2)


def test_a_failed_sync_leaves_no_sample_labelled_current_then_a_good_sync_recovers(sglang_setup):
    engine, model = sglang_setup["engine"], sglang_setup["model"]
    engine.sync_cfg = dataclasses.replace(engine.sync_cfg, method="tensor", bucket_mb=0.05)
    old = engine.policy_version
    new_weights = perturbed_state_dict(model, scale=0.05, seed=21)
    target = engine.begin_sync(old + 1)
    sender = open_sender(target, stage=0)
    first = next(dict_buckets(new_weights, target.bucket_bytes, target.torch_dtype))
    sender.push(0, first)  # part of the model arrives, then the sender "dies"
    with pytest.raises(ValueError, match="weight sync incomplete: missing"):
        engine.finish_sync(target, [sender.close()])
    assert engine.policy_version == old
    with pytest.raises(StaleWeightsError, match=f"'partial-{old + 1}'"):  # mixed weights are never served as a version
        engine.generate(sglang_setup["prompts"], [[0]] * 8, SamplingConfig(group_size=2))
    engine.update_weights(new_weights, old + 1)
    model.load_state_dict(new_weights)
    groups = engine.generate(sglang_setup["prompts"], [[0]] * 8, SamplingConfig(group_size=2))
    assert groups.policy_version == old + 1
    _check_reference(sglang_setup, groups, 2)


def test_release_and_resume_memory_around_a_sync(sglang_setup):
    """Colocated placement's calls (no-ops for SGLang's CPU memory saver, but the protocol is the GPU one)."""
    engine, model = sglang_setup["engine"], sglang_setup["model"]
    engine.sync_cfg = WeightSyncConfig(method="disk")
    engine.release_memory()
    assert engine.memory_released
    engine.resume_memory(["weights"])
    new_weights = perturbed_state_dict(model, scale=0.05, seed=31)
    engine.update_weights(new_weights, engine.policy_version + 1)
    engine.resume_memory(["kv_cache", "cuda_graph"])
    assert not engine.memory_released
    model.load_state_dict(new_weights)
    groups = engine.generate(sglang_setup["prompts"], [[0]] * 8, SamplingConfig(group_size=2))
    assert groups.policy_version == engine.policy_version
    _check_reference(sglang_setup, groups, 2)
