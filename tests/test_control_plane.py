"""The control plane (utils/dist.py): followers wait for rank 0 far longer than the default group allows."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.dist


def test_followers_outlive_the_default_group_timeout(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--master-addr", "127.0.0.1",
           "--master-port", port, str(ROOT / "tests/dist/control_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    result = json.loads((tmp_path / "control.json").read_text())
    followers = [r for r in result["ranks"] if r["rank"] != 0]
    for r in followers:
        # waited WORK_S (8 s) for rank 0 over the control group, longer than the 3 s default-group timeout
        assert r["got"] == {"batch": 42} and r["waited_s"] > result["short_s"] + 2, r
        # the same wait on the default group times out (what a follower on NCCL's default group hit)
        assert "timed out" in r["default_error"].lower() or "timeout" in r["default_error"].lower(), r
        assert r["default_waited_s"] < result["work_s"], r
