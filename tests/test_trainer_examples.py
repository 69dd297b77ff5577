"""The shipped example configs load strictly, and the ml-100k pair differs only in the signal builder."""

import subprocess
from pathlib import Path

import pytest
import yaml

from recast_mcore.config.base import load_config, to_dict
from recast_mcore.config.run import RunConfig
from recast_mcore.trainer.checks import check_rl_optimizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_loads(path):
    cfg = load_config(RunConfig, path)
    assert cfg.data.prepared_dir and cfg.run_dir
    check_rl_optimizer(cfg.rl.optim, cfg.optim)  # the RL optimizer fits the actor's DDP wrappers
    assert max(cfg.eval.ks) <= cfg.eval.beam_width


def test_ml100k_configs_differ_only_in_signal_builder():
    grpo = to_dict(load_config(RunConfig, EXAMPLES / "ml-100k-grpo.yaml"))
    recast = to_dict(load_config(RunConfig, EXAMPLES / "ml-100k-recast.yaml"))
    assert grpo["signal"].pop("builder") == "grpo" and recast["signal"].pop("builder") == "recast"
    assert grpo.pop("run_dir") != recast.pop("run_dir")  # separate run directories
    assert grpo == recast


def test_gpu_configs_have_layouts_and_fp8():
    layouts = {}
    for name in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"):
        cfg = load_config(RunConfig, EXAMPLES / f"{name}.yaml")
        assert cfg.model.fp8 != "none" and cfg.model.params_dtype == "bf16" and cfg.model.qk_layernorm
        assert cfg.rollout.engine == "sglang"
        layouts[name] = (cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel, cfg.model.num_layers)
    assert layouts == {"qwen3-0.6b": (1, 1, 28), "qwen3-1.7b": (2, 1, 28), "qwen3-8b": (4, 2, 36)}


def test_quickstart_data_section_is_what_recast_data_reads():
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    assert raw["data"]["dataset"] == "synthetic"
    assert load_config(RunConfig, EXAMPLES / "quickstart.yaml").rollout.engine == "sglang"  # the main job runs the production engine


@pytest.mark.parametrize("script", ["quickstart.sh", "ml-100k.sh", "launch/torchrun_multinode.sh", "launch/slurm.sbatch"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(EXAMPLES / script)]).returncode == 0
