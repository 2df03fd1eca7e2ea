"""``edue export``: a trained one-pass method as one ONNX or TorchScript graph.

The exported graph takes an image batch ``[B, C, *sp]`` and returns, in one pass, the
member probabilities ``[B, S, K, *sp]``, the segmentation probability ``[B, K, *sp]``
and the variance across members ``[B, K, *sp]``: the ``members``, ``mean`` and
``variance`` of :class:`~edue.prediction.Prediction`, as
:class:`~edue.engine.inference.predictor.Predictor` computes them for one whole-image
pass. A ``model.json`` sidecar beside the graph says what the model expects and gives.

Methods that draw their members at prediction (MC dropout, SSN, the Probabilistic
U-Net: ``method.sampled``) are refused: their members come from a seeded generator the
graph cannot carry faithfully.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edue.engine.inference.features import encoder_block_names, tapped_modules
from edue.errors import ConfigError
from edue.methods.base import Method
from edue.variance import leading_variance

#: the graph's input and output names
INPUT_NAME = "image"
OUTPUT_NAMES = ("members", "mean", "variance")
#: the ONNX graph's fourth output: the encoder blocks' pooled outputs ``[B, ΣC]``
FEATURES_NAME = "features"
#: the export formats and the files they write
FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
#: the sidecar's file name
SIDECAR = "model.json"
#: what the exported graph does to the image before the network: the Predictor's own
#: handling of a whole-image pass, nothing more
INPUT_HANDLING = (
    "the graph takes float32 intensities as edue's Predictor does (image files are read "
    "as float32, 8-bit and 16-bit 2D files divided by 255 and 65535, NIfTI and .npy "
    "values kept); inside the graph the image is zero-padded at the end of each spatial "
    "axis to a multiple of size_divisor and the outputs cropped back"
)
_INSTALL = "pip install 'edue[onnx]'"


class ExportWrapper(nn.Module):
    """A loaded method as one graph: image in, members, mean and variance out.

    It does what :meth:`~edue.engine.inference.predictor.Predictor.padded_members` and
    :meth:`~edue.engine.inference.predictor.Predictor.prediction` do for one whole-image
    pass: zero-pad the image at the end of each spatial axis to a multiple of the
    network's downsampling factor, predict the stack, crop it back, and split it into
    the members and the segmentation (:meth:`~edue.methods.Method.split_stack`).

    Args:
        method: a one-pass method with its weights loaded (the wrapper and the method
            are put in eval mode).
        size_divisor: the input sizes the network needs multiples of.
        feature_modules: names of modules whose pooled outputs are a fourth output
            ``features`` (the ONNX export gives the encoder blocks', which the
            distribution-shift gate of ``edue calibrate`` reads); hooks are registered
            on them for the wrapper's life.

    Shapes:
        input ``image`` ``[B, C, *sp]`` float32; outputs ``members`` ``[B, S, K, *sp]``,
        ``mean`` ``[B, K, *sp]`` (the method's segmentation probability, else the
        members' mean) and ``variance`` ``[B, K, *sp]`` (unbiased (S − 1) variance across
        members, :func:`~edue.variance.leading_variance`; zeros for ``S == 1``); with
        ``feature_modules`` also ``features`` ``[B, ΣC]``.
    """

    def __init__(
        self, method: Method, size_divisor: int, feature_modules: Sequence[str] = ()
    ) -> None:
        super().__init__()
        self.method = method
        self.size_divisor = int(size_divisor)
        self.feature_modules = tuple(feature_modules)
        self._kept: list[list[torch.Tensor]] = [[] for _ in self.feature_modules]
        self.feature_channels: list[int] = []  # per module, known after a pass
        for k, module in enumerate(tapped_modules(method, self.feature_modules)):
            module.register_forward_hook(self._keeper(k))
        self.eval()  # the exporter restores the wrapper's mode, and the method's with it

    def _keeper(self, k: int):  # type: ignore[no-untyped-def]
        def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self._kept[k].append(output.float().mean(tuple(range(2, output.ndim))))

        return keep

    def _features(self) -> torch.Tensor:
        """The pooled features of the pass ``[B, ΣC]``: each module's channel means over
        space (averaged over its calls), as :class:`FeatureTap` reads them."""
        kept, self._kept = self._kept, [[] for _ in self.feature_modules]
        pooled = [torch.stack(calls).mean(0) for calls in kept]
        self.feature_channels = [int(p.shape[1]) for p in pooled]
        return torch.cat(pooled, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Members ``[B, S, K, *sp]``, mean ``[B, K, *sp]`` and variance ``[B, K, *sp]`` of
        ``image`` ``[B, C, *sp]``, and with ``feature_modules`` their pooled outputs
        ``[B, ΣC]`` (the distribution-shift gate's input)."""
        spatial = image.shape[2:]
        pads: list[Any] = []
        for size in reversed(spatial):
            pads += [0, (self.size_divisor - size % self.size_divisor) % self.size_divisor]
        padded = nn.functional.pad(image.float(), pads)
        self._kept = [[] for _ in self.feature_modules]
        stack = self.method.members_from_logits(self.method(padded)).float()
        crop: tuple[Any, ...] = (..., *(slice(0, s) for s in spatial))
        stack = stack[crop]  # [S', B, K, *sp]
        members, segmentation = self.method.split_stack(stack)
        mean = members.mean(0) if segmentation is None else segmentation
        if self.method.n_members < 2:
            variance = torch.zeros_like(mean)
        else:
            variance = leading_variance(members)
        if self.feature_modules:
            return members.transpose(0, 1), mean, variance, self._features()
        return members.transpose(0, 1), mean, variance


@contextlib.contextmanager
def _forward_only() -> Iterator[None]:
    """Trace the forward values alone: the gradient scaling of EDUE's separate
    uncertainty heads (:func:`edue.nets.heads.scale_gradient`, an autograd function
    that returns its input unchanged) is replaced by the identity while tracing, and the
    tracer's warnings about the model's fixed sizes (its member count) are silenced."""
    from edue.nets import heads

    original = heads.scale_gradient
    heads.scale_gradient = lambda x, scale: x  # type: ignore[assignment]  # noqa: ARG005
    try:
        with warnings.catch_warnings():
            # the member count and the model's own constants are fixed per model
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        heads.scale_gradient = original


def check_exportable(method: Method) -> None:
    """Refuse, in one line, a method the graph cannot reproduce faithfully.

    Raises:
        ConfigError: the method draws its members at prediction (``method.sampled``).
    """
    if getattr(method, "sampled", False):
        raise ConfigError(
            f"{method.name} samples its members at prediction from a seeded generator; "
            "export supports one-pass deterministic methods (edue, plain, "
            "deep_supervision, layer_ensembles, deep_ensemble)"
        )


def _require(module: str, purpose: str) -> None:
    """Raise a one-line :class:`ConfigError` naming the extra when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{purpose} needs the '{module}' package: {_INSTALL}")


def load_for_export(checkpoint: str | Path, features: bool = False) -> tuple[Any, ExportWrapper]:
    """The predictor of ``checkpoint`` (on the CPU) and its :class:`ExportWrapper`
    (with ``features``: giving the pooled outputs of the encoder blocks too).

    Raises:
        CheckpointError: missing, unsafe, corrupt or incompatible checkpoint.
        ConfigError: a method that cannot be exported (:func:`check_exportable`).
    """
    from edue.engine.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    check_exportable(predictor.method)
    blocks = encoder_block_names(predictor.method) if features else []
    return predictor, ExportWrapper(predictor.method, predictor.size_divisor, blocks)


def example_input(predictor: Any, batch: int = 2) -> torch.Tensor:
    """A random traced input ``[batch, C, *sp]`` at the training size (or two divisors
    above the network's downsampling factor a side)."""
    size = predictor.grid.size
    side = 4 * int(predictor.size_divisor)
    spatial = tuple(size) if size is not None else (side,) * predictor.spatial_dims
    shape = (batch, predictor.in_channels, *spatial)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def sidecar(predictor: Any, fmt: str, opset: int | None = None) -> dict[str, Any]:
    """The content of ``model.json``: what the exported model expects and gives."""
    from edue._version import __version__

    dims = predictor.spatial_dims
    sp = ["H", "W"] if dims == 2 else ["D", "H", "W"]
    method = predictor.method
    return {
        "format": fmt,
        "file": FORMATS[fmt],
        "edue_version": __version__,
        "opset": opset,
        "method": method.name,
        "members": int(method.n_members),
        # the mean output is the method's own segmentation head, not the members' mean
        "separate_segmentation": int(method.stack_size) > int(method.n_members),
        "structures": list(predictor.structures),
        "in_channels": predictor.in_channels,
        "spatial_dims": dims,
        "size_divisor": int(predictor.size_divisor),
        "input": {"name": INPUT_NAME, "shape": ["B", "C", *sp], "dtype": "float32"},
        "outputs": {
            "members": ["B", "S", "K", *sp],
            "mean": ["B", "K", *sp],
            "variance": ["B", "K", *sp],
        },
        "variance": "unbiased (S - 1) variance across members; zeros for one member",
        "score": method.score,
        "uncertainty_note": (
            "edue's uncertainty map for this score: 'variance' is the variance output "
            "(mean * (1 - mean) for a single member), 'bernoulli' mean * (1 - mean), "
            "'combined' their sum"
        ),
        "input_normalisation": input_normalisation(method),
        "input_handling": INPUT_HANDLING,
        "input_size": None if predictor.grid.size is None else list(predictor.grid.size),
        "training_grid": predictor.grid.to_dict(),
        "training_grid_note": (
            "edue predict resamples inputs onto this grid before the graph and the outputs "
            "back: 2D images to 'size' when set; volumes whose spacing lies outside "
            "[0.9 * spacing_min, 1.1 * spacing_max] to 'spacing' (see docs/deploy.md)"
        ),
        "roi_size": None if predictor.roi_size() is None else list(predictor.roi_size()),
        "input_size_note": (
            "resize 2D images to input_size (bilinear) before the graph and the outputs "
            "back, as edue's Predictor does"
            if predictor.grid.size is not None
            else "any size: the graph takes the image as it is"
        ),
        "roi_note": (
            "the graph predicts the whole image in one pass; edue's Predictor predicts "
            "images larger than roi_size window by window"
        ),
        "weights_sha256": predictor.weights_sha256,
    }


def input_normalisation(method: Method) -> dict[str, Any]:
    """The intensity normalisation inside the network, which the graph carries: the
    pretrained encoder's ``(x - mean) / std`` per channel (``model.input_mean`` /
    ``input_std`` of ``model.backbone: smp``), else none."""
    for module in method.modules():
        mean, std = getattr(module, "input_mean", None), getattr(module, "input_std", None)
        if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
            return {
                "kind": "(x - mean) / std per channel, inside the graph",
                "mean": [float(v) for v in mean.flatten()],
                "std": [float(v) for v in std.flatten()],
            }
    return {"kind": "none", "mean": None, "std": None}


def _write_sidecar(out_dir: Path, content: dict[str, Any]) -> None:
    (out_dir / SIDECAR).write_text(json.dumps(content, indent=2) + "\n")


def _copy_calibration(checkpoint: str | Path, out_dir: Path) -> None:
    """The checkpoint's ``calibration.json`` (``edue calibrate``) and its gate's arrays,
    when it has them, go beside the exported model: ``edue predict model.onnx`` then
    decides referrals as with the checkpoint (the calibration names the weights it was
    fitted for)."""
    from edue.engine.referral.calibration import calibration_path, gate_file_for

    found = calibration_path(checkpoint)
    if found.is_file():
        for path in (gate_file_for(found), found):  # the gate's arrays, then their index
            if path.is_file():
                shutil.copyfile(path, out_dir / path.name)


def write_onnx(wrapper: ExportWrapper, example: torch.Tensor, path: Path, opset: int = 17) -> None:
    """Trace ``wrapper`` on ``example`` ``[B, C, *sp]`` into the ONNX file ``path``, with
    the batch and spatial axes dynamic (input ``image``; outputs ``members``, ``mean``,
    ``variance``, and ``features`` when the wrapper has feature modules)."""
    names = ["height", "width"] if example.ndim == 4 else ["depth", "height", "width"]
    spatial = {i + 2: name for i, name in enumerate(names)}
    axes = {
        INPUT_NAME: {0: "batch", **spatial},
        "members": {0: "batch", **{i + 1: n for i, n in spatial.items()}},
        "mean": {0: "batch", **spatial},
        "variance": {0: "batch", **spatial},
    }
    outputs = list(OUTPUT_NAMES)
    if wrapper.feature_modules:
        outputs.append(FEATURES_NAME)
        axes[FEATURES_NAME] = {0: "batch"}
    with torch.no_grad(), _forward_only():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=axes,  # type: ignore[arg-type]
            opset_version=opset,
            dynamo=False,
        )


def write_torchscript(wrapper: ExportWrapper, example: torch.Tensor, path: Path) -> None:
    """Trace ``wrapper`` on ``example`` ``[B, C, *sp]`` into the TorchScript file ``path``."""
    with torch.no_grad(), _forward_only():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    traced.save(str(path))


def export_onnx(checkpoint: str | Path, out_dir: str | Path, opset: int = 17) -> Path:
    """Export a checkpoint's method to ``out_dir/model.onnx`` (and ``model.json``).

    The batch and spatial axes of the input ``image`` ``[B, C, *sp]`` and of the outputs
    ``members`` ``[B, S, K, *sp]``, ``mean`` and ``variance`` ``[B, K, *sp]`` are dynamic.

    Args:
        checkpoint: a checkpoint file or run folder.
        out_dir: the folder to write (made when missing).
        opset: the ONNX opset.

    Returns:
        The path of ``model.onnx``.

    Raises:
        ConfigError: ``onnx`` is not installed, or the method cannot be exported.
        CheckpointError: missing, unsafe, corrupt or incompatible checkpoint.
    """
    _require("onnx", "the ONNX export")
    predictor, wrapper = load_for_export(checkpoint, features=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FORMATS["onnx"]
    example = example_input(predictor)
    write_onnx(wrapper, example, path, opset)
    content = sidecar(predictor, "onnx", opset)
    with torch.no_grad(), _forward_only():
        wrapper(example[:1])
    content["features"] = {
        "output": FEATURES_NAME,
        "modules": list(wrapper.feature_modules),
        "channels": wrapper.feature_channels,
        "note": "each module's output averaged over space, concatenated in this order; "
        "the distribution-shift gate of edue calibrate reads some of them",
    }
    _write_sidecar(out, content)
    _copy_calibration(checkpoint, out)
    return path


def export_torchscript(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Export a checkpoint's method to ``out_dir/model.ts`` (and ``model.json``), traced.

    Args:
        checkpoint: a checkpoint file or run folder.
        out_dir: the folder to write (made when missing).

    Returns:
        The path of ``model.ts`` (load it with ``torch.jit.load``; it returns
        ``(members [B, S, K, *sp], mean [B, K, *sp], variance [B, K, *sp])``).

    Raises:
        ConfigError: the method cannot be exported.
        CheckpointError: missing, unsafe, corrupt or incompatible checkpoint.
    """
    predictor, wrapper = load_for_export(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FORMATS["torchscript"]
    write_torchscript(wrapper, example_input(predictor), path)
    _write_sidecar(out, sidecar(predictor, "torchscript"))
    _copy_calibration(checkpoint, out)
    return path


def export_model(checkpoint: str | Path, out_dir: str | Path, fmt: str) -> Path:
    """:func:`export_onnx` or :func:`export_torchscript` by name (``onnx``, ``torchscript``;
    MONAI bundles: :func:`edue.engine.predict.bundle.export_bundle`).

    Raises:
        ConfigError: an unknown format, a missing extra or a method that cannot be exported.
    """
    if fmt == "onnx":
        return export_onnx(checkpoint, out_dir)
    if fmt == "torchscript":
        return export_torchscript(checkpoint, out_dir)
    raise ConfigError(f"export format {fmt!r}: expected one of {sorted(FORMATS)}")


def onnx_session(path: str | Path) -> Any:
    """An ONNX Runtime session on the CPU for ``model.onnx``.

    Raises:
        ConfigError: ``onnxruntime`` is not installed.
    """
    _require("onnxruntime", "running an ONNX model")
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
