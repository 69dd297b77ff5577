"""Weight sync, placement and lockdown pieces that need no server: pure functions, configs, senders' files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recast_mcore.checkpoint.hf_mapping import hf_shapes, mcore_keys, mcore_tensor_to_hf, mcore_to_hf
from recast_mcore.config.actor import ModelConfig
from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.rollout import PlacementConfig, RolloutConfig, SGLangServerConfig
from recast_mcore.rollout.placement import ClusterLayout, ServerSlot, plan_servers
from recast_mcore.rollout.server import launch_command
from recast_mcore.rollout.weight_sync import (
    SyncTarget, check_bucket, check_complete, check_matches_template, dict_buckets,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- placement ---------------------------------------------------------------------------------------------
def _slots(nodes, trainer_per_node, mode, tp, n, dp=1):
    cfg = PlacementConfig(mode=mode, gpus_per_server=tp, dp_per_server=dp)
    return [(s.node, s.base_gpu_id, s.tp_size, s.dp_size)
            for s in plan_servers(ClusterLayout(nodes, 8, trainer_per_node), cfg, n)]


def test_placement_one_node_of_8_gpus():
    # colocated: servers share the trainer's 8 GPUs
    assert _slots(1, 8, "colocated", 2, 0) == [(0, 0, 2, 1), (0, 2, 2, 1), (0, 4, 2, 1), (0, 6, 2, 1)]
    assert _slots(1, 8, "colocated", 8, 1) == [(0, 0, 8, 1)]
    # disaggregated: trainer on GPUs 0-3, servers on 4-7
    assert _slots(1, 4, "disaggregated", 2, 0) == [(0, 4, 2, 1), (0, 6, 2, 1)]
    assert _slots(1, 4, "disaggregated", 1, 3) == [(0, 4, 1, 1), (0, 5, 1, 1), (0, 6, 1, 1)]
    with pytest.raises(ValueError, match=r"3 servers of 2 GPUs do not fit; 2 per node x 1 nodes = 2 \(node GPUs 4..7\)"):
        _slots(1, 4, "disaggregated", 2, 3)
    with pytest.raises(ValueError, match="no node has 8 free GPUs"):
        _slots(1, 4, "disaggregated", 8, 1)


def test_placement_two_nodes_of_8_gpus():
    assert _slots(2, 8, "colocated", 4, 0) == [(0, 0, 4, 1), (0, 4, 4, 1), (1, 0, 4, 1), (1, 4, 4, 1)]
    assert _slots(2, 8, "colocated", 2, 0, dp=2) == [(0, 0, 2, 2), (0, 4, 2, 2), (1, 0, 2, 2), (1, 4, 2, 2)]
    assert _slots(2, 6, "disaggregated", 2, 0) == [(0, 6, 2, 1), (1, 6, 2, 1)]
    assert _slots(2, 4, "disaggregated", 4, 0) == [(0, 4, 4, 1), (1, 4, 4, 1)]


def _cmd(slot, **kw):
    cfg = SGLangServerConfig(**kw)
    return launch_command(cfg, "/m", 30000 + slot.index, 3, slot=slot, with_key=True, memory_saver=True)


def test_launch_commands_carry_the_slot_and_never_the_key():
    layout = ClusterLayout(2, 8, 8)
    cmds = [_cmd(s) for s in plan_servers(layout, PlacementConfig(mode="colocated", gpus_per_server=4), 0)]
    assert len(cmds) == 4
    for cmd, base in zip(cmds, [0, 4, 0, 4]):
        flags = dict(zip(cmd[3::1], cmd[4::1]))
        assert cmd[1:3] == ["-m", "recast_mcore.rollout.sglang_launch"]
        assert flags["--base-gpu-id"] == str(base) and flags["--tp-size"] == "4" and flags["--dp-size"] == "1"
        assert flags["--host"] == "127.0.0.1" and flags["--weight-version"] == "3"
        assert "--enable-memory-saver" in cmd and "--enable-custom-logit-processor" in cmd
        assert "--api-key" not in cmd
    plain = launch_command(SGLangServerConfig(), "/m", 1, 0)  # no key: no custom logit processors
    assert "--enable-custom-logit-processor" not in plain and "--base-gpu-id" not in plain
    with pytest.raises(ValueError, match="must not carry an API key"):
        launch_command(SGLangServerConfig(extra_args=["--api-key", "x"]), "/m", 1, 0)


def test_launcher_refuses_a_key_on_the_command_line():
    for argv in (["--api-key", "k"], ["--api-key=k"]):
        proc = subprocess.run([sys.executable, "-m", "recast_mcore.rollout.sglang_launch", *argv], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=60)
        assert proc.returncode != 0 and "not on the command line" in proc.stderr
    with pytest.raises(ValueError, match="must not carry an API key"):
        launch_command(SGLangServerConfig(extra_args=["--api-key=x"]), "/m", 1, 0)


def test_launcher_hands_sglang_a_key_that_starts_with_a_dash(monkeypatch):
    """``secrets.token_urlsafe`` keys start with "-" one time in 64: ``--api-key -x..`` made argparse exit with
    "expected one argument" (measured: a launched server died so); ``--api-key=-x..`` is one token."""
    from recast_mcore.rollout import sglang_launch

    seen = {}
    monkeypatch.setattr(sys, "argv", ["sglang_launch", "--port", "1"])
    monkeypatch.setenv(sglang_launch.KEY_ENV, "-dashed_key")
    monkeypatch.setattr(sglang_launch, "_redact_key_in_startup_log", lambda: None)
    monkeypatch.setattr(sglang_launch.runpy, "run_module", lambda *a, **k: seen.setdefault("argv", list(sys.argv)))
    sglang_launch.main()
    assert seen["argv"][-1] == "--api-key=-dashed_key" and sglang_launch.KEY_ENV not in os.environ
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key")
    parser.add_argument("--port")
    assert parser.parse_args(seen["argv"][1:]).api_key == "-dashed_key"  # what SGLang's argparse reads


# ---- lockdown configs ------------------------------------------------------------------------------------
def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_non_loopback_servers_need_an_explicit_allow_and_a_key(tmp_path, monkeypatch):
    for text in ("sglang: {host: 0.0.0.0}", "sglang: {host: 10.1.2.3, allow_non_loopback: true}",
                 "sglang: {host: node-ip, api_key_env: K}",
                 "sglang: {mode: attach, urls: ['http://10.0.0.5:30000']}"):
        with pytest.raises(ConfigError, match="needs both allow_non_loopback: true and api_key_env"):
            load_config(RolloutConfig, _write(tmp_path, text))
    ok = load_config(RolloutConfig, _write(tmp_path, "sglang: {host: 10.1.2.3, allow_non_loopback: true, api_key_env: K}"))
    assert ok.sglang.host == "10.1.2.3"
    for host in ("127.0.0.1", "localhost", "127.0.0.2", "::1"):
        SGLangServerConfig(host=host).validate()
    with pytest.raises(ConfigError, match="dp_per_server > 1 needs weight_sync.method: disk"):
        load_config(RolloutConfig, _write(tmp_path, "placement: {dp_per_server: 2}\nweight_sync: {method: tensor}"))


def test_api_key_resolution(monkeypatch):
    from recast_mcore.rollout.sglang_engine import resolve_api_key

    a, b = resolve_api_key(SGLangServerConfig()), resolve_api_key(SGLangServerConfig())
    assert len(a) >= 40 and a != b  # fresh per run
    assert resolve_api_key(SGLangServerConfig(mode="attach", urls=["http://127.0.0.1:1"])) == ""
    monkeypatch.setenv("RECAST_TEST_KEY", "s3cret")
    assert resolve_api_key(SGLangServerConfig(api_key_env="RECAST_TEST_KEY")) == "s3cret"
    monkeypatch.setenv("RECAST_TEST_KEY", "")
    with pytest.raises(ValueError, match=r"\$RECAST_TEST_KEY, which is unset or empty"):
        resolve_api_key(SGLangServerConfig(api_key_env="RECAST_TEST_KEY"))


def test_the_key_never_shows_in_reprs():
    from recast_mcore.rollout.client import SGLangClient

    target = SyncTarget(method="tensor", version=1, endpoints=[], bucket_bytes=1, dtype="float32", shapes={},
                        request_timeout_s=1, api_key="TOPSECRET")
    assert "TOPSECRET" not in repr(target) and "TOPSECRET" not in repr(SGLangClient("http://127.0.0.1:1", 1, "TOPSECRET"))


# ---- HF mapping per tensor and buckets --------------------------------------------------------------------
def _full_megatron(cfg: ModelConfig, vocab_padded: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {k: None for k in mcore_keys(cfg)}
    d, f, h = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    ng, r = cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups
    out = {}
    for k in shapes:
        if "word_embeddings" in k or k == "output_layer.weight":
            shape = (vocab_padded, d)
        elif k.endswith("linear_qkv.weight"):
            shape = (ng * (r + 2) * h, d)
        elif k.endswith("linear_proj.weight"):
            shape = (d, cfg.num_attention_heads * h)
        elif k.endswith("linear_fc1.weight"):
            shape = (2 * f, d)
        elif k.endswith("linear_fc2.weight"):
            shape = (d, f)
        elif "q_layernorm" in k or "k_layernorm" in k:
            shape = (h,)
        else:
            shape = (d,)
        out[k] = torch.randn(shape, generator=g)
    return out


@pytest.mark.parametrize("qk,tie", [(True, False), (False, True)])
def test_per_tensor_conversion_equals_the_full_mapping(qk, tie):
    cfg = ModelConfig(num_layers=3, hidden_size=16, ffn_hidden_size=24, num_attention_heads=4, num_query_groups=2,
                      qk_layernorm=qk, tie_embeddings=tie)
    full = _full_megatron(cfg, vocab_padded=128)
    ref = mcore_to_hf(full, cfg, vocab_size=100)
    streamed = {}
    for k, v in full.items():
        for name, t in mcore_tensor_to_hf(k, v, cfg, 100):
            assert name not in streamed
            streamed[name] = t
    assert streamed.keys() == ref.keys() and all(torch.equal(streamed[k], ref[k]) for k in ref)
    assert {k: tuple(v.shape) for k, v in ref.items()} == hf_shapes(cfg, 100)
    te_name = "decoder.layers.1.mlp.linear_fc1.layer_norm_weight"  # TE spec names map too
    assert mcore_tensor_to_hf(te_name, torch.ones(16), cfg, 100)[0][0] == "model.layers.1.post_attention_layernorm.weight"
    with pytest.raises(KeyError, match="no Hugging Face name for Megatron tensor 'decoder.layers.0.bogus'"):
        mcore_tensor_to_hf("decoder.layers.0.bogus", torch.ones(1), cfg, 100)


def test_buckets_and_completeness_checks():
    sd = {f"t{i}": torch.ones(10) for i in range(5)}  # 40 bytes each
    buckets = list(dict_buckets(sd, bucket_bytes=100, dtype=torch.bfloat16))  # 20 bytes each in bf16
    assert [len(b) for b in buckets] == [5]
    buckets = list(dict_buckets(sd, bucket_bytes=100, dtype=torch.float32))
    assert [len(b) for b in buckets] == [2, 2, 1]
    assert [len(b) for b in dict_buckets({"big": torch.ones(100), "s": torch.ones(1)}, 100, torch.float32)] == [1, 1]
    shapes = {k: (10,) for k in sd}
    check_bucket(buckets[0], shapes)
    with pytest.raises(ValueError, match=r"unexpected \['zz'\], wrong shapes \['t0: \(3,\) != \(10,\)'\]"):
        check_bucket([("zz", torch.ones(1)), ("t0", torch.ones(3))], shapes)
    assert check_complete([{"t0": "a", "t1": "a"}, {"t2": "b", "t3": "b", "t4": ""}], shapes)["t2"] == "b"
    with pytest.raises(ValueError, match=r"missing \['t4'\] \(1 in all\), sent twice \['t0'\]"):
        check_complete([{"t0": "a", "t1": "a"}, {"t0": "b", "t2": "", "t3": ""}], shapes)
    with pytest.raises(ValueError, match=r"missing \['t1'"):
        check_matches_template({"t0": torch.ones(10)}, {"t0": (10,), "t1": (10,)})


def test_disk_shards_and_index_load_as_one_model(tmp_path):
    from safetensors.torch import load_file

    from recast_mcore.rollout.sync_disk import INDEX, DiskSender, finalize_snapshot

    shapes = {f"w{i}": (4, 4) for i in range(5)}
    target = SyncTarget(method="disk", version=3, endpoints=[], bucket_bytes=130, dtype="bfloat16", shapes=shapes,
                        request_timeout_s=1, snapshot_dir=str(tmp_path / "v3.tmp"))
    sd = {k: torch.randn(4, 4) for k in shapes}
    pushed = []
    for stage, names in enumerate((["w0", "w1", "w2"], ["w3", "w4"])):
        sender = DiskSender(target, stage)
        for i, bucket in enumerate(dict_buckets({k: sd[k] for k in names}, target.bucket_bytes, target.torch_dtype)):
            sender.push(i, bucket)
        pushed.append(sender.close())
    (tmp_path / "template").mkdir()
    (tmp_path / "template" / "config.json").write_text("{}")
    (tmp_path / "template" / "model.safetensors").write_text("old weights: never copied")
    snap = finalize_snapshot(tmp_path / "v3.tmp", tmp_path / "v3", check_complete(pushed, shapes),
                             template_dir=tmp_path / "template")
    index = json.loads((snap / INDEX).read_text())
    assert sorted(index["weight_map"]) == sorted(shapes) and (snap / "config.json").is_file()
    assert not (snap / "model.safetensors").exists() and not list(snap.glob("*.tmp"))
    loaded = {}
    for f in set(index["weight_map"].values()):
        loaded.update(load_file(str(snap / f)))
    assert all(loaded[k].dtype == torch.bfloat16 and torch.equal(loaded[k], sd[k].bfloat16()) for k in sd)
    with pytest.raises(ValueError, match="unexpected"):
        DiskSender(target, 0).push(0, [("nope", torch.ones(4, 4))])


def test_tensor_payload_has_one_entry_per_server_tp_rank():
    from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process
    from recast_mcore.rollout.sync_tensor import serialize_for_ranks

    declare_torchvision_ops_in_process()
    from sglang.srt.utils.common import MultiprocessingSerializer

    tensors = [("a", torch.arange(6.0).reshape(2, 3)), ("b", torch.ones(2))]
    payloads = serialize_for_ranks(tensors, tp_size=2)
    assert len(payloads) == 2  # element tp_rank is what server rank tp_rank reads
    for p in payloads:
        got = MultiprocessingSerializer.deserialize(__import__("base64").b64decode(p))
        assert [n for n, _ in got] == ["a", "b"] and torch.equal(got[0][1], tensors[0][1])


def test_slots_are_plain_data():
    slot = ServerSlot(index=1, node=0, base_gpu_id=2, tp_size=2, dp_size=1)
    assert slot.gpus == [2, 3]


# ---- rank 0's coordinator against a recording fake server ------------------------------------------------
class _Recorder:
    """A fake SGLang HTTP server: records (method, path, auth header, body), answers success; /server_info -> TP 2."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        calls = self.calls = []
        recorder, self.answer = self, {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, payload):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                calls.append(("GET", self.path, self.headers.get("Authorization"), None))
                self._answer({"tp_size": 2} if self.path == "/server_info" else {})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                calls.append(("POST", self.path, self.headers.get("Authorization"), body))
                self._answer(recorder.answer.get(self.path, {"success": True}))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def posts(self):
        return [p for m, p, _, _ in self.calls if m == "POST"]


def test_coordinator_pauses_versions_only_at_commit_and_labels_a_failed_sync_partial(tmp_path):
    from safetensors.torch import save_file

    from recast_mcore.config.rollout import WeightSyncConfig
    from recast_mcore.rollout.pool import ServerPool
    from recast_mcore.rollout.sync_coordinator import SyncCoordinator

    fake = _Recorder()
    try:
        (tmp_path / "hf").mkdir()
        save_file({"w": torch.ones(2, 2)}, str(tmp_path / "hf" / "model.safetensors"))
        cfg = SGLangServerConfig(mode="attach", urls=[fake.url], request_timeout_s=5)
        pool = ServerPool(cfg, "", 0, current_weights=lambda: ("", 0), after_restart=lambda c: None, api_key="K1")
        coord = SyncCoordinator(pool, cfg, WeightSyncConfig(method="tensor"), api_key="K1",
                                initial_model_dir=str(tmp_path / "hf"), work_dir=tmp_path, group_backend="gloo")
        assert coord.tp_size(0) == 2
        target = coord.begin(5)
        assert target.endpoints[0].tp_size == 2 and target.shapes == {"w": (2, 2)} and target.api_key == "K1"
        assert fake.posts() == ["/pause_generation", "/begin_weight_update"]
        coord.commit(target, [{"w": ""}])
        assert fake.posts()[2:] == ["/end_weight_update", "/flush_cache", "/update_weight_version", "/continue_generation"]
        assert [b for _, p, _, b in fake.calls if p == "/update_weight_version"][0]["new_version"] == "5"
        assert all(auth == "Bearer K1" for _, _, auth, _ in fake.calls)  # the key on every call
        del fake.calls[:]
        target = coord.begin(6)
        with pytest.raises(ValueError, match="missing"):
            coord.commit(target, [{}])
        coord.abort(target, "nothing arrived")
        assert "/update_weight_version" in fake.posts() and coord.active is None
        labels = [b["new_version"] for _, p, _, b in fake.calls if p == "/update_weight_version"]
        assert labels == ["partial-6"] and fake.posts()[-1] == "/continue_generation"
    finally:
        fake.server.shutdown()


def test_a_restarted_server_is_resynced_only_when_its_snapshot_is_older_than_the_policy():
    from types import SimpleNamespace

    from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine

    engine = object.__new__(SGLangRolloutEngine)  # only the restart decision, no servers
    engine.syncs = SimpleNamespace(group_epoch=0)
    engine._last_pushed, engine.policy_version, engine._model_path_version = None, 4, 4
    engine._recovering = False
    calls = []
    engine.resync = lambda: calls.append("resync")
    engine._after_restart(None)  # disk sync: the snapshot it loaded is the policy
    assert calls == [] and engine.syncs.group_epoch == 1  # its weight-update groups died with it
    engine.policy_version = 5  # a tensor/distributed sync since the last snapshot
    engine._after_restart(None)
    assert calls == ["resync"] and engine.syncs.group_epoch == 2
    engine.resync = None
    engine._push_dict = lambda sd, v, resync: calls.append(("dict", v, resync))
    engine._last_pushed = {"w": torch.ones(1)}
    engine._after_restart(None)
    assert calls[-1] == ("dict", 5, True)


class _FlakyEngine:
    """Rank 0's engine as trainer/weights.sync_weights sees it: ``fail`` = the errors the next attempts raise
    (at begin_sync), then success; records every call."""

    def __init__(self, fail, max_retries=2):
        self.fail, self.calls, self.policy_version = list(fail), [], 3
        self.server_cfg = SGLangServerConfig(max_retries=max_retries)

    def check_sync_version(self, version, *, resync):
        self.calls.append(("check", version))

    def begin_sync(self, version, *, resync=False):
        self.calls.append(("begin", version))
        if self.fail:
            raise self.fail.pop(0)
        return SyncTarget(method="disk", version=version, endpoints=[], bucket_bytes=1 << 20, dtype="float32",
                          shapes={}, request_timeout_s=5.0, snapshot_dir="")

    def fail_sync(self, target, message):
        self.calls.append(("fail", target.version))

    def finish_sync(self, target, pushed):
        self.calls.append(("finish", target.version))
        self.policy_version = target.version

    def recover_servers(self, *, restart_all):
        self.calls.append(("recover", restart_all))


class _NoWeights:
    """An actor with nothing to export (one pipeline stage)."""

    pipeline_stages, pipeline_stage = 1, 0

    def export_buckets(self, bucket_bytes, dtype):
        return iter(())


@pytest.mark.parametrize("failures", [1, 3, 4])
def test_a_failed_sync_is_retried_then_every_launched_server_restarted(failures):
    """The streamed sync keeps the pool's rule for a failed weight update (issue-10): max_retries (2) retries with
    only dead servers restarted in between, then every launched server restarted and one last attempt; still
    failing -> a clear error (world size 1: the same code every rank runs)."""
    from recast_mcore.rollout.client import ServerUnavailable
    from recast_mcore.trainer.weights import sync_weights

    engine = _FlakyEngine([ServerUnavailable("s0: HTTP 500")] * failures)
    if failures == 4:
        with pytest.raises(RuntimeError, match="failed after 4 attempts: rank 0 could not open the sync: ServerUnavailable"):
            sync_weights(engine, _NoWeights(), 4)
    else:
        sync_weights(engine, _NoWeights(), 4)
        assert engine.policy_version == 4 and engine.calls[-1] == ("finish", 4)
    recovers = [c[1] for c in engine.calls if c[0] == "recover"]
    assert recovers == [False, False, True][: min(failures, 3)]
    assert sum(c[0] == "begin" for c in engine.calls) == min(failures + 1, 4)


def _rejected() -> Exception:
    from recast_mcore.rollout.client import RequestRejected

    try:
        raise RequestRejected("http://s0/update_weights_from_distributed: HTTP 401: missing ['w'] key")
    except RequestRejected as cause:  # as the distributed sender reports a server's 4xx
        try:
            raise RuntimeError("weight sync bucket 0 of stage 0: rejected") from cause
        except RuntimeError as exc:
            return exc


@pytest.mark.parametrize("kind", ["layout", "4xx"])
def test_a_layout_mismatch_or_a_rejected_request_is_never_retried(kind):
    """Neither a retry nor a restart can fix them (the pool does not retry a 4xx either)."""
    from recast_mcore.rollout.weight_sync import LayoutMismatch
    from recast_mcore.trainer.weights import sync_weights

    error = LayoutMismatch("weight sync incomplete: missing ['w']") if kind == "layout" else _rejected()
    engine = _FlakyEngine([])
    engine.finish_sync = lambda target, pushed: (_ for _ in ()).throw(error)
    with pytest.raises(RuntimeError, match="not retried.*(missing|rejected)"):
        sync_weights(engine, _NoWeights(), 4)
    assert [c for c in engine.calls if c[0] in ("begin", "recover")] == [("begin", 4)]


def test_disk_commit_loads_through_the_pool_and_restarts_a_failing_server_from_the_new_snapshot(tmp_path):
    """A server that answers /update_weights_from_disk with success: false on every try is restarted by the pool
    (retry, then restart) from the snapshot being committed (on_snapshot ran first), never skipped."""
    from safetensors.torch import save_file

    from recast_mcore.config.rollout import WeightSyncConfig
    from recast_mcore.rollout.pool import ServerPool
    from recast_mcore.rollout.sync_coordinator import SyncCoordinator

    fake = _Recorder()
    try:
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "config.json").write_text("{}")
        save_file({"w": torch.ones(2, 2)}, str(tmp_path / "hf" / "model.safetensors"))
        current = {"path": str(tmp_path / "hf"), "version": 0}
        cfg = SGLangServerConfig(mode="attach", urls=[fake.url], request_timeout_s=5, max_retries=1)
        restarted = []
        pool = ServerPool(cfg, "", 0, current_weights=lambda: (current["path"], current["version"]),
                          after_restart=lambda c: restarted.append(c.url))

        class Stub:  # the pool's launched-server interface
            log_path = tmp_path / "log"

            def is_running(self):
                return True

            def restart(self, path, version):
                restarted.append((path, version))

        pool.servers[0] = Stub()
        fake.answer = {"/update_weights_from_disk": {"success": False, "message": "boom"}}
        coord = SyncCoordinator(pool, cfg, WeightSyncConfig(method="disk", sync_dir=str(tmp_path / "w")), api_key="",
                                initial_model_dir=str(tmp_path / "hf"), work_dir=tmp_path, group_backend="gloo")
        target = coord.begin(1)
        save_file({"w": torch.zeros(2, 2)}, str(Path(target.snapshot_dir) / "s.safetensors"))
        coord.commit(target, [{"w": "s.safetensors"}], on_snapshot=lambda d: current.update(path=d, version=1))
        snapshot = str(tmp_path / "w" / "v00000001")
        assert fake.posts().count("/update_weights_from_disk") == 2  # tried + retried once (max_retries 1)
        assert restarted == [(snapshot, 1), fake.url] and pool.restarts == 1  # from the NEW snapshot
        assert fake.posts()[-1] == "/continue_generation"
    finally:
        fake.server.shutdown()


def test_each_node_launches_the_servers_it_hosts(monkeypatch, tmp_path):
    """Node 1's local rank 0 starts node 1's slots (never node 0's: rank 0's pool does those)."""
    from recast_mcore.rollout import server as server_mod
    from recast_mcore.trainer import weights

    started = []

    class Stub:
        def __init__(self, cfg, model_dir, log_path, port, version, *, api_key, slot, memory_saver):
            self.slot, self.url, self.key = slot, f"http://10.0.0.2:{30000 + slot.index}", api_key

        def start(self):
            started.append((self.slot.node, self.slot.base_gpu_id, self.key))

        def stop(self):
            pass

    monkeypatch.setattr(server_mod, "LaunchedServer", Stub)
    monkeypatch.setenv("GROUP_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    slots = plan_servers(ClusterLayout(2, 8, 8), PlacementConfig(mode="colocated", gpus_per_server=4), 0)
    urls = weights.launch_node_servers(RolloutConfig(), slots, "/m", 0, "KEY", tmp_path)
    assert started == [(1, 0, "KEY"), (1, 4, "KEY")]
    assert urls == ["http://10.0.0.2:30002", "http://10.0.0.2:30003"]
    monkeypatch.setenv("LOCAL_RANK", "3")  # other local ranks of the node launch nothing
    started.clear()
    assert weights.launch_node_servers(RolloutConfig(), slots, "/m", 0, "KEY", tmp_path) == [] and started == []


def test_default_group_store_listens_on_master_addr_only(tmp_path):
    """Ranks started without torchrun's agent: rank 0's store socket is bound to MASTER_ADDR, not 0.0.0.0."""
    script = (
        "import os, psutil, datetime\n"
        "from recast_mcore.actor.parallel import init_default_group\n"
        "init_default_group('gloo', datetime.timedelta(seconds=30))\n"
        "port = int(os.environ['MASTER_PORT'])\n"
        "print([c.laddr.ip for c in psutil.Process().net_connections('tcp') if c.status == 'LISTEN' and c.laddr.port == port])\n"
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_USE_AGENT_STORE"}
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=os.getcwd(), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "['127.0.0.1']"
