"""A trained one-pass method as a MONAI bundle that runs with ``python -m monai.bundle run``.

The bundle is a folder that MONAI's bundle tools read (the layout of the MONAI bundle
specification)::

    configs/metadata.json   versions, task, licence placeholder, network_data_format,
                            and the model's edue facts (structures, members, score, grid)
    configs/inference.json  read the images, resample them, predict, resample back, write
                            the mean and uncertainty maps (MONAI's SupervisedEvaluator)
    models/model.ts         the network as TorchScript (edue is not needed to run it)
    models/model.json       edue's sidecar (what ``edue export`` writes beside a graph)
    docs/README.md          what goes in and out, how to run it, the licence placeholder
    LICENSE                 a placeholder the model's owner replaces

``models/model.ts`` (:class:`BundleNet`) maps an image ``[B, C, *sp]`` to the mean
``[B, K, *sp]`` and the uncertainty ``[B, K, *sp]`` concatenated along the channels
(``[B, 2K, *sp]``), as ``edue predict`` computes them for one whole-image pass. The
bundle's inference does not call it whole: it predicts the *member stack* (method
:meth:`BundleNet.stack`), window by window where edue's Predictor would, resamples the
stack back onto the input's grid, and only then reduces it to the mean and the
uncertainty (:meth:`BundleNet.reduce`) — the order of
:class:`~edue.engine.inference.predictor.Predictor`, so that the variance across members
is that of the blended and resampled members, not a blend of variances.

The training grid (:mod:`edue.engine.inference.grid`): a 2D model trained on images of
one size resizes every input to it inside ``model.ts`` (bilinear, antialiased when
shrinking) and the stack back, exactly as the Predictor does; a 3D model trained on
volumes of known spacing resamples every volume to the median training spacing
(MONAI ``Spacingd``) and the stack back (``Invertd``) — ``edue predict`` resamples only
volumes whose spacing lies outside the training range, and with its own (trilinear
resize) interpolation.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edue.engine.predict.bundle_readme import readme
from edue.engine.predict.export import (
    ExportWrapper,
    _forward_only,
    example_input,
    load_for_export,
    sidecar,
)
from edue.errors import ConfigError

#: the export format name of a MONAI bundle
BUNDLE_FORMAT = "monai-bundle"
#: the version of the bundle written (its own, not edue's)
BUNDLE_VERSION = "0.1.0"
#: what stands in the bundle's licence fields until the model's owner sets them
LICENCE_PLACEHOLDER = "LICENSE: set by the model's owner"
#: the files of a bundle, relative to its root
MODEL_FILE = "models/model.ts"
SIDECAR_FILE = "models/model.json"
METADATA_FILE = "configs/metadata.json"
INFERENCE_FILE = "configs/inference.json"
README_FILE = "docs/README.md"
LICENSE_FILE = "LICENSE"
#: the MONAI metadata schema the metadata follows (``monai.bundle verify_metadata``)
META_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
    "meta_schema_20220324.json"
)
#: the image files the inference reads from ``dataset_dir``, by spatial dimensions
IMAGE_PATTERNS = {2: "*.png", 3: "*.nii.gz"}
#: the packages ``python -m monai.bundle run`` needs besides MONAI, PyTorch and NumPy
#: (``SupervisedEvaluator`` runs on pytorch-ignite; MONAI's command line on fire)
RUN_PACKAGES = {
    2: ("pytorch-ignite", "fire", "pillow", "nibabel"),
    3: ("pytorch-ignite", "fire", "nibabel"),
}
#: PIL modes converted to RGB on reading, as edue's reader does (:func:`edue.io.read_array`)
_PIL_TO_RGB = ("P", "CMYK", "YCbCr", "LAB", "HSV")


class _StackNet(nn.Module):
    """:class:`~edue.engine.predict.export.ExportWrapper` giving the member stack as
    channels: image ``[B, C, *sp]`` → ``[B, S'·K, *sp]``, the ``S`` members' ``K``
    probabilities (member-major), then the segmentation ``[B, K]`` where the method gives
    it apart from the members (``S' = S + 1``). Traced once, at any size after."""

    def __init__(self, wrapper: ExportWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.apart = wrapper.method.stack_size > wrapper.method.n_members

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        members, mean, _ = self.wrapper(image)  # [B, S, K, *sp], [B, K, *sp]
        stack = members.flatten(1, 2)
        return torch.cat([stack, mean], 1) if self.apart else stack


class BundleNet(nn.Module):
    """The bundle's ``model.ts``: the traced member stack and the reduction to the mean
    and the uncertainty, scripted so the 2D resizing and the score follow the input.

    Args:
        net: the traced :class:`_StackNet`.
        members: ``S``, the members of the method.
        structures: ``K``.
        apart: whether the stack ends with a segmentation ``[K]`` of its own.
        score: the uncertainty map (:data:`edue.prediction.SCORES`).
        size: 2D: the training size ``[H, W]`` every input is resized to (empty: none).

    Shapes:
        ``forward``: image ``[B, C, *sp]`` float32 → ``[B, 2K, *sp]``: the mean of each
        structure, then its uncertainty. ``stack``: image → ``[B, S'·K, *sp]``.
        ``reduce``: stack ``[B, S'·K, *sp]`` → ``[B, 2K, *sp]``.
    """

    def __init__(
        self,
        net: nn.Module,
        members: int,
        structures: int,
        apart: bool,
        score: str,
        size: list[int],
    ) -> None:
        super().__init__()
        self.net = net
        self.members = int(members)
        self.structures = int(structures)
        self.apart = bool(apart)
        self.score = str(score)
        self.resizes = len(size) > 0
        self.size = [int(s) for s in size] if len(size) > 0 else [0, 0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The mean and the uncertainty ``[B, 2K, *sp]`` of one whole-image pass."""
        return self.reduce(self.stack(image))

    @torch.jit.export
    def stack(self, image: torch.Tensor) -> torch.Tensor:
        """The member stack ``[B, S'·K, *sp]`` of ``image`` ``[B, C, *sp]``: 2D images
        are resized to the training size and the stack back, as edue's Predictor does."""
        shape = list(image.shape[2:])
        if not self.resizes or shape == self.size:
            return self.net(image.float())
        stack = self.net(_resize(image.float(), self.size))
        return _resize(stack, shape).clamp(0, 1)

    @torch.jit.export
    def reduce(self, stack: torch.Tensor) -> torch.Tensor:
        """The mean and the uncertainty ``[B, 2K, *sp]`` of a stack ``[B, S'·K, *sp]``,
        as :class:`~edue.prediction.Prediction` derives them (``mean``, ``uncertainty``)."""
        s, k = self.members, self.structures
        stack = stack.clamp(0, 1)
        shape = list(stack.shape[2:])
        members = stack[:, : s * k].reshape([stack.shape[0], s, k] + shape)
        mean = stack[:, s * k :] if self.apart else members.mean(1)
        bernoulli = mean * (1 - mean)
        if self.score == "bernoulli" or s < 2:
            return torch.cat([mean, bernoulli], 1)
        centred = members - members.mean(1, keepdim=True)
        variance = centred.square().sum(1) / (s - 1)
        if self.score == "combined":
            variance = variance + bernoulli
        return torch.cat([mean, variance], 1)


def _resize(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` resized to ``size`` as :func:`edue.data.transforms.resize_image`
    does (bilinear, corners not aligned, antialiased when shrinking an axis)."""
    shrink = False
    for axis in range(len(size)):  # TorchScript: no zip(strict=)
        if size[axis] < x.shape[axis + 2]:
            shrink = True
    return nn.functional.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=shrink
    )


def bundle_net(predictor: Any, wrapper: ExportWrapper) -> torch.jit.ScriptModule:
    """The scripted :class:`BundleNet` of a loaded predictor and its export wrapper."""
    stack_net = _StackNet(wrapper).eval()
    grid = training_grid(predictor)
    size = list(grid["size"] or []) if predictor.spatial_dims == 2 else []
    method = predictor.method
    with torch.no_grad(), _forward_only():
        traced = torch.jit.trace(stack_net, (example_input(predictor),), check_trace=False)
        net = BundleNet(
            traced,
            method.n_members,
            len(predictor.structures),
            stack_net.apart,
            method.score,
            size,
        )
        return torch.jit.script(net.eval())


def training_grid(predictor: Any) -> dict[str, Any]:
    """The predictor's training grid as JSON-ready lists (:meth:`TrainingGrid.to_dict`)."""
    from edue.engine.inference.grid import TrainingGrid

    grid = TrainingGrid.from_dict(predictor.data_info.get("grid"), predictor.config.data.size)
    return grid.to_dict()


def roi_size(predictor: Any) -> list[int] | None:
    """The sliding window of the bundle's inference: the Predictor's
    (:meth:`~edue.engine.inference.predictor.Predictor.roi_size`), except for a 2D model
    with a training size, which ``model.ts`` predicts whole at that size."""
    roi = predictor.roi_size()
    if roi is None or (predictor.spatial_dims == 2 and training_grid(predictor)["size"]):
        return None
    return [int(r) for r in roi]


def _preprocessing(predictor: Any) -> list[dict[str, Any]]:
    """The transforms from an image file to the network's float32 input ``[C, *sp]``:
    edue's reading (:func:`edue.io.read_image`) and the 3D resampling to the training
    spacing."""
    if predictor.spatial_dims == 2:
        load: dict[str, Any] = {
            "_target_": "LoadImaged",
            "keys": "image",
            "reader": "PILReader",
            "reverse_indexing": False,  # rows first, as edue (and PIL) read them
            "converter": f"$lambda im: im.convert('RGB') if im.mode in {_PIL_TO_RGB} else im",
            "dtype": None,  # the file's dtype decides the scaling below
            "image_only": True,
        }
        scale = {
            "_target_": "Lambdad",
            "keys": "image",
            # as edue.io.float_intensities: 8-bit / 255, 16-bit / 65535 (MONAI reads
            # 16-bit files as int32, so their PIL mode tells them apart), others kept
            "func": "$lambda x: x.float() / (255.0 if x.dtype == torch.uint8 else 65535.0 "
            "if str(x.meta.get('mode', '')).startswith('I;16') else 1.0)",
        }
        steps = [load, {"_target_": "EnsureChannelFirstd", "keys": "image"}, scale]
    else:
        steps = [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
        ]
        spacing = training_grid(predictor)["spacing"]
        if spacing is not None:
            steps.append(
                {
                    "_target_": "Spacingd",
                    "keys": "image",
                    "pixdim": "@training_spacing",
                    "mode": "bilinear",
                }
            )
    steps.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return steps


def _save(key: str, postfix: str) -> dict[str, Any]:
    """``SaveImaged`` of ``key`` as float32 NIfTI ``<name>_<postfix>.nii.gz`` in ``output_dir``."""
    return {
        "_target_": "SaveImaged",
        "keys": key,
        "output_dir": "@output_dir",
        "output_postfix": postfix,
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32",
        "separate_folder": False,
        "resample": False,
        "print_log": False,
    }


def _postprocessing() -> list[dict[str, Any]]:
    """The transforms from the predicted stack to the written maps: back onto the
    input's grid, reduced to the mean and the uncertainty, split, saved as NIfTI."""
    return [
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": False,
            "to_tensor": True,
        },
        {"_target_": "Lambdad", "keys": "pred", "func": "@reduce"},
        {
            "_target_": "SplitDimd",
            "keys": "pred",
            "output_postfixes": ["mean", "uncertainty"],
            "dim": 0,
            "keepdim": False,
        },
        _save("pred_mean", "mean"),
        _save("pred_uncertainty", "uncertainty"),
    ]


#: the stack predicted window by window where the Predictor would (an image larger than
#: the window on some axis), else in one whole-image pass
_INFERER = (
    "$lambda inputs, net: @sliding_window(inputs, net.stack) if @roi_size and "
    "any(s > r for s, r in zip(inputs.shape[2:], @roi_size)) else net.stack(inputs)"
)
#: one case's stack ``[S'·K, *sp]`` → ``[2, K, *sp]`` (mean, uncertainty), meta kept
_REDUCE = (
    "$lambda stack: monai.data.MetaTensor(@network.reduce(stack.as_tensor()[None])[0]"
    ".unflatten(0, (2, @n_structures)), meta=stack.meta)"
)


def inference_config(predictor: Any) -> dict[str, Any]:
    """The content of ``configs/inference.json`` (MONAI bundle config syntax)."""
    infer = predictor.config.infer
    spacing = training_grid(predictor)["spacing"] if predictor.spatial_dims == 3 else None
    config: dict[str, Any] = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "image_pattern": IMAGE_PATTERNS[predictor.spatial_dims],
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, @image_pattern))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": "$@network_def.to(@device).eval()",
        "n_structures": len(predictor.structures),
        "roi_size": roi_size(predictor),
        "sw_batch_size": int(infer.sw_batch_size),
        "overlap": float(infer.overlap),
        "blend_mode": str(infer.blend),
    }
    if spacing is not None:
        config["training_spacing"] = [float(s) for s in spacing]
    config["preprocessing"] = {"_target_": "Compose", "transforms": _preprocessing(predictor)}
    return config | copy.deepcopy(_WORKFLOW)


#: the rest of the inference config: the data, the inferer, the postprocessing and the
#: evaluator that runs them (as MONAI's model-zoo bundles do)
_WORKFLOW: dict[str, Any] = {
    "dataset": {
        "_target_": "Dataset",
        "data": "$[{'image': i} for i in @datalist]",
        "transform": "@preprocessing",
    },
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
    },
    "sliding_window": {
        "_target_": "SlidingWindowInferer",
        "roi_size": "@roi_size",
        "sw_batch_size": "@sw_batch_size",
        "overlap": "@overlap",
        "mode": "@blend_mode",
    },
    "inferer": _INFERER,
    "reduce": _REDUCE,
    "postprocessing": {"_target_": "Compose", "transforms": _postprocessing()},
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": False,
    },
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@evaluator.run()"],
    "finalize": [],
}


def _versions(spatial_dims: int) -> dict[str, Any]:
    """MONAI's version fields: MONAI, PyTorch, NumPy, and the packages the inference needs
    (:data:`RUN_PACKAGES`) at their installed versions (left out where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    import monai
    import numpy

    packages = {}
    for name in RUN_PACKAGES[spatial_dims]:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": packages,
    }


def network_data_format(predictor: Any) -> dict[str, Any]:
    """``network_data_format`` of ``model.ts``: image ``[B, C, *sp]`` in, the mean and
    then the uncertainty of each structure out (``[B, 2K, *sp]``)."""
    structures = list(predictor.structures)
    spatial = ["*"] * predictor.spatial_dims  # any size: the network pads inside
    roi = roi_size(predictor)
    channels = [f"mean {s}" for s in structures] + [f"uncertainty {s}" for s in structures]
    common = {
        "type": "image",
        "spatial_shape": spatial,
        "dtype": "float32",
        "is_patch_data": roi is not None,
    }
    return {
        "inputs": {
            "image": {
                **common,
                "format": "magnitude",
                "modality": "n/a",
                "num_channels": int(predictor.in_channels),
                "value_range": [0, 1] if predictor.spatial_dims == 2 else [],
                "channel_def": {str(c): f"image channel {c}" for c in range(predictor.in_channels)},
            }
        },
        "outputs": {
            "pred": {
                **common,
                "format": "magnitude",
                "num_channels": 2 * len(structures),
                "value_range": [0, 1],
                "channel_def": {str(c): name for c, name in enumerate(channels)},
            }
        },
    }


def _bundle_name(method: str, spatial_dims: int) -> str:
    """``edue_<method>_<2d|3d>_segmentation`` (``edue_<2d|3d>_segmentation`` for EDUE)."""
    prefix = "edue" if method == "edue" else f"edue_{method}"
    return f"{prefix}_{spatial_dims}d_segmentation"


def metadata(predictor: Any, content: dict[str, Any]) -> dict[str, Any]:
    """The content of ``configs/metadata.json``: MONAI's metadata fields, and edue's
    facts about the model (structures, members, method, score, grid, version, hash).

    Args:
        predictor: the loaded predictor.
        content: its sidecar (:func:`bundle_sidecar`).
    """
    structures = ", ".join(predictor.structures)
    kind = "2D images" if predictor.spatial_dims == 2 else "3D volumes"
    return {
        "schema": META_SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by edue {content['edue_version']}"},
        **_versions(predictor.spatial_dims),
        "name": _bundle_name(content["method"], predictor.spatial_dims),
        "task": f"Segmentation of {structures} with a per-pixel uncertainty",
        "description": (
            f"A network of the edue method '{content['method']}' with {content['members']} "
            f"member(s), trained on {kind} annotated by several raters: for each "
            "structure, the segmentation probability (mean) and the uncertainty across "
            f"the members (score '{content['score']}'), in one pass"
        ),
        "authors": "edue export",
        "copyright": LICENCE_PLACEHOLDER,
        "license": LICENCE_PLACEHOLDER,
        "intended_use": "research; set by the model's owner",
        "data_source": "set by the model's owner",
        "data_type": "png" if predictor.spatial_dims == 2 else "nibabel",
        "image_classes": f"{predictor.in_channels} channel(s) of float32 intensities",
        "label_classes": f"one binary mask per structure and rater: {structures}",
        "pred_classes": "the mean of each structure, then its uncertainty",
        "network_data_format": network_data_format(predictor),
        "structures": list(predictor.structures),
        "members": content["members"],
        "method": content["method"],
        "score": content["score"],
        "training_grid": content["training_grid"],
        "edue_version": content["edue_version"],
        "weights_sha256": content["weights_sha256"],
    }


def bundle_sidecar(predictor: Any) -> dict[str, Any]:
    """edue's sidecar of the bundle's ``model.ts`` (:func:`~edue.engine.predict.export.sidecar`)."""
    dims = predictor.spatial_dims
    sp = ["H", "W"] if dims == 2 else ["D", "H", "W"]
    content = sidecar(predictor, "torchscript")
    content |= {
        "format": BUNDLE_FORMAT,
        "file": MODEL_FILE,
        "outputs": {"pred": ["B", "2K", *sp]},
        "outputs_note": (
            "forward: the mean of each structure, then its uncertainty (edue predict's "
            "'mean' and 'uncertainty'); stack(image): the member stack [B, S'*K, *sp]; "
            "reduce(stack): the mean and uncertainty of a stack"
        ),
        "training_grid": content.get("training_grid", training_grid(predictor)),
    }
    return content


def _check_out_dir(out: Path) -> None:
    """Refuse an ``out`` that is a file or a non-empty folder (one line)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("the bundle folder is a file", out)
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError("the bundle folder exists and is not empty", out)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _write_bundle(root: Path, predictor: Any, net: torch.jit.ScriptModule) -> None:
    """Write every file of the bundle under ``root``."""
    from monai.data import save_net_with_metadata

    content = bundle_sidecar(predictor)
    meta = metadata(predictor, content)
    (root / "models").mkdir(parents=True)
    save_net_with_metadata(
        net,
        str(root / MODEL_FILE),
        include_config_vals=False,
        meta_values=meta,
        more_extra_files={"model.json": json.dumps(content).encode()},
    )
    _write_json(root / SIDECAR_FILE, content)
    _write_json(root / METADATA_FILE, meta)
    _write_json(root / INFERENCE_FILE, inference_config(predictor))
    (root / "docs").mkdir()
    text = readme(
        predictor,
        meta,
        roi_size(predictor),
        training_grid(predictor),
        list(RUN_PACKAGES[predictor.spatial_dims]),
        LICENCE_PLACEHOLDER,
    )
    (root / README_FILE).write_text(text, encoding="utf-8")
    (root / LICENSE_FILE).write_text(LICENCE_PLACEHOLDER + "\n", encoding="utf-8")


def export_bundle(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Export a checkpoint's method as a MONAI bundle in ``out_dir``.

    Run it with ``python -m monai.bundle run --config_file <out_dir>/configs/inference.json
    --bundle_root <out_dir> --dataset_dir <images>``: it writes ``<name>_mean.nii.gz``
    and ``<name>_uncertainty.nii.gz`` (``[*sp, K]``) per image, edue predict's ``mean``
    and ``uncertainty``. The folder is written whole or not at all.

    Args:
        checkpoint: a checkpoint file or run folder.
        out_dir: the bundle folder to write (missing or empty).

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: ``out_dir`` is a file or a non-empty folder, or the method samples
            its members (:func:`~edue.engine.predict.export.check_exportable`).
        CheckpointError: missing, unsafe, corrupt or incompatible checkpoint.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    predictor, wrapper = load_for_export(checkpoint)
    net = bundle_net(predictor, wrapper)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_bundle(staging, predictor, net)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out
