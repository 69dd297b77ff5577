"""Fault injection without a model (docs/reliability.md): checkpoint manifests (truncate, flip bytes, delete),
the resume scan without `latest`, the metric log's side file, the run lock (two processes, a killed holder),
tool output locations, and config values that used to crash late."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from recast_mcore.checkpoint import manifest
from recast_mcore.checkpoint.safety import OutputError, check_output_dir, owning_run
from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.run import RunConfig
from recast_mcore.config.train import LoggingConfig
from recast_mcore.trainer import checkpoints as ckpt
from recast_mcore.trainer import run_lock
from recast_mcore.trainer import restore
from recast_mcore.trainer.restore import archive_run, own_checkpoint
from recast_mcore.utils.metric_log import MetricLogger, read_records


def fake_checkpoint(root, name, payload=b"x" * 1000, seal=True):
    """A checkpoint-shaped directory: two shards, an RNG file, actor_meta.json, sealed by a manifest."""
    path = root / name
    (path / "rng").mkdir(parents=True)
    (path / "__0_0.distcp").write_bytes(payload)
    (path / "__1_0.distcp").write_bytes(payload[::-1] + b"y")
    (path / "common.pt").write_bytes(b"common")
    (path / "rng" / "rank_0.pt").write_bytes(b"rng0")
    (path / "actor_meta.json").write_text("{}")
    if seal:
        manifest.write_manifest(path, manifest.hash_files(path, manifest.list_files(path)), {"dataset": {"vocab": "v"}})
    return path


# --------------------------------------------------------------------------- manifests
def test_manifest_detects_truncation_flipped_bytes_deletion_and_missing_manifest(tmp_path):
    path = fake_checkpoint(tmp_path, "rl_step_000002")
    assert manifest.verify(path) == [] and manifest.check_structure(path) == []
    body = json.loads((path / manifest.MANIFEST).read_text())
    assert set(body["files"]) == {"__0_0.distcp", "__1_0.distcp", "common.pt", "rng/rank_0.pt", "actor_meta.json"}
    shard = path / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[500] ^= 0xFF  # flipped byte: same size, only sha256 sees it
    shard.write_bytes(bytes(data))
    assert manifest.check_structure(path) == []
    assert manifest.verify(path) == [f"{shard} has sha256 {manifest.sha256_file(shard)[:12]}..., the manifest says "
                                     f"{body['files']['__0_0.distcp']['sha256'][:12]}... (bytes changed)"]
    os.truncate(shard, 10)
    assert manifest.check_structure(path) == [f"{shard} has 10 bytes, the manifest says 1000 (truncated or rewritten)"]
    (path / "common.pt").unlink()
    assert f"{path / 'common.pt'} is missing" in manifest.check_structure(path)
    (path / manifest.MANIFEST).unlink()
    assert "manifest.json is missing: the checkpoint is incomplete" in manifest.check_structure(path)[0]
    (path / manifest.MANIFEST).write_text("{not json")
    assert "is not valid JSON" in manifest.check_structure(path)[0]


def test_manifest_must_cover_every_file(tmp_path):
    path = fake_checkpoint(tmp_path, "a", seal=False)
    with pytest.raises(manifest.CheckpointError, match=r"files \['common.pt'\] were not hashed"):
        manifest.write_manifest(path, manifest.hash_files(path, [n for n in manifest.list_files(path) if n != "common.pt"]), {})


def test_files_are_hashed_by_the_rank_that_wrote_them():
    sizes = {"__0_0.distcp": 100, "__0_1.distcp": 100, "__1_0.distcp": 300, "rng/rank_1.pt": 5, "common.pt": 50,
             ".metadata": 40, "actor_meta.json": 1, "__7_0.distcp": 9}
    shares = manifest.assign(sizes, 2)
    assert [set(s) for s in shares] == [set(s) for s in manifest.assign(dict(reversed(sizes.items())), 2)]  # deterministic
    assert {"__0_0.distcp", "__0_1.distcp"} <= set(shares[0]) and {"__1_0.distcp", "rng/rank_1.pt"} <= set(shares[1])
    assert sorted(n for share in shares for n in share) == sorted(sizes)  # every file exactly once
    # common files (and a shard of a rank beyond the world) go to the less loaded rank 0
    assert {"common.pt", ".metadata", "actor_meta.json", "__7_0.distcp"} <= set(shares[0])


def test_dataset_differences_name_the_part():
    saved = {"vocab": "a" * 64, "items": "b" * 64, "splits": "c" * 64, "path": "/x"}
    assert manifest.dataset_differences(saved, {**saved, "path": "/y"}) == []
    diffs = manifest.dataset_differences(saved, {**saved, "vocab": "d" * 64})
    assert diffs == ["dataset vocabulary and item codes (vocab.json): checkpoint aaaaaaaaaaaa... vs prepared dataset dddddddddddd..."]
    assert manifest.dataset_differences(None, saved) == ["dataset: the checkpoint records no dataset fingerprint"]


# --------------------------------------------------------------------------- resume scan
def _run_cfg(tmp_path, **checkpoint):
    return load_config(RunConfig, None, [f"run_dir={tmp_path}"] + [f"checkpoint.{k}={v}" for k, v in checkpoint.items()])


def test_resume_finds_the_newest_complete_checkpoint_without_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("sft_step_000004", "rl_step_000002", "rl_step_000004"):
        fake_checkpoint(root, name)
    start = own_checkpoint(_run_cfg(tmp_path))
    assert start.kind == "resume" and start.path.name == "rl_step_000004" and not (root / "latest").exists()
    assert [p.name for p in start.fallbacks] == ["rl_step_000002", "sft_step_000004"]


def test_damaged_newest_checkpoint_falls_back_or_stops(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("rl_step_000002", "rl_step_000004"):
        fake_checkpoint(root, name)
    os.truncate(root / "rl_step_000004" / "__1_0.distcp", 3)
    start = own_checkpoint(_run_cfg(tmp_path))
    assert start.path.name == "rl_step_000002" and list(start.damaged) == [root / "rl_step_000004"]
    with pytest.raises(Exception, match=r"(?s)newest checkpoint .* is damaged \(checkpoint.on_corrupt=stop\).*rl_step_000004: .*__1_0.distcp has 3 bytes"):
        own_checkpoint(_run_cfg(tmp_path, on_corrupt="stop"))


class FakeActor:
    """What restore_state asks of the actor; ``bad`` checkpoints fail the (collective) sha256 verification."""

    vocab_size = 10

    def __init__(self, bad):
        self.bad, self.calls = bad, []

    def verify_checkpoint(self, path):
        self.calls.append(("verify", path.name))
        return [f"{path}/__0_0.distcp has sha256 ... (bytes changed)"] if path.name in self.bad else []

    def saved_trainer_state(self, path):
        self.calls.append(("state", path.name))
        return {"rl_optimizer": True}

    def use_optimizer(self, cfg):
        self.calls.append(("rl_optimizer", None))

    def load(self, path, verify=True):
        self.calls.append(("load", path.name))
        return {"stage": "rl", "rl_step": int(path.name.rsplit("_", 1)[1])}


def test_fallback_past_a_bit_flipped_checkpoint_reports_the_checkpoint_actually_loaded(tmp_path, monkeypatch):
    """The start point restore_state returns is the fallback (the RL stage reloads the KL reference from it)."""
    root = tmp_path / "checkpoints"
    for name in ("rl_step_000002", "rl_step_000004"):
        fake_checkpoint(root, name)
    monkeypatch.setattr(restore, "check_checkpoint_matches", lambda *a, **k: None)  # fake actor_meta.json
    cfg = _run_cfg(tmp_path)
    actor = FakeActor(bad={"rl_step_000004"})
    state, start = restore.restore_state(own_checkpoint(cfg), cfg, actor, _logger(tmp_path), {})
    assert start.kind == "resume" and start.path == root / "rl_step_000002" and state.rl_step == 2
    assert actor.calls[-3:] == [("state", "rl_step_000002"), ("rl_optimizer", None), ("load", "rl_step_000002")]
    assert (root / "rl_step_000004.corrupt").is_dir() and (root / "latest").read_text().strip() == "rl_step_000002"
    cfg_stop = _run_cfg(tmp_path, on_corrupt="stop")
    with pytest.raises(Exception, match=r"(?s)rl_step_000002 failed verification \(checkpoint.on_corrupt=stop\).*Nothing was changed"):
        restore.restore_state(own_checkpoint(cfg_stop), cfg_stop, FakeActor(bad={"rl_step_000002"}), _logger(tmp_path), {})
    assert (root / "rl_step_000002").is_dir()


def test_no_complete_checkpoint_stops_instead_of_starting_over(tmp_path):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root, "rl_step_000004", seal=False)  # e.g. written before manifests existed
    with pytest.raises(Exception, match=r"(?s)holds checkpoints but none is complete.*convert_checkpoint.py seal.*--start-over"):
        own_checkpoint(_run_cfg(tmp_path))
    assert (root / "rl_step_000004" / "__0_0.distcp").exists()


def test_start_over_moves_the_old_run_aside(tmp_path):
    fake_checkpoint(tmp_path / "checkpoints", "rl_step_000004")
    for name in ("metrics.jsonl", "config.yaml", "run.lock"):
        (tmp_path / name).write_text("old\n")
    moved = archive_run(tmp_path)
    assert moved.parent == tmp_path / "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous", "run.lock"]
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    assert archive_run(tmp_path) is None  # nothing left to move


def test_resolve_names_the_problem(tmp_path):
    fake_checkpoint(tmp_path / "run" / "checkpoints", "sft_step_000002")
    assert ckpt.resolve(tmp_path / "run", "load_dir").name == "sft_step_000002"
    os.truncate(tmp_path / "run" / "checkpoints" / "sft_step_000002" / "common.pt", 0)
    with pytest.raises(manifest.CheckpointError, match="(?s)no complete checkpoint under .*common.pt has 0 bytes"):
        ckpt.resolve(tmp_path / "run", "load_dir")
    with pytest.raises(manifest.CheckpointError, match="does not exist"):
        ckpt.resolve(tmp_path / "nowhere", "load_dir")


# --------------------------------------------------------------------------- metric log
def _logger(tmp_path, tensorboard=False):
    return MetricLogger(tmp_path, LoggingConfig(progress_bar=False, tensorboard=tensorboard, plots=False))


def test_cut_back_records_go_to_a_side_file_and_tensorboard_is_kept(tmp_path):
    logger = _logger(tmp_path, tensorboard=True)
    for step in (1, 2, 3, 4):
        logger.log("rl", step, 10 * step, {"reward_mean": step / 10})
    logger.close()
    events = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert _logger(tmp_path, tensorboard=True).truncate_after("rl", 2, reason="resumed from rl_step_000002") == 2
    assert [r["step"] for r in read_records(tmp_path / "metrics.jsonl")] == [1, 2]
    removed = [json.loads(line) for line in (tmp_path / "metrics.removed.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["record"]["step"]) for r in removed] == [("resumed from rl_step_000002", 3), ("resumed from rl_step_000002", 4)]
    kept_aside = list((tmp_path / "tensorboard.removed").iterdir())
    assert len(kept_aside) == 1 and sorted(p.name for p in kept_aside[0].iterdir()) == events
    assert _logger(tmp_path).start_new("new run") == 2  # a new run: every old record kept aside, none lost
    assert read_records(tmp_path / "metrics.jsonl") == [] and len((tmp_path / "metrics.removed.jsonl").read_text().splitlines()) == 4


# --------------------------------------------------------------------------- run lock
HOLDER = """
import sys, time
from recast_mcore.trainer import run_lock
lock = run_lock.try_lock(sys.argv[1])
print("LOCKED" if not isinstance(lock, str) else lock, flush=True)
time.sleep(120)
"""


def _hold_lock(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "LOCKED"
    return proc


def test_second_process_is_refused_with_holder_pid_and_host_then_takes_over_a_dead_holders_lock(tmp_path):
    holder = _hold_lock(tmp_path)
    try:
        refusal = run_lock.try_lock(tmp_path)
        assert isinstance(refusal, str)
        assert f"in use by another recast-train: PID {holder.pid} on host {socket.gethostname()}" in refusal
        with pytest.raises(Exception, match=f"PID {holder.pid}"):
            run_lock.acquire(tmp_path)  # world size 1: rank 0's refusal is the SetupError
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = run_lock.try_lock(tmp_path)  # the kernel released the dead holder's flock
    assert not isinstance(lock, str) and lock.previous["pid"] == holder.pid
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / "run.lock").read_text() == ""  # a clean exit leaves no stale holder behind
    again = run_lock.try_lock(tmp_path)
    assert again.previous is None
    again.release()


# --------------------------------------------------------------------------- tool outputs
def test_tools_never_write_into_a_runs_checkpoints(tmp_path):
    run = tmp_path / "runs" / "x"
    fake_checkpoint(run / "checkpoints", "rl_step_000002")
    (run / "config.yaml").write_text("run_dir: x\n")
    for out in (run / "checkpoints" / "init", run / "checkpoints" / "rl_step_000099" / "deeper"):
        assert owning_run(out) == run.resolve()
        with pytest.raises(OutputError, match="inside the checkpoints of the run"):
            check_output_dir(out, force=True)
    assert owning_run(run / "hf_export") is None and check_output_dir(tmp_path / "new", force=False)
    elsewhere = fake_checkpoint(tmp_path / "converted", "init")
    with pytest.raises(OutputError, match="already holds a checkpoint; pass --force"):
        check_output_dir(elsewhere, force=False)
    assert check_output_dir(elsewhere, force=True) == elsewhere
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile is a file"):
        check_output_dir(tmp_path / "afile" / "out", force=True)


# --------------------------------------------------------------------------- config values that crashed late
@pytest.mark.parametrize("override, message", [
    ("optim.lr=.nan", "'optim.lr' is NaN"),
    ("optim.lr=.inf", "lr must be a finite number >= 0, got inf"),
    ("optim.adam_beta2=1.0", "adam_beta2 must be in [0, 1)"),
    ("optim.min_lr=0.5", "min_lr (0.5) must not exceed lr"),
    ("optim.weight_decay=-1", "weight_decay must be a finite number >= 0"),
    ("rl.optim.lr=.nan", "'rl.optim.lr' is NaN"),
    ("rl.optim.adam_beta1=1.5", "rl.optim: adam_beta1 must be in [0, 1)"),
])
def test_optimizer_settings_are_validated(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(RunConfig, None, [override])


def test_lock_file_is_not_the_run(tmp_path):
    """A run dir holding only its lock counts as empty for --start-over (nothing to move)."""
    run_lock.try_lock(tmp_path).release()
    assert archive_run(tmp_path) is None
