"""Run configuration: typed sections, YAML in and out, dotted command-line overrides.

Every number a run prints is reproducible from its seed and the resolved configuration,
which training saves as ``config.yaml`` in the run folder.

The sections are pydantic models: every key has a type and, where it matters, a range
or a set of allowed values, checked when a file or an override is loaded *and* when a
value is assigned later. pydantic is used (rather than hand-written checks on
dataclasses, or OmegaConf) because it validates nested models, ``Literal`` choices,
numeric ranges and unions with precise error locations, which become one
:class:`~edue.errors.ConfigError` line naming the key, the value and what is allowed.
Names that depend on what is registered (``method.name``, ``data.format``) are checked
against the method and reader registries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edue.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
#: a subset's size: a count of cases, or a fraction of them
SubsetSize = Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0)]


def _default_split() -> dict[str, SubsetSize]:
    return {"train": 300, "val": 60, "test": 100}


class _Section(BaseModel):
    """Common behaviour: unknown keys are errors; assignments are checked too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=False)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(exc, root=type(self)) from None


class DataConfig(_Section):
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
        num_workers: data-loader worker processes (persistent across epochs).
        augment: random flips during training.
        cache: the prepared-case cache (decoded, label-decoded, resampled, resized once):
            ``auto`` (in memory when it fits ``cache_memory_mb``, else on disk),
            ``memory``, ``disk`` or ``off``.
        cache_dir: folder of disk caches (``null``: ``$EDUE_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/edue``, else ``~/.cache/edue``); reused by later runs.
        cache_memory_mb: the most ``auto`` keeps in memory.
        cache_max_gb: the most (GiB) the disk cache folder's stores may hold: after a
            new store is built, the least recently used whole stores are removed until
            they fit (stores in use or being built are kept; ``null``: no limit).
        patches_per_volume: patches drawn from each loaded case per epoch (patch
            training): the loader's cost per patch falls with it; ``train.batch_size``
            counts patches and must be a multiple of it.
    """

    format: str = "synthetic"
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    split: dict[str, SubsetSize] | str = Field(default_factory=_default_split)
    split_file: str | None = None
    split_seed: NonNegativeInt = 0
    size: PositiveInt | None = None
    patch_size: Annotated[list[PositiveInt], Field(min_length=1, max_length=3)] | None = None
    patch_pos_ratio: Fraction = 0.67
    strict: bool = False
    num_workers: NonNegativeInt = 0
    augment: bool = False
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    cache_dir: str | None = None
    cache_memory_mb: NonNegativeInt = 4096
    cache_max_gb: Annotated[float, Field(gt=0.0)] | None = None
    patches_per_volume: PositiveInt = 1

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from edue.data.source import reader_names

        if value not in reader_names():
            raise ValueError(f"unknown format (one of: {', '.join(reader_names())})")
        return value

    @field_validator("cache", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @field_validator("split")
    @classmethod
    def _split_subsets(cls, value: dict[str, float] | str) -> dict[str, float] | str:
        unknown = sorted(set(value) - {"train", "val", "test"}) if isinstance(value, dict) else []
        if unknown:
            raise ValueError(f"unknown subset(s) {unknown} (train, val, test)")
        return value


class ModelConfig(_Section):
    """The backbone (see ``docs/backbones.md``).

    Attributes:
        backbone: ``unet`` (edue's U-Net, 2D and 3D), ``smp`` (a
            segmentation-models-pytorch network, 2D; ``pip install 'edue[backbones]'``) or
            ``dynunet`` (MONAI's DynUNet, the nnU-Net architecture, 2D and 3D).
        channels: ``unet``: encoder widths, fine to coarse (at least two levels).
        norm: ``batch``, ``instance``, ``group`` or ``none`` (``unet``, ``dynunet``).
        arch: ``smp``: architecture (``Unet``, ``UnetPlusPlus``, ``FPN``, ``Linknet``, …).
        encoder: ``smp``: encoder name (``resnet34``, ``resnet50``, ``efficientnet-b0``,
            ``tu-…`` for timm's).
        encoder_depth: ``smp``: encoder stages used (3–5).
        decoder_channels: ``smp``: decoder widths (``null``: the architecture's).
        encoder_weights: ``smp``: ``imagenet`` downloads pretrained encoder weights (where
            the machine is online); ``null`` trains from scratch or uses
            ``encoder_weights_path``.
        encoder_weights_path: ``smp``: a local file of encoder weights (``.safetensors``
            or a PyTorch file of tensors, loaded with ``weights_only``).
        input_mean: per-channel mean subtracted from the input (``null``: the encoder's
            pretraining statistics when pretrained weights are loaded, else none); saved
            in every checkpoint with the weights.
        input_std: per-channel standard deviation the input is divided by.
        kernel_size: ``dynunet``: kernel size per level (``null``: planned like nnU-Net
            from the patch size and ``spacing``).
        strides: ``dynunet``: stride per level, the first all ones (``null``: planned).
        filters: ``dynunet``: widths per level (``null``: nnU-Net's 32·2^i, capped at 320
            in 3D and 512 in 2D).
        spacing: ``dynunet``: voxel spacing the plan assumes (``null``: isotropic).
    """

    backbone: Literal["unet", "smp", "dynunet"] = "unet"
    channels: Annotated[list[PositiveInt], Field(min_length=2)] = Field(
        default_factory=lambda: [16, 32, 64, 128]
    )
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_depth: Annotated[int, Field(ge=3, le=5)] = 5
    decoder_channels: Annotated[list[PositiveInt], Field(min_length=3, max_length=5)] | None = None
    encoder_weights: Literal["imagenet"] | None = None
    encoder_weights_path: str | None = None
    input_mean: Annotated[list[float], Field(min_length=1)] | None = None
    input_std: Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=1)] | None = None
    kernel_size: list[Annotated[list[PositiveInt], Field(min_length=2, max_length=3)]] | None = None
    strides: list[Annotated[list[PositiveInt], Field(min_length=2, max_length=3)]] | None = None
    filters: Annotated[list[PositiveInt], Field(min_length=2)] | None = None
    spacing: (
        Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=2, max_length=3)] | None
    ) = None

    @model_validator(mode="after")
    def _backbone_options(self) -> ModelConfig:
        if self.encoder_weights and self.encoder_weights_path:
            raise ValueError("encoder_weights and encoder_weights_path: set one of them, not both")
        if self.backbone == "smp":
            import importlib.util

            if importlib.util.find_spec("segmentation_models_pytorch") is None:
                raise ValueError(
                    "backbone smp needs segmentation-models-pytorch, which is not installed: "
                    "pip install 'edue[backbones]'"
                )
        if (self.kernel_size is None) != (self.strides is None):
            raise ValueError("kernel_size and strides: give both or neither")
        decoder = self.decoder_channels
        if decoder is not None and self.backbone == "smp" and len(decoder) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels: {len(decoder)} widths for encoder_depth {self.encoder_depth}"
            )
        return self


#: The published configuration (Abutalip et al. 2024): ``method.preset: paper``.
PAPER_PRESET: dict[str, Any] = {
    "heads": "decoder",
    "aux_weight": 0.3,
    "label_sampling": True,
    "guidance": True,
    "guidance_weight": 5.0,
    "guidance_norm": "none",
    "guidance_detach_final": False,
    "segmentation": "mean",
    "uncertainty_heads": "shared",
    "score": "variance",
}


class MethodConfig(_Section):
    """The method and its switches (every EDUE ingredient can be turned off for ablations).

    Attributes:
        name: a registered method (``edue method list``-style names: see
            :func:`edue.methods.method_names`).
        preset: ``paper`` restores the published configuration where a key is not set
            explicitly (heads on the decoder, guidance_norm ``none``, λ = 5, the final
            head guided too); ``null`` keeps the defaults below.
        heads: head placement of multi-head methods: ``decoder`` (after every decoder
            block), ``encoder+decoder`` (every block), or a list of block names.
        aux_weight: BCE weight of each auxiliary head.
        label_sampling: auxiliary heads learn one randomly drawn rater (else the soft vote).
        guidance: add ``guidance_weight × guidance term(variance across heads, expert
            variance)``.
        guidance_weight: lambda (50 with the default ``mse`` term; the published RMSE
            term used 5).
        guidance_norm: the guidance term: ``mse`` (default: the mean squared error,
            chosen on the validation splits of the embedded 2D and 3D data, where one λ
            serves both), ``none`` (the published RMSE) or ``expert_rms`` (the RMSE divided
            by the experts' RMS variance over the batch); see
            :func:`edue.losses.guidance_term` and ``docs/method.md``.
        guidance_detach_final: keep the guidance's gradient out of the final head.
        segmentation: EDUE's segmentation: the ``final`` head alone (default), ``mean``
            over the heads (the published read-out), or ``weighted`` (the final head 1,
            each other ``aux_weight``, normalised); the uncertainty is the spread across
            heads either way (docs/method.md, "Where the segmentation comes from").
        uncertainty_heads: ``separate`` (default: segmentation heads trained as the
            deep-supervised U-Net, and a second set of 1×1 heads on the same blocks
            trained with the EDUE loss) or ``shared`` (the published method: the heads
            are both the segmentation and the uncertainty). The defaults were chosen by
            the converged studies on validation (docs/studies.md).
        uncertainty_gradient: with separate heads, the scale of the uncertainty heads'
            gradient into the shared network (0: stopped; 1: unscaled; default 0.3).
        score: the image-level score's map: ``variance`` across heads, ``bernoulli``
            ``p (1 − p)`` of the segmentation, or ``combined`` (their sum).
        skip_first: Layer Ensembles: heads skipped at prediction (the first T).
        mc_dropout: dropout probability of MC dropout.
        mc_samples: MC dropout samples at prediction.
        ensemble_size: Deep Ensemble members.
        member: train only this member of a Deep Ensemble (independent jobs).
        samples: members drawn at prediction by the sampling methods (``ssn``,
            ``prob_unet``): each sample is one member.
        ssn_rank: Stochastic Segmentation Network: rank of the low-rank factor of the
            logit covariance (0: diagonal only).
        ssn_samples: Stochastic Segmentation Network: logit samples per image in
            training (antithetic pairs, so an even number).
        ssn_likelihood: Stochastic Segmentation Network: ``paired`` (each antithetic
            pair of samples scored as one; default) or ``mc`` (the original estimator,
            whose covariance grows unchecked without a region-of-interest mask); see
            :mod:`edue.methods.ssn`.
        lr_scale: this method's learning rate as a multiple of ``train.lr`` (a study
            shares ``train.lr``; a method that needs a smaller one gets it, said in its
            row). Default 1.
        latent_dim: Probabilistic U-Net: size of the latent space.
        kl_weight: Probabilistic U-Net: β, the weight of the KL term.
        fcomb_layers: Probabilistic U-Net: 1×1 layers combining the features with a
            latent sample.
    """

    name: str = "edue"
    preset: Literal["paper"] | None = None
    heads: Literal["decoder", "encoder+decoder"] | Annotated[list[str], Field(min_length=2)] = (
        "decoder"
    )
    aux_weight: Annotated[float, Field(ge=0.0)] = 0.3
    label_sampling: bool = True
    guidance: bool = True
    guidance_weight: Annotated[float, Field(ge=0.0)] = 50.0
    guidance_norm: Literal["none", "expert_rms", "mse"] = "mse"
    guidance_detach_final: bool = False
    segmentation: Literal["mean", "final", "weighted"] = "final"
    uncertainty_heads: Literal["shared", "separate"] = "separate"
    uncertainty_gradient: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    score: Literal["variance", "bernoulli", "combined"] = "variance"
    skip_first: NonNegativeInt = 4
    mc_dropout: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    mc_samples: Annotated[int, Field(ge=2)] = 10
    ensemble_size: Annotated[int, Field(ge=2)] = 5
    member: NonNegativeInt | None = None
    samples: Annotated[int, Field(ge=2)] = 16
    ssn_rank: NonNegativeInt = 10
    ssn_samples: Annotated[int, Field(ge=2, multiple_of=2)] = 20
    ssn_likelihood: Literal["paired", "mc"] = "paired"
    lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    latent_dim: PositiveInt = 6
    kl_weight: Annotated[float, Field(ge=0.0)] = 1.0
    fcomb_layers: PositiveInt = 3

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("preset") == "paper":
            return {**PAPER_PRESET, **values}
        return values

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        from edue.methods.registry import method_names

        if value not in method_names():
            raise ValueError(f"not a registered method (one of: {', '.join(method_names())})")
        return value

    @model_validator(mode="after")
    def _member_in_range(self) -> MethodConfig:
        if self.member is not None and self.member >= self.ensemble_size:
            raise ValueError(
                f"member {self.member} is outside the ensemble of "
                f"{self.ensemble_size} (0 … {self.ensemble_size - 1})"
            )
        return self


class TrainConfig(_Section):
    """Optimisation and run settings.

    Attributes:
        epochs: passes over the training split (the most, with ``patience``).
        patience: stop early after this many epochs without a lower validation loss
            (``0``: always train ``epochs``); ``best.pt`` holds the best epoch.
        batch_size: images per step (global batch under DDP).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: seed of weights, data order, rater sampling and dropout.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision: ``none``, ``auto``, ``bf16`` or ``fp16``.
        channels_last: channels-last memory format (2D).
        compile: ``torch.compile`` the network (training steps; validation too).
        compile_backend: ``torch.compile`` backend: ``inductor`` (generated kernels; a C++
            compiler on the CPU, Triton on GPUs), ``aot_eager`` (traced graph, eager
            kernels: checks that a model compiles, no speed-up) or ``eager``.
        deterministic: deterministic algorithms (bitwise-reproducible resumes).
        threads: CPU threads (0 = torch's default).
        checkpoint_every: also checkpoint every N steps within an epoch (0 = per epoch only).
    """

    epochs: PositiveInt = 20
    patience: NonNegativeInt = 0
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    seed: NonNegativeInt = 0
    device: str = "auto"
    amp: Literal["none", "auto", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    deterministic: bool = False
    threads: NonNegativeInt = 0
    checkpoint_every: NonNegativeInt = 0

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        index = value.removeprefix("cuda:")
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and index.isdigit()):
            return value
        raise ValueError("expected auto, cpu, cuda or cuda:N")


class InferConfig(_Section):
    """Prediction settings.

    Attributes:
        roi_size: sliding-window size for volumes (``null``: ``data.patch_size``, and a
            single whole-image pass when that is unset too).
        overlap: overlap of neighbouring windows (fraction of the window, below 1).
        sw_batch_size: windows per forward pass.
        blend: ``gaussian`` or ``constant`` blending of overlapping windows.
        max_memory_mb: the memory one prediction may use (``null``: derived from the
            machine's memory); an image whose whole-image pass would need more is
            predicted tile by tile (docs/method.md, "Inference").
    """

    roi_size: Annotated[list[PositiveInt], Field(min_length=1, max_length=3)] | None = None
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.25
    sw_batch_size: PositiveInt = 4
    blend: Literal["gaussian", "constant"] = "gaussian"
    max_memory_mb: PositiveInt | None = None


class Config(_Section):
    """A whole run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    out_dir: str = "runs/train"

    @model_validator(mode="after")
    def _patches_fit_the_batch(self) -> Config:
        n = self.data.patches_per_volume
        if n > 1 and not self.data.patch_size:
            raise ValueError("data.patches_per_volume > 1 needs data.patch_size")
        if self.train.batch_size % n:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} must be a multiple of "
                f"data.patches_per_volume {n}"
            )
        return self

    @model_validator(mode="after")
    def _method_accepts(self) -> Config:
        from edue.methods.registry import get_method

        check = get_method(self.method.name).check
        if check is not None:
            check(self)  # raises ValueError saying which keys disagree
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable)."""
        return self.model_dump(mode="python")


def _describe(errors: list[Any], root: type[BaseModel]) -> list[str]:
    """Readable clauses ``key = value: what is allowed``, one per key, from pydantic errors.

    The branches of a union fail separately; when one branch got past the type check
    (a dict of subset sizes with a negative count), the others' type errors are noise.
    """
    grouped: dict[str, list[Any]] = {}
    sections: dict[str, type[BaseModel]] = {}
    for error in errors:
        keys, section = _key_path(root, error["loc"])
        key = ".".join(keys) or "config"
        grouped.setdefault(key, []).append(error)
        sections[key] = section
    clauses = []
    for key, group in grouped.items():
        if any(e["type"] == "extra_forbidden" for e in group):
            known = ", ".join(sections[key].model_fields)
            clauses.append(f"{key}: unknown key (known here: {known})")
            continue
        value = group[0].get("input")
        shown = "" if isinstance(value, dict | BaseModel) else f" = {value!r}"
        messages = list(dict.fromkeys(str(e["msg"]).removeprefix("Value error, ") for e in group))
        clauses.append(f"{key}{shown}: {' or '.join(messages)}")
    specific = [
        c
        for c, (k, g) in zip(clauses, grouped.items(), strict=True)
        if not all(e["type"].endswith("_type") for e in g)
    ]
    return specific or clauses


#: parts of an error location that name a union branch, not a key (as do pydantic's
#: ``list[...]``, ``literal[...]`` and ``constrained-int``; keys here use underscores)
_BRANCH_NAMES = {"str", "int", "float", "bool", "none"}


def _key_path(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel]]:
    """The dotted key of an error location (without union-branch tags and list indices),
    and the section whose key it is."""
    keys: list[str] = []
    model: type[BaseModel] | None = root
    section = root
    for part in loc:
        name = str(part)
        if isinstance(part, int) or "[" in name or name in _BRANCH_NAMES or "-" in name:
            continue
        keys.append(str(part))
        field = model.model_fields.get(str(part)) if model is not None else None
        if model is not None:
            section = model
        annotation = getattr(field, "annotation", None)
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_model else None
    return keys, section


def config_error(
    exc: ValidationError, where: str = "", root: type[BaseModel] | None = None
) -> ConfigError:
    """One :class:`ConfigError` line from a pydantic error (every problem, ``;``-joined).

    Args:
        exc: the validation error.
        where: prefix (the file the values came from).
        root: the section the error's locations start at (default: the whole config).
    """
    clauses = _describe(exc.errors(), root or Config)
    prefix = f"{where}: " if where else ""
    return ConfigError(prefix + "; ".join(clauses))


def config_from_dict(values: dict[str, Any], where: str = "") -> Config:
    """Build and check a :class:`Config` from a nested dict.

    Raises:
        ConfigError: unknown keys, wrong types, unknown choices or out-of-range values.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping, got {type(values).__name__}")
    try:
        return Config.model_validate(values)
    except ValidationError as exc:
        raise config_error(exc, where) from None


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
    values = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides or []), str(path or ""))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The values a YAML configuration file sets (nothing filled in).

    Raises:
        ConfigError: a missing or unreadable file, not UTF-8 text, bad YAML, or a
            document that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte {exc.start}): a configuration is a YAML text file", path
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror or exc})", path) from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"invalid YAML{where}: {problem}", path) from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"must be a mapping of sections (data, model, …), got {type(values).__name__}", path
        )
    return values


def merge_values(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the values of ``extra`` laid over it, section by section."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def flat_values(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (sections only; lists and option maps of a
    key, such as ``data.options``, stay whole)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix.count(".") and name in _SECTIONS:
            out.update(flat_values(value, f"{name}."))
        else:
            out[name] = value
    return out


_SECTIONS = ("data", "model", "method", "train", "infer")


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML (atomically)."""
    from edue.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
