"""A segmentation-models-pytorch network (any architecture and encoder) as an edue backbone.

The smp model's own ``encoder`` and ``decoder`` run unchanged; edue adds

* identity *taps* after each encoder stage (``encoder.0`` is the first stage at half
  resolution, ``encoder.{depth-1}`` the deepest), so heads can hang on the encoder as the
  EDUE authors' code does, whatever the encoder's internal module names;
* ``decoder.{j}`` for each block of decoders made of a list of blocks (Unet, Linknet,
  MAnet: coarse to fine), or ``decoder.0`` for the whole decoder of the others (FPN,
  DeepLabV3, PAN, …);
* the input normalisation of the encoder's pretraining (``input_mean``/``input_std``
  buffers, saved in every checkpoint so ``predict`` applies it);
* optional dropout after the deepest stage and after every decoder block (MC dropout).

Pretrained weights come from smp's own download (``encoder_weights: imagenet``, where the
machine is online) or from a local file (``encoder_weights_path``) read with
``safetensors`` or ``torch.load(weights_only=True)``; nothing is downloaded otherwise.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edue.nets.backbones import Backbone, BackboneError, BackboneSpec

#: ImageNet statistics of inputs in [0, 1] (torchvision's and timm's default pretraining).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EXTRA_HINT = "install it with: pip install 'edue[backbones]'"


def import_smp() -> Any:
    """segmentation_models_pytorch, or one clear error naming the extra."""
    try:
        return importlib.import_module("segmentation_models_pytorch")
    except ImportError as error:
        raise BackboneError(
            f"model.backbone: smp needs segmentation-models-pytorch ({error}); {EXTRA_HINT}"
        ) from None
    except Exception as error:  # a broken torchvision raises RuntimeError at import
        raise BackboneError(
            f"model.backbone: smp: segmentation-models-pytorch does not import here ({error}); "
            "torchvision must be the build that matches the installed torch"
        ) from None


def pretraining_statistics(encoder: str, channels: int) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of the inputs ``encoder`` was pretrained on.

    Taken from timm's pretrained configuration where timm knows the encoder (``tu-…``
    names and timm-equivalent ones; read locally, no download), else ImageNet's, which
    torchvision's and smp's own ImageNet weights use. For ``channels != 3`` the RGB
    statistics are averaged to one value per channel (the first convolution's weights
    are summed or spread the same way when loaded).
    """
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    try:
        timm = importlib.import_module("timm")
        name = encoder.removeprefix("tu-")
        if timm.models.is_model(name):
            cfg = timm.models.get_pretrained_cfg(name)
            if cfg is not None and len(cfg.mean) == 3:
                mean, std = [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    except Exception:  # timm absent or without a config for this name: ImageNet's
        pass
    if channels != 3:
        mean = [sum(mean) / 3] * channels
        std = [sum(std) / 3] * channels
    return mean, std


class _DropoutAfter(nn.Module):
    """A block followed by channel dropout (keeps the block's call signature)."""

    def __init__(self, block: nn.Module, p: float) -> None:
        super().__init__()
        self.block = block
        self.drop = nn.Dropout2d(p)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.drop(self.block(*args, **kwargs))


class SmpBackbone(Backbone):
    """A 2D smp model whose encoder stages and decoder blocks are tappable by name.

    Args:
        spec: ``kind == "smp"``; uses ``arch``, ``encoder``, ``encoder_depth``,
            ``decoder_channels``, ``encoder_weights``, ``encoder_weights_path``,
            ``load_weights``, ``input_mean``/``input_std``, ``in_channels``,
            ``out_channels`` and ``dropout``.

    Shapes:
        input ``[B, C, H, W]`` (any size; smp's decoders resize to the skips);
        output ``[B, K, H, W]`` logits, or the last decoder features when
        ``out_channels == 0``.
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        if spec.spatial_dims != 2:
            raise BackboneError(
                "model.backbone: smp networks are 2D; use dynunet or unet for 3D data"
            )
        smp = import_smp()
        kwargs: dict[str, Any] = {"encoder_depth": spec.encoder_depth}
        if spec.decoder_channels is not None:
            kwargs["decoder_channels"] = list(spec.decoder_channels)
        weights = spec.encoder_weights if spec.load_weights else None
        try:
            model = smp.create_model(
                spec.arch,
                encoder_name=spec.encoder,
                encoder_weights=weights,
                in_channels=spec.in_channels,
                classes=max(spec.out_channels, 1),
                **kwargs,
            )
        except (KeyError, ValueError, TypeError) as error:
            message = str(error).strip("'\"")
            raise BackboneError(
                f"model: smp cannot build arch '{spec.arch}' with encoder '{spec.encoder}': "
                f"{message}"
            ) from None
        except OSError as error:  # a download that failed (offline machine)
            raise BackboneError(
                f"model.encoder_weights: {weights} weights of '{spec.encoder}' could not be "
                f"downloaded ({type(error).__name__}); copy them to this machine and set "
                "model.encoder_weights_path instead"
            ) from None
        self.spatial_dims = 2
        self.in_channels = spec.in_channels
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.head = model.segmentation_head if spec.out_channels else None
        self.depth = spec.encoder_depth
        self.taps = nn.ModuleList(nn.Identity() for _ in range(self.depth))
        if spec.dropout > 0:
            self.taps[-1] = nn.Dropout2d(spec.dropout)
        blocks = getattr(self.decoder, "blocks", None)
        self._block_list = isinstance(blocks, nn.ModuleList)
        if spec.dropout > 0:
            if self._block_list:
                for j, block in enumerate(list(blocks)):  # type: ignore[arg-type]
                    blocks[j] = _DropoutAfter(block, spec.dropout)  # type: ignore[index]
            else:
                self.decoder = _DropoutAfter(self.decoder, spec.dropout)
        if spec.load_weights and spec.encoder_weights_path:
            load_encoder_file(self.encoder, Path(spec.encoder_weights_path), spec.in_channels)
        pretrained = spec.load_weights and bool(spec.encoder_weights or spec.encoder_weights_path)
        mean, std = pretraining_statistics(spec.encoder, spec.in_channels)
        if spec.input_mean is not None:
            mean = list(spec.input_mean)
        elif not pretrained:
            mean = [0.0] * spec.in_channels
        if spec.input_std is not None:
            std = list(spec.input_std)
        elif not pretrained:
            std = [1.0] * spec.in_channels
        if len(mean) != spec.in_channels or len(std) != spec.in_channels:
            raise BackboneError(
                f"model.input_mean/input_std: need {spec.in_channels} values (one per image "
                f"channel), got {len(mean)} and {len(std)}"
            )
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1))

    @property
    def encoder_names(self) -> list[str]:
        """``encoder.0`` (half resolution) … ``encoder.{depth-1}`` (deepest)."""
        return [f"encoder.{i}" for i in range(self.depth)]

    @property
    def decoder_names(self) -> list[str]:
        """``decoder.0`` … coarse to fine (one name for a decoder that is not a block list)."""
        if self._block_list:
            return [f"decoder.{j}" for j in range(len(self.decoder.blocks))]  # type: ignore[arg-type]
        return ["decoder.0"]

    @property
    def min_size_divisor(self) -> int:
        """Input sizes should be multiples of this (the encoder's output stride)."""
        return int(2**self.depth)

    @torch.no_grad()
    def encoder_stage_parameters(self, x: torch.Tensor) -> list[int]:
        """Parameters of each encoder stage (the taps themselves hold none).

        Each parameterised layer of the encoder counts for the stage whose output has
        the spatial size of the layer's output (a stage's first, down-sampling layer
        included); layers at the input's size count for the first stage.

        Args:
            x: a probe input ``[1, C, H, W]``.
        """
        sizes = [tuple(f.shape[2:]) for f in self.encoder(x)[1:]]
        counts = [0] * len(sizes)
        handles = []

        def count(module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                size = tuple(output.shape[2:])
                stage = sizes.index(size) if size in sizes else 0
                counts[stage] += sum(p.numel() for p in module.parameters(recurse=False))

        for module in self.encoder.modules():
            if any(True for _ in module.parameters(recurse=False)):
                handles.append(module.register_forward_hook(count))
        self.encoder(x)
        for handle in handles:
            handle.remove()
        return counts

    def tap_modules(self) -> dict[str, nn.Module]:
        """The tappable blocks by name."""
        taps: dict[str, nn.Module] = dict(zip(self.encoder_names, self.taps, strict=True))
        if self._block_list:
            taps.update(zip(self.decoder_names, self.decoder.blocks, strict=True))  # type: ignore[arg-type]
        else:
            taps["decoder.0"] = self.decoder
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) / self.input_std  # type: ignore[operator]
        features = self.encoder(x)
        features = [features[0]] + [tap(f) for tap, f in zip(self.taps, features[1:], strict=True)]
        out = self.decoder(features)
        return self.head(out) if self.head is not None else out


def load_encoder_file(encoder: nn.Module, path: Path, in_channels: int) -> None:
    """Load encoder weights from a local file, safely.

    Accepts ``.safetensors`` files and PyTorch files of tensors only (read with
    ``weights_only=True``): an encoder state dict, optionally nested under ``state_dict``
    or ``model`` and prefixed ``encoder.`` or ``model.encoder.``; a classifier's
    ``fc.``/``classifier.``/``head.`` tensors are ignored (torchvision and timm ImageNet
    files load as they are). A first convolution pretrained on 3 channels is adapted to
    ``in_channels`` the way smp does it (summed for 1 channel, spread for others).

    Raises:
        BackboneError: missing or unreadable file, or tensors that do not fit the encoder.
    """
    where = f"model.encoder_weights_path: {path}"
    if not path.is_file():
        raise BackboneError(f"{where}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneError(
            f"{where}: not a readable weights file ({type(error).__name__}: {error}); "
            "expected .safetensors or a PyTorch file of tensors"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{where}: expected a dictionary of tensors (a state dict)")
    state = _strip_prefixes(state)
    own = encoder.state_dict()
    for name, tensor in list(state.items()):
        mine = own.get(name)
        adapt = mine is not None and tensor.ndim == mine.ndim == 4 and tensor.shape[1] == 3
        if adapt and tensor.shape[1] != mine.shape[1]:  # type: ignore[union-attr]
            state[name] = _adapt_first_conv(tensor, in_channels)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if names:
                parts.append(f"{len(names)} {label} (first: {names[0]})")
        raise BackboneError(
            f"{where}: does not fit the encoder of {len(own)} tensors: {', '.join(parts)}"
        )
    encoder.load_state_dict(state)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        for prefix in ("module.", "model.", "encoder."):
            name = name.removeprefix(prefix)
        if name.split(".")[0] in ("fc", "classifier", "head", "last_linear"):
            continue
        out[name] = tensor
    return out


def _adapt_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / channels)
