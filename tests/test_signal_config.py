"""SignalConfig / RewardConfig load strictly from YAML and validate their ranges."""

import pytest

from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.signal import RewardConfig, SignalConfig


def test_signal_config_loads_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "signal.yaml"
    path.write_text(
        "builder: grpo\n"
        "kl:\n  use_kl: true\n"
        "ppo:\n  dual_clip_c: null\n"
        "grpo:\n  std: biased\n"
        "recast:\n  num_negatives: 2\n  loss:\n    form: hinge\n"
        "dynamic_sampling:\n  enabled: true\n"
    )
    cfg = load_config(SignalConfig, path, ["recast.anchor_target=policy_best", "ppo.clip_high=0.3",
                                               "recast.update=advantages", "builder=grpo_gt"])
    assert cfg.builder == "grpo_gt" and cfg.grpo.std == "biased" and cfg.ppo.dual_clip_c is None
    assert cfg.kl.use_kl and cfg.kl.coef == 0.001 and cfg.ppo.clip_high == 0.3
    assert cfg.recast.update == "advantages" and cfg.recast.advantages.magnitude == "margin"
    assert cfg.recast.num_negatives == 2 and cfg.recast.loss.form == "hinge"
    assert cfg.recast.anchor_target == "policy_best" and cfg.dynamic_sampling.enabled


def test_signal_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="recast.loss.form"):
        load_config(SignalConfig, None, ["recast.loss.form=square"])
    with pytest.raises(ConfigError, match="unknown key 'recast.beta'"):
        load_config(SignalConfig, None, ["recast.beta=2"])
    with pytest.raises(ConfigError, match="negative_threshold must be < positive_threshold"):
        load_config(SignalConfig, None, ["recast.negative_threshold=1.0"])
    with pytest.raises(ConfigError, match="dual_clip_c must be > 1"):
        load_config(SignalConfig, None, ["ppo.dual_clip_c=0.5"])
    with pytest.raises(ConfigError, match="unknown key 'grpo.loss'"):  # moved to the shared signal.ppo / signal.kl
        load_config(SignalConfig, None, ["grpo.loss.use_kl=true"])
    with pytest.raises(ConfigError, match="'recast.update'"):
        load_config(SignalConfig, None, ["recast.update=dpo"])
    with pytest.raises(ConfigError, match="kl.coef must be >= 0"):
        load_config(SignalConfig, None, ["kl.coef=-1"])
    with pytest.raises(ConfigError, match="'builder'"):
        load_config(SignalConfig, None, ["builder=dpo"])


def test_reward_config():
    cfg = load_config(RewardConfig, None, ["name=prefix_match", "prefix_match.level_weights=[0.5, 0.3, 0.2]"])
    assert cfg.prefix_match.level_weights == [0.5, 0.3, 0.2]
    with pytest.raises(ConfigError, match="valid: 'hit', 'prefix_match'"):
        load_config(RewardConfig, None, ["name=ndcg"])
    with pytest.raises(ConfigError, match="level_weights must be >= 0"):
        load_config(RewardConfig, None, ["prefix_match.level_weights=[1, -1]"])
