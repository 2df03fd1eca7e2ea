"""Run configuration: dataclasses, YAML in and out, dotted command-line overrides.

Every number a run prints is reproducible from its seed and the resolved configuration,
which training saves as ``config.yaml`` in the run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from edue.errors import ConfigError

METHODS = ("edue", "layer_ensembles", "deep_ensemble", "mc_dropout", "plain")


@dataclass
class DataConfig:
    """Where the cases come from and how they are split.

    Attributes:
        format: reader name (``synthetic``, ``folder``, ``riga-discregion``, …).
        root: dataset folder or file (unused by ``synthetic``).
        options: reader options (for ``synthetic``: generator options such as ``size``).
        split: subset sizes: counts (``{train: 300, val: 60, test: 100}``) or fractions,
            or the name of a preset split (``riga-standard``).
        split_file: a saved split (JSON of case ids per subset) that overrides ``split``.
        split_seed: seed of the patient-level split.
        size: resize 2D images to ``size × size`` (``null`` keeps them).
        patch_size: training patch size for volumes (``null`` trains on whole images);
            also the default sliding window at prediction.
        patch_pos_ratio: share of patches centred on a structure (the rest are random).
        strict: stop at the first bad case instead of skipping it with a warning.
        num_workers: data-loader worker processes.
        augment: random flips during training.
    """

    format: str = "synthetic"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    split: Any = field(default_factory=lambda: {"train": 300, "val": 60, "test": 100})
    split_file: str | None = None
    split_seed: int = 0
    size: int | None = None
    patch_size: list[int] | None = None
    patch_pos_ratio: float = 0.67
    strict: bool = False
    num_workers: int = 0
    augment: bool = False


@dataclass
class ModelConfig:
    """The U-Net backbone.

    Attributes:
        channels: encoder widths, fine to coarse.
        norm: ``batch``, ``instance``, ``group`` or ``none``.
    """

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    norm: str = "batch"


@dataclass
class MethodConfig:
    """The method and its switches (every EDUE ingredient can be turned off for ablations).

    Attributes:
        name: one of ``edue``, ``layer_ensembles``, ``deep_ensemble``, ``mc_dropout``, ``plain``.
        heads: EDUE head placement: ``decoder`` (after every decoder block), or a list of
            block names.
        aux_weight: BCE weight of each auxiliary head.
        label_sampling: auxiliary heads learn one randomly drawn rater (else the soft vote).
        guidance: add ``guidance_weight × RMSE(variance across heads, expert variance)``.
        guidance_weight: lambda.
        skip_first: Layer Ensembles: heads skipped at prediction (the first T).
        mc_dropout: dropout probability of MC dropout.
        mc_samples: MC dropout samples at prediction.
        ensemble_size: Deep Ensemble members.
        member: train only this member of a Deep Ensemble (independent jobs).
    """

    name: str = "edue"
    heads: Any = "decoder"
    aux_weight: float = 0.3
    label_sampling: bool = True
    guidance: bool = True
    guidance_weight: float = 5.0
    skip_first: int = 4
    mc_dropout: float = 0.2
    mc_samples: int = 10
    ensemble_size: int = 5
    member: int | None = None


@dataclass
class TrainConfig:
    """Optimisation and run settings.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step (global batch under DDP).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: seed of weights, data order, rater sampling and dropout.
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: mixed precision: ``none``, ``auto``, ``bf16`` or ``fp16``.
        channels_last: channels-last memory format (2D).
        compile: ``torch.compile`` the network (training steps; validation too).
        compile_backend: ``torch.compile`` backend: ``inductor`` (generated kernels; a C++
            compiler on the CPU, Triton on GPUs) or ``aot_eager`` (traced graph, eager
            kernels: checks that a model compiles, no speed-up).
        deterministic: deterministic algorithms (bitwise-reproducible resumes).
        threads: CPU threads (0 = torch's default).
        checkpoint_every: also checkpoint every N steps within an epoch (0 = per epoch only).
    """

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    deterministic: bool = False
    threads: int = 0
    checkpoint_every: int = 0


@dataclass
class InferConfig:
    """Prediction settings.

    Attributes:
        roi_size: sliding-window size for volumes (``null``: ``data.patch_size``, and a
            single whole-image pass when that is unset too).
        overlap: overlap of neighbouring windows (fraction of the window).
        sw_batch_size: windows per forward pass.
        blend: ``gaussian`` or ``constant`` blending of overlapping windows.
    """

    roi_size: list[int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 4
    blend: str = "gaussian"


@dataclass
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    out_dir: str = "runs/train"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check values a user may get wrong; raise :class:`ConfigError`."""
        if self.method.name not in METHODS:
            raise ConfigError(
                f"method.name '{self.method.name}' unknown (one of {', '.join(METHODS)})"
            )
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        if self.train.device not in ("auto", "cpu", "cuda") and not self.train.device.startswith(
            "cuda:"
        ):
            raise ConfigError(f"train.device '{self.train.device}' (auto, cpu or cuda)")
        if self.train.compile_backend not in ("inductor", "aot_eager", "eager"):
            raise ConfigError(
                f"train.compile_backend '{self.train.compile_backend}' "
                "(inductor, aot_eager or eager)"
            )
        if self.train.amp not in ("none", "auto", "bf16", "fp16"):
            raise ConfigError(f"train.amp '{self.train.amp}' (none, auto, bf16 or fp16)")
        if self.method.ensemble_size < 1 or self.method.mc_samples < 1:
            raise ConfigError("method.ensemble_size and method.mc_samples must be >= 1")
        return self


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"'{where}' must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in '{where or 'config'}' (known: {sorted(known)})"
        )
    kwargs = {}
    for name, value in values.items():
        sub = known[name].type
        nested = {
            "InferConfig": InferConfig,
            "DataConfig": DataConfig,
            "ModelConfig": ModelConfig,
            "MethodConfig": MethodConfig,
            "TrainConfig": TrainConfig,
        }.get(str(sub))
        kwargs[name] = _build(nested, value, f"{where}.{name}".strip(".")) if nested else value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict."""
    return _build(Config, values or {}, "").validate()  # type: ignore[no-any-return]


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML configuration (defaults when ``path`` is None) and apply overrides.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown keys or invalid values.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    try:
        return config_from_dict(apply_overrides(values, overrides or []))
    except TypeError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    from edue.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
