"""One version set: pyproject.toml, the CPU and GPU lock files and both Dockerfiles agree (docs/install.md)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("megatron-core", "sglang", "transformers")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s#;]+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    return pins


def test_cpu_and_gpu_share_megatron_sglang_transformers():
    cpu, gpu = _pins(ROOT / "requirements/cpu-lock.txt"), _pins(ROOT / "requirements/gpu-lock.txt")
    for name in SHARED:
        assert cpu[name] == gpu[name], (name, cpu[name], gpu[name])
    assert cpu["torch"] == "2.13.0" and gpu["torch"] == "2.14.1"  # CPU wheel on disk vs the torch sglang pins
    assert gpu["transformer-engine"] == "2.11.0" and "transformer-engine" not in cpu  # never TE on CPU


def test_pyproject_covers_both_environments():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.13"
    deps = {re.split(r"[<>=!\[]", d)[0].lower(): d for d in project["dependencies"]}
    assert deps["torch"] == "torch>=2.13,<2.15" and deps["megatron-core"] == "megatron-core==0.16.1"
    extras = project["optional-dependencies"]
    gpu = _pins(ROOT / "requirements/gpu-lock.txt")
    for req in extras["gpu"] + extras["rollout"]:
        name, version = re.match(r"([A-Za-z0-9_\-]+)(?:\[[^\]]*\])?==(.+)", req).groups()
        assert gpu[name.lower()] == version, req


def test_dockerfiles_use_the_locks_and_hold_torch():
    gpu = (ROOT / "docker/Dockerfile.gpu").read_text()
    assert "python3.12 -m venv" in gpu and "-r requirements/gpu-lock.txt" in gpu
    steps = ("pip install -c requirements/gpu-constraints.txt torch==2.14.1", "-r requirements/gpu-lock.txt",
             "--no-build-isolation --no-binary transformer-engine-torch")
    assert gpu.index(steps[0]) < gpu.index(steps[1]) < gpu.index(steps[2])  # torch first, TE built against it
    assert gpu.count("-c requirements/gpu-constraints.txt") >= 4 and "--no-binary transformer-engine-torch" in gpu
    assert _pins(ROOT / "requirements/gpu-constraints.txt")["torch"] == "2.14.1"
    cpu = (ROOT / "docker/Dockerfile.cpu").read_text()
    assert "FROM python:3.11" in cpu and "torch==2.13.0" in cpu and "tools/setup_env.sh" in cpu
