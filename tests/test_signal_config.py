"""SignalConfig / RewardConfig load strictly from YAML and validate their ranges."""

import pytest

from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.signal import RewardConfig, SignalConfig


def test_signal_config_loads_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "signal.yaml"
    path.write_text(
        "builder: grpo\n"
        "grpo:\n  std: biased\n  loss:\n    dual_clip_c: null\n    use_kl: true\n"
        "recast:\n  num_negatives: 2\n  loss:\n    form: hinge\n"
        "dynamic_sampling:\n  enabled: true\n"
    )
    cfg = load_config(SignalConfig, path, ["recast.anchor_target=policy_best", "grpo.loss.clip_high=0.3"])
    assert cfg.builder == "grpo" and cfg.grpo.std == "biased" and cfg.grpo.loss.dual_clip_c is None
    assert cfg.grpo.loss.use_kl and cfg.grpo.loss.clip_high == 0.3
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
        load_config(SignalConfig, None, ["grpo.loss.dual_clip_c=0.5"])
    with pytest.raises(ConfigError, match="'builder'"):
        load_config(SignalConfig, None, ["builder=dpo"])


def test_reward_config():
    cfg = load_config(RewardConfig, None, ["name=prefix_match", "prefix_match.level_weights=[0.5, 0.3, 0.2]"])
    assert cfg.prefix_match.level_weights == [0.5, 0.3, 0.2]
    with pytest.raises(ConfigError, match="valid: 'hit', 'prefix_match'"):
        load_config(RewardConfig, None, ["name=ndcg"])
    with pytest.raises(ConfigError, match="level_weights must be >= 0"):
        load_config(RewardConfig, None, ["prefix_match.level_weights=[1, -1]"])
