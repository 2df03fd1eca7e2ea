from pathlib import Path

import pytest
import yaml

from edue.cli import main
from edue.config import Config, load_config, save_config
from edue.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def _config_param(path: Path) -> object:
    smp = "backbone: smp" in path.read_text(encoding="utf-8")
    return pytest.param(path, id=path.name, marks=[pytest.mark.backbones] if smp else [])


@pytest.mark.parametrize("path", [_config_param(p) for p in CONFIGS])
def test_shipped_configs_load(path):
    import importlib.util

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    smp = importlib.util.find_spec("segmentation_models_pytorch") is not None
    if raw.get("model", {}).get("backbone") == "smp" and not smp:
        with pytest.raises(ConfigError, match=r"pip install 'edue\[backbones\]'"):
            load_config(path)  # one line naming the extra where smp is not installed
        return
    config = load_config(path)
    assert config.method.name == raw["method"].get("name", "edue")
    assert config.data.format == raw["data"]["format"]


def test_overrides_are_parsed_as_yaml():
    config = load_config(
        None,
        [
            "train.epochs=3",
            "model.channels=[4, 8]",
            "method.guidance=false",
            "data.options={size: 48}",
            "data.split={train: 0.7, val: 0.1, test: 0.2}",
        ],
    )
    assert config.train.epochs == 3 and config.model.channels == [4, 8]
    assert config.method.guidance is False and config.data.options == {"size": 48}
    assert config.data.split == {"train": 0.7, "val": 0.1, "test": 0.2}


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(None, ["method.name=layer_ensembles", "train.seed=7"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").to_dict() == config.to_dict()
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["data"]["split"] == {
        "train": 300,
        "val": 60,
        "test": 100,
    }


#: Bad values: (overrides, the exact ConfigError line).
BAD_VALUES = [
    # unknown choice
    (
        ["model.norm=batchh"],
        "model.norm = 'batchh': Input should be 'batch', 'instance', 'group' or 'none'",
    ),
    (["infer.blend=foo"], "infer.blend = 'foo': Input should be 'gaussian' or 'constant'"),
    (["train.amp=fp8"], "train.amp = 'fp8': Input should be 'none', 'auto', 'bf16' or 'fp16'"),
    (
        ["train.compile_backend=tvm"],
        "train.compile_backend = 'tvm': Input should be 'inductor', 'aot_eager' or 'eager'",
    ),
    (["train.device=tpu"], "train.device = 'tpu': expected auto, cpu, cuda or cuda:N"),
    (
        ["method.name=magic"],
        "method.name = 'magic': not a registered method (one of: edue, "
        "layer_ensembles, mc_dropout, plain, deep_supervision, deep_supervision_heads, "
        "deep_ensemble, ssn, prob_unet)",
    ),
    (
        ["data.format=dicom"],
        "data.format = 'dicom': unknown format (one of: folder, hecktor, "
        "lidc-hdf5, lidc-pickle, monai-datalist, nnunet-raw, qubiq, riga-discregion, riga-plus, "
        "synthetic, synthetic3d)",
    ),
    (
        ["data.split={train: 10, dev: 2}"],
        "data.split: unknown subset(s) ['dev'] (train, val, test)",
    ),
    # wrong type
    (
        ["train.lr=fast"],
        "train.lr = 'fast': Input should be a valid number, unable to parse string as a number",
    ),
    (
        ["train.epochs=3.5"],
        "train.epochs = 3.5: Input should be a valid integer, got a number with a fractional part",
    ),
    (
        ["method.guidance=maybe"],
        "method.guidance = 'maybe': Input should be a valid boolean, unable to interpret input",
    ),
    (["model.channels=16"], "model.channels = 16: Input should be a valid list"),
    (
        ["method.heads=5"],
        "method.heads = 5: Input should be 'decoder' or 'encoder+decoder' or Input should be "
        "a valid list",
    ),
    (["model=3"], "model = 3: Input should be a valid dictionary or instance of ModelConfig"),
    # out of range
    (["train.epochs=0"], "train.epochs = 0: Input should be greater than or equal to 1"),
    (["train.lr=0"], "train.lr = 0: Input should be greater than 0"),
    (["method.mc_dropout=1.5"], "method.mc_dropout = 1.5: Input should be less than 1"),
    (["infer.overlap=1"], "infer.overlap = 1: Input should be less than 1"),
    (
        ["data.patch_pos_ratio=-0.1"],
        "data.patch_pos_ratio = -0.1: Input should be greater than or equal to 0",
    ),
    (
        ["data.split={train: -1}"],
        "data.split.train = -1: Input should be greater than or equal to 0",
    ),
    (
        ["model.channels=[16]"],
        "model.channels = [16]: List should have at least 2 items after validation, not 1",
    ),
    (
        ["data.patch_size=[0, 24]"],
        "data.patch_size = 0: Input should be greater than or equal to 1",
    ),
    (
        ["method.ensemble_size=1"],
        "method.ensemble_size = 1: Input should be greater than or equal to 2",
    ),
    (["method.member=5"], "method: member 5 is outside the ensemble of 5 (0 … 4)"),
    (
        ["method.name=layer_ensembles", "method.skip_first=6"],
        "config: method.skip_first 6 must leave at least 2 of the 7 heads of a 4-level U-Net",
    ),
    # unknown keys, malformed overrides
    (
        ["train.lrr=1"],
        "train.lrr: unknown key (known here: epochs, patience, batch_size, lr, "
        "weight_decay, seed, device, amp, channels_last, compile, compile_backend, deterministic, "
        "threads, checkpoint_every)",
    ),
    (["oops"], "override 'oops' must look like key.path=value"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_are_one_config_error_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, message", BAD_VALUES[::5], ids=lambda v: str(v)[:40])
def test_cli_answers_bad_values_with_one_line_and_exit_2(overrides, message, tmp_path, capsys):
    status = main(["train", *overrides, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"edue: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_assignment_is_checked_too():
    config = Config()
    with pytest.raises(ConfigError) as info:
        config.train.epochs = 0
    assert str(info.value) == "epochs = 0: Input should be greater than or equal to 1"
    assert config.train.epochs == 20


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: config file not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: invalid YAML at line 1")
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  norm: batchh\n")
    with pytest.raises(ConfigError) as info:
        load_config(typo)
    assert str(info.value) == (
        f"{typo}: model.norm = 'batchh': Input should be 'batch', 'instance', 'group' or 'none'"
    )


def test_config_show_prints_the_resolved_configuration(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    assert main(["config", "show", "--config", str(path), "method.name=plain"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = Config().to_dict()
    expected["train"]["epochs"] = 3
    expected["method"]["name"] = "plain"
    assert shown == expected


def test_overrides_are_accepted_after_options(capsys):
    argv = ["config", "show", "train.epochs=2", "--config", str(CONFIGS[0]), "train.seed=9"]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["train"]["epochs"], shown["train"]["seed"]) == (2, 9)


def test_a_stray_argument_is_still_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["config", "show", "train.epochs=2", "--config", str(CONFIGS[0]), "stray"])
    assert info.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err
