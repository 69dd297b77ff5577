"""Strict config loading (recast_mcore/config/base.py): errors name the key, the file, the choices."""

import ast
import dataclasses
from pathlib import Path

import pytest

from recast_mcore.config.base import ConfigError, from_dict, load_config, parse_override, save_config, to_dict
from recast_mcore.config.data import DataConfig
from recast_mcore.config.run import RunConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recast_mcore" / "config"


def write_yaml(path, text):
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(DataConfig)
    assert cfg == DataConfig()


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    f = write_yaml(tmp_path / "data.yaml", "kcore: 3\nkcorr: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(DataConfig, f)
    msg = str(exc.value)
    assert str(f) in msg and "unknown key 'kcorr'" in msg and "valid keys:" in msg and "kcore" in msg


def test_unknown_nested_key_has_dotted_path(tmp_path):
    f = write_yaml(tmp_path / "run.yaml", "data:\n  semantic_ids:\n    levelz: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key 'data\.semantic_ids\.levelz' for SemanticIdConfig"):
        load_config(RunConfig, f)


def test_bad_literal_lists_choices(tmp_path):
    f = write_yaml(tmp_path / "d.yaml", "dataset: netflix\n")
    with pytest.raises(ConfigError) as exc:
        load_config(DataConfig, f)
    msg = str(exc.value)
    assert "'dataset' = 'netflix' is not a valid choice" in msg
    for choice in ("'synthetic'", "'ml-100k'", "'movielens'", "'amazon'", "'csv'"):
        assert choice in msg


def test_wrong_types_are_rejected(tmp_path):
    cases = {
        "kcore: five\n": "'kcore' must be an integer",
        "kcore: 2.5\n": "'kcore' must be an integer",
        "skip_malformed: 1\n": "'skip_malformed' must be true/false",
        "synthetic: 3\n": "'synthetic' must be a mapping for SyntheticConfig",
        "min_rating: high\n": "'min_rating' = 'high' matches none of",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(DataConfig, write_yaml(tmp_path / "t.yaml", text))


def test_optional_float_accepts_int_and_null(tmp_path):
    assert load_config(DataConfig, write_yaml(tmp_path / "a.yaml", "min_rating: 4\n")).min_rating == 4.0
    assert load_config(DataConfig, write_yaml(tmp_path / "b.yaml", "min_rating: null\n")).min_rating is None


def test_set_overrides_nested_and_typed(tmp_path):
    f = write_yaml(tmp_path / "d.yaml", "kcore: 3\nsemantic_ids:\n  levels: 2\n")
    cfg = load_config(DataConfig, f, ["kcore=10", "semantic_ids.codes_per_level=64", "min_rating=3.5", "path=x.csv"])
    assert cfg.kcore == 10 and cfg.semantic_ids.levels == 2 and cfg.semantic_ids.codes_per_level == 64
    assert cfg.min_rating == 3.5 and cfg.path == "x.csv"
    run = load_config(RunConfig, None, ["data.synthetic.num_users=50"])
    assert run.data.synthetic.num_users == 50


def test_bad_overrides(tmp_path):
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(DataConfig, None, ["kcore"])
    with pytest.raises(ConfigError, match=r"'kcore' is not a section"):
        load_config(DataConfig, write_yaml(tmp_path / "d.yaml", "kcore: 3\n"), ["kcore.x=1"])
    with pytest.raises(ConfigError, match=r"'kcore' must be an integer, got \{'x': 1\}"):
        load_config(DataConfig, None, ["kcore.x=1"])
    with pytest.raises(ConfigError, match=r"<defaults> \+ --set overrides: unknown key 'semantic_ids.k'"):
        load_config(DataConfig, None, ["semantic_ids.k=1"])
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_validate_hook_names_source(tmp_path):
    f = write_yaml(tmp_path / "d.yaml", "kcore: 0\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: DataConfig: kcore must be >= 1"):
        load_config(DataConfig, f)
    with pytest.raises(ConfigError, match="codes_per_level >= 2"):
        load_config(DataConfig, None, ["semantic_ids.codes_per_level=1"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(DataConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(DataConfig, write_yaml(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DataConfig, write_yaml(tmp_path / "bad.yaml", "a: [1, 2\n"))


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(DataConfig, None, ["kcore=7", "semantic_ids.embedding=features", "min_rating=2"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(DataConfig, tmp_path / "out" / "config.yaml")
    assert again == cfg and to_dict(again)["semantic_ids"]["embedding"] == "features"
    run = RunConfig()
    save_config(run, tmp_path / "run.yaml")
    assert load_config(RunConfig, tmp_path / "run.yaml") == run


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="'<root>' must be a mapping"):
        from_dict(DataConfig, [1, 2])


def _config_classes_without_field_docstrings(path: Path) -> list[str]:
    """Fields of @dataclass classes in ``path`` not followed directly by a string literal."""
    tree = ast.parse(path.read_text())
    missing = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        if not any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                nxt = body[i + 1] if i + 1 < len(body) else None
                documented = isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str)
                if not documented:
                    missing.append(f"{path.name}:{stmt.lineno} {node.name}.{stmt.target.id}")
    return missing


def test_data_config_fields_are_documented_and_kw_only():
    assert _config_classes_without_field_docstrings(CONFIG_DIR / "data.py") == []
    for cls in (DataConfig, type(DataConfig().synthetic), type(DataConfig().semantic_ids)):
        assert all(f.kw_only for f in dataclasses.fields(cls)), cls.__name__


def test_every_config_field_has_a_docstring():
    missing = [m for path in sorted(CONFIG_DIR.glob("*.py")) for m in _config_classes_without_field_docstrings(path)]
    assert missing == [], "config fields without a docstring under them:\n" + "\n".join(missing)
