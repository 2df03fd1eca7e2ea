from pathlib import Path

import pytest

from edue.config import load_config, save_config
from edue.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.method.name in ("edue", "deep_ensemble")


def test_overrides_are_parsed_as_yaml():
    config = load_config(
        None,
        [
            "train.epochs=3",
            "model.channels=[4, 8]",
            "method.guidance=false",
            "data.options={size: 48}",
        ],
    )
    assert config.train.epochs == 3 and config.model.channels == [4, 8]
    assert config.method.guidance is False and config.data.options == {"size": 48}


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(None, ["method.name=layer_ensembles", "train.seed=7"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.name=magic"], "method.name 'magic' unknown"),
        (["train.amp=fp8"], "train.amp"),
        (["train.epochs=0"], ">= 1"),
        (["oops"], "key.path=value"),
        (["data.bogus=1"], "unknown key"),
    ],
)
def test_invalid_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
