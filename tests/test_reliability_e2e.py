"""Fault injection on real runs (docs/reliability.md): a second process, a SIGKILLed lock holder, a deleted
`latest`, truncated and bit-flipped checkpoints, and the conversion tool next to a run. Every job is a
subprocess on the tiny model with the in-process torch engine; each test copies the session's reference run
(conftest.py ``e2e_recast_run``) before damaging it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_reliability_units import HOLDER
from test_trainer_e2e import REPO, STEPS, TINY, _config, _env, _records, _stable, _train

pytestmark = pytest.mark.slow

# recast-train that stops for good right after taking the run lock (a job busy training, as seen by a second one)
PAUSE_DRIVER = """
import sys, time
from recast_mcore.trainer import run_lock
real = run_lock.acquire
def acquire_then_pause(run_dir):
    lock = real(run_dir)
    print("HOLDING", flush=True)
    time.sleep(600)
    return lock
run_lock.acquire = acquire_then_pause
if __name__ == "__main__":
    from recast_mcore.trainer.cli import main
    sys.exit(main(sys.argv[1:]))
"""

# runs several CLI mains in one process (one interpreter start for many tool calls); one JSON line per call
TOOLS_DRIVER = """
import contextlib, io, json, sys
sys.path.insert(0, sys.argv[1] + "/tools")
import convert_checkpoint
from recast_mcore.eval.cli import main as eval_main
if __name__ == "__main__":
    for call in json.loads(sys.argv[2]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = eval_main(call[1:]) if call[0] == "eval" else convert_checkpoint.main(call)
        print(json.dumps({"rc": rc, "err": err.getvalue()[-2000:]}), flush=True)
"""


def _copy_run(reference: Path, workdir: Path, name: str, **sections) -> tuple[Path, Path]:
    shutil.copytree(reference, workdir / name)
    return _config(workdir, name, **sections), workdir / name


def _flip(path: Path, at: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _manifests(run: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (run / "checkpoints").glob("*/manifest.json")}


def test_second_job_refused_killed_holder_taken_over_and_resume_without_latest(e2e_workdir, e2e_recast_run):
    config, run = _copy_run(e2e_recast_run, e2e_workdir, "locked", rl={"steps": STEPS + 1})
    (run / "checkpoints" / "latest").unlink()
    before, sealed = _records(run), _manifests(run)
    driver = e2e_workdir / "pause_driver.py"
    driver.write_text(PAUSE_DRIVER)
    holder = subprocess.Popen([sys.executable, str(driver), "--config", str(config)], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert any(line.strip() == "HOLDING" for line in holder.stdout), "the first job never took the lock"
        second = _train(config)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"in use by another recast-train: PID {holder.pid} on host {socket.gethostname()}" in second.stderr
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the holder dies without releasing anything
        holder.wait()
    assert _records(run) == before  # the refused job wrote nothing
    third = _train(config)
    assert third.returncode == 0, third.stderr[-3000:]
    out = third.stdout + third.stderr
    assert f"took over the lock of a job that is gone: PID {holder.pid}" in out
    assert f"resume from {run / 'checkpoints' / f'rl_step_{STEPS:06d}'}" in out  # found without `latest`
    records = _records(run)
    assert records[: len(before)] == before and records[len(before)]["step"] == STEPS + 1
    assert {k: v for k, v in _manifests(run).items() if k in sealed} == sealed  # no checkpoint rewritten
    assert (run / "checkpoints" / "latest").read_text().strip() == f"rl_step_{STEPS + 1:06d}"


def test_truncated_and_bit_flipped_checkpoints_fall_back_and_replay_exactly(e2e_workdir, e2e_recast_run):
    config, run = _copy_run(e2e_recast_run, e2e_workdir, "damaged")
    ckpts = run / "checkpoints"
    newest = ckpts / f"rl_step_{STEPS:06d}" / "__0_0.distcp"
    os.truncate(newest, newest.stat().st_size // 2)  # caught by the size check (preflight)
    _flip(ckpts / "rl_step_000002" / "__0_1.distcp", at=4096)  # same size: caught by sha256 on load
    proc = _train(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"checkpoint rl_step_{STEPS:06d} is damaged" in out and f"{newest} has" in out
    assert "checkpoint rl_step_000002 is damaged" in out and "__0_1.distcp has sha256" in out and "(bytes changed)" in out
    assert f"resume from {ckpts / 'sft_step_000004'}" in out
    assert (ckpts / f"rl_step_{STEPS:06d}.corrupt").is_dir() and (ckpts / "rl_step_000002.corrupt").is_dir()
    # replayed from the SFT checkpoint: the log equals the uninterrupted run's, nothing of the old log lost
    assert _stable(_records(run)) == _stable(_records(e2e_recast_run))
    removed = [json.loads(line) for line in (run / "metrics.removed.jsonl").read_text().splitlines()]
    assert {(r["record"]["stage"], r["record"]["step"]) for r in removed} == {("rl", s) for s in range(1, STEPS + 1)} | {("eval", 2), ("eval", 4)}
    assert list((run / "tensorboard.removed").iterdir())
    assert (ckpts / "latest").read_text().strip() == f"rl_step_{STEPS:06d}"


def test_eval_and_conversion_verify_and_keep_out_of_runs(e2e_workdir, e2e_recast_run):
    _, run = _copy_run(e2e_recast_run, e2e_workdir, "tools")
    flipped = run / "checkpoints" / f"rl_step_{STEPS:06d}"
    _flip(flipped / "__0_0.distcp", at=2048)
    (e2e_workdir / "model.yaml").write_text(yaml.safe_dump(TINY["model"]))
    (e2e_workdir / "model_bad.yaml").write_text(yaml.safe_dump({**TINY["model"], "hidden_size": 64, "ffn_hidden_size": 128}))
    other = e2e_workdir / "converted"
    (other).mkdir()
    (other / "latest").write_text("keep-me\n")  # some other pointer next to the tool's output
    data, hf = str(e2e_workdir / "data"), str(e2e_workdir / "hf")
    calls = [
        ["eval", "--config", str(e2e_workdir / "recast.yaml"), "--checkpoint", str(flipped)],
        ["to-hf", "--checkpoint", str(flipped), "--dataset", data, "--out", hf],
        ["to-hf", "--checkpoint", str(e2e_recast_run), "--dataset", data, "--out", hf],
        ["from-hf", "--hf", hf, "--model", str(e2e_workdir / "model.yaml"), "--dataset", data, "--out", str(run / "checkpoints" / "init")],
        ["from-hf", "--hf", hf, "--model", str(e2e_workdir / "model_bad.yaml"), "--dataset", data, "--out", str(other / "bad")],
        ["from-hf", "--hf", hf, "--model", str(e2e_workdir / "model.yaml"), "--dataset", data, "--out", str(other / "init")],
    ]
    driver = e2e_workdir / "tools_driver.py"
    driver.write_text(TOOLS_DRIVER)
    proc = subprocess.run([sys.executable, str(driver), str(REPO), json.dumps(calls)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{\"rc\"")]
    assert len(results) == len(calls), proc.stdout[-2000:] + proc.stderr[-3000:]
    eval_flipped, hf_flipped, hf_ok, into_run, bad_model, elsewhere = results
    for result in (eval_flipped, hf_flipped):  # used to give rc 0 and Pass@1 0
        assert result["rc"] == 2 and f"{flipped / '__0_0.distcp'} has sha256" in result["err"], result
    assert hf_ok["rc"] == 0, hf_ok
    assert into_run["rc"] == 2 and f"inside the checkpoints of the run {run.resolve()}" in into_run["err"]
    assert not (run / "checkpoints" / "init").exists() and (run / "checkpoints" / "latest").read_text().strip() == f"rl_step_{STEPS:06d}"
    assert bad_model["rc"] == 2 and "hidden_size: config.json 32 vs --model 64" in bad_model["err"]
    assert elsewhere["rc"] == 0, elsewhere
    assert (other / "latest").read_text() == "keep-me\n"  # the tool moved no pointer
    from recast_mcore.checkpoint import manifest

    weights = other / "init" / "weights"  # OUT/weights: the imported actor checkpoint
    assert manifest.verify(weights) == [] and not (other / "init" / "latest").exists()
    sealed = json.loads((weights / "manifest.json").read_text())
    assert sealed["dataset"]["vocab"] and sealed["source"] == str(Path(hf).resolve()) and sealed["import"] == "items"


@pytest.mark.dist
def test_torchrun_ranks_all_exit_when_the_run_is_locked(e2e_workdir, e2e_recast_run):
    """Only rank 0 tries the lock; the refusal is broadcast, so no follower waits for a rank 0 that left."""
    config = _config(e2e_workdir, "locked_dp2", rollout={"engine": "sglang", "sampling": {"group_size": 4}})
    (e2e_workdir / "locked_dp2").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(e2e_workdir / "locked_dp2")], stdout=subprocess.PIPE,
                              text=True, env=_env(), cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "recast_mcore.trainer.cli", "--config", str(config)]
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240, start_new_session=True)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    assert proc.stderr.count(f"in use by another recast-train: PID {holder.pid}") == 2, proc.stderr[-3000:]
