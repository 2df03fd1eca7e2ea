"""One-pass prediction from a checkpoint: images in, :class:`Prediction` out."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edue.config import Config, config_from_dict
from edue.data.case import MultiRaterCase
from edue.data.source import CaseSource
from edue.engine.checkpoint import load_checkpoint, resolve_checkpoint
from edue.engine.inference.features import FeatureTap, encoder_block_names, tapped_modules
from edue.engine.inference.grid import (
    OnTrainingGrid,
    TrainingGrid,
    from_grid,
    pixel_scale,
    to_grid,
)
from edue.engine.inference.memory import MB, check_stack_fits, default_memory_budget_mb
from edue.engine.inference.receptive_field import NetworkProfile, probe_side, profile_network
from edue.engine.inference.tiling import (
    TiledPooling,
    TilePlan,
    padded_shape,
    plan_memory,
    predict_tiled,
    whole_pass_bytes,
)
from edue.engine.runtime import resolve_device
from edue.errors import CheckpointError, ConfigError, DataError
from edue.methods import Method, build_method, method_spec_for
from edue.prediction import Prediction


def load_weights(
    method: Method, weights: dict[str, torch.Tensor], path: str | Path, expected: str
) -> None:
    """Load a state dict into a freshly built method, or say in one line why not.

    Raises:
        CheckpointError: missing or unexpected tensors, or tensors of another shape: the
            message says what the checkpoint holds and what the configuration builds.
    """
    own = method.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(missing)} missing (first: {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else "",
            f"{len(reshaped)} of another shape (first: {reshaped[0]})" if reshaped else "",
        ]
        raise CheckpointError(
            f"the checkpoint holds {len(weights)} tensors, the configuration builds a "
            f"'{expected}' model of {len(own)}: " + ", ".join(p for p in parts if p),
            path,
        )
    method.load_state_dict(weights)


def checked_image(
    image: np.ndarray | torch.Tensor, spatial_dims: int, in_channels: int, where: str = "image"
) -> torch.Tensor:
    """An image ``[C, *sp]`` checked against a model of ``spatial_dims`` and
    ``in_channels``, as a float tensor.

    Raises:
        DataError: wrong dimensionality, channel count or non-finite values.
    """
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if tensor.ndim != spatial_dims + 1:
        kind = "2D image [C, H, W]" if spatial_dims == 2 else "3D volume [C, D, H, W]"
        raise DataError(
            f"this model expects a {kind}, got an array of shape {tuple(tensor.shape)}", where
        )
    if tensor.shape[0] != in_channels:
        raise DataError(
            f"this model expects {in_channels} channel(s), the image has {tensor.shape[0]}",
            where,
        )
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise DataError("image contains NaN or Inf values", where)
    return tensor


class Predictor(OnTrainingGrid):
    """A trained method ready to predict.

    Args:
        method: the method, weights loaded.
        config: its training configuration.
        data_info: ``in_channels``, ``structures``, ``spatial_dims``, ``image_size``.
        device: where to run.
        weights_sha256: the checkpoint's recorded weights hash (``None``: not from a
            checkpoint, or none recorded).
    """

    def __init__(
        self,
        method: Method,
        config: Config,
        data_info: dict[str, Any],
        device: torch.device,
        weights_sha256: str | None = None,
    ) -> None:
        self.method = method.to(device).eval()
        self.config = config
        self.data_info = data_info
        self.device = device
        self.structures = tuple(data_info["structures"])
        self.in_channels = int(data_info["in_channels"])
        self.spatial_dims = int(data_info["spatial_dims"])
        self.weights_sha256 = weights_sha256
        #: the training resolution inputs are resampled to (:mod:`edue.engine.inference.grid`)
        self.grid = TrainingGrid.from_dict(data_info.get("grid"), config.data.size)
        self._taps: dict[tuple[str, ...], FeatureTap] = {}
        self._profile: NetworkProfile | None = None
        self._default_budget_mb: int | None = None
        self._warned_nonlocal = False
        #: the training budget behind the weights (reports state it next to every claim)
        self.training: dict[str, Any] = {
            "max_epochs": int(config.train.epochs),
            "patience": int(config.train.patience),
            "weights_epoch": None,
        }

    @property
    def name(self) -> str:
        """The method's name."""
        return self.method.name

    @property
    def n_passes(self) -> int:
        """Forward passes of the network per image (1 for one-pass methods)."""
        return method_spec_for(self.config).passes(self.config)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Predictor:
        """Load a checkpoint file or run folder (weights only, no code executed).

        Raises:
            CheckpointError: missing, unsafe, corrupt or incompatible checkpoint.
        """
        path = resolve_checkpoint(path)
        state = load_checkpoint(path)
        try:
            config = config_from_dict(state["config"])
            info = state["data"]
            method = build_method(
                config,
                int(info["in_channels"]),
                len(info["structures"]),
                int(info["spatial_dims"]),
                for_training=False,
            )
        except ConfigError as exc:
            raise CheckpointError(f"the configuration it holds is invalid ({exc})", path) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"incomplete or malformed checkpoint ({exc!r})", path) from None
        load_weights(method, state["model"], path, method_spec_for(config).name)
        recorded = state.get("weights_sha256")
        predictor = cls(
            method,
            config,
            info,
            resolve_device(device),
            None if recorded is None else str(recorded),
        )
        best = state.get("best_epoch", state.get("epoch"))
        predictor.training["weights_epoch"] = None if best is None else int(best)
        return predictor

    # ------------------------------------------------------------------ checks
    def check_image(self, image: np.ndarray | torch.Tensor, where: str = "image") -> torch.Tensor:
        """Validate an image ``[C, *sp]`` against the model; return it as a float tensor.

        Raises:
            DataError: wrong dimensionality, channel count or non-finite values.
        """
        return checked_image(image, self.spatial_dims, self.in_channels, where)

    # ------------------------------------------------------------------ prediction
    def roi_size(self) -> tuple[int, ...] | None:
        """Sliding-window size (``infer.roi_size``, else the training patch), if any."""
        roi = self.config.infer.roi_size or self.config.data.patch_size
        if not roi:
            return None
        roi = list(roi) * self.spatial_dims if len(roi) == 1 else list(roi)
        return tuple(int(r) for r in roi)

    def members(self, batch: torch.Tensor) -> torch.Tensor:
        """The method's predicted stack ``[S', B, K, *sp]`` of a batch ``[B, C, *sp]``:
        the member probabilities, followed by the segmentation where the method gives it
        apart (``S' = method.stack_size``; :meth:`~edue.methods.Method.split_stack`).

        The one entry that chooses how (:meth:`members_with_features` without features):

        * inputs larger than the sliding window (``infer.roi_size``, else
          ``data.patch_size``) are predicted window by window (MONAI), blending the
          *member stack* so the variance across members is computed on the whole image
          afterwards; memory follows the window, not the volume;
        * otherwise one whole-image pass (:meth:`padded_members`) when it fits the memory
          budget (:attr:`memory_budget_mb`), else tile by tile (:meth:`memory_plan`,
          :meth:`tiled_members`), with the same result as the whole-image pass.

        Raises:
            DataError: the member stack of the batch alone exceeds the memory budget.
        """
        return self.members_with_features(batch)[0]

    def members_with_features(
        self, batch: torch.Tensor, tap: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`members`, and the pooled outputs of the modules ``tap`` from the same
        pass: the channel means over space, concatenated ``[B, ΣC]`` (``None`` without
        ``tap``, or for windows of several images mixed). An image predicted tile by
        tile gets them pooled over the tiles' centres: the whole-image pass's features.

        Raises:
            DataError: the member stack of the batch alone exceeds the memory budget.
            CheckpointError: the method lacks a module of ``tap``.
        """
        roi = self.roi_size()
        if roi is not None and not all(s <= r for s, r in zip(batch.shape[2:], roi, strict=True)):
            window = roi

            def run() -> torch.Tensor:
                return self.sliding_members(batch, window)

        else:
            plan = self.memory_plan(batch.shape)
            if plan is not None:
                return self.tiled_members(batch, plan, tap)

            def run() -> torch.Tensor:
                return self.padded_members(batch)

        if tap is None:
            return run(), None
        with self._tap(tuple(tap)) as hook:
            members = run()
        return members, hook.features(batch.shape[0])

    # ------------------------------------------------------------------ memory ceiling
    @property
    def memory_budget_mb(self) -> int:
        """The memory one prediction may use, in MB: ``infer.max_memory_mb``, else
        derived from the machine (:func:`~edue.engine.inference.memory.default_memory_budget_mb`:
        half its memory, or the GPU's, at least 512 MB)."""
        configured = self.config.infer.max_memory_mb
        if configured is not None:
            return int(configured)
        if self._default_budget_mb is None:
            self._default_budget_mb = default_memory_budget_mb(self.device)
        return self._default_budget_mb

    @property
    def network_profile(self) -> NetworkProfile:
        """The network's halo, locality and activation bytes per pixel, measured once
        by probe passes (:func:`~edue.engine.inference.receptive_field.profile_network`)."""
        if self._profile is None:
            self._profile = profile_network(
                self.method.predict_members,
                self.method,
                self.in_channels,
                self.spatial_dims,
                self.size_divisor,
                self.device,
            )
        return self._profile

    def memory_plan(self, batch_shape: Sequence[int]) -> TilePlan | None:
        """How a batch of shape ``[B, C, *sp]`` is predicted within the memory budget:
        ``None`` for one whole-image pass, else the tiles.

        A batch no larger than the probe pass (64² px, or 32³ voxels, at least four
        divisors a side; :func:`~edue.engine.inference.receptive_field.probe_side`) is
        always predicted in one pass, without probing. A network that cannot be tiled
        exactly (an image-wide operation such as instance norm; :attr:`network_profile`)
        is predicted in one pass with a warning when the pass exceeds the budget.

        Raises:
            DataError: the member stack ``[S', B, K, *sp]`` float32 and the image alone, or
                with the smallest tile, exceed the budget (the message says what to set
                ``infer.max_memory_mb`` to).
        """
        b, c = int(batch_shape[0]), int(batch_shape[1])
        shape = tuple(int(s) for s in batch_shape[2:])
        budget = self.memory_budget_mb * MB
        stack, k = self.method.stack_size, len(self.structures)
        divisor = self.size_divisor
        side = probe_side(divisor, self.spatial_dims)
        if b * math.prod(padded_shape(shape, divisor)) <= side**self.spatial_dims:
            check_stack_fits(shape, b, c, stack, k, budget)
            return None
        profile = self.network_profile
        plan = plan_memory(shape, b, c, stack, k, divisor, profile, budget)
        if plan is None and not profile.local and not self._warned_nonlocal:
            whole = whole_pass_bytes(shape, b, c, divisor, profile)
            if whole > budget:
                self._warned_nonlocal = True
                warnings.warn(
                    f"{self.name}: this network cannot be predicted tile by tile exactly "
                    f"({profile.reason}); a {'×'.join(map(str, shape))} image is predicted "
                    f"in one pass of about {whole / MB:,.0f} MB, over infer.max_memory_mb="
                    f"{self.memory_budget_mb} (infer.roi_size predicts window by window)",
                    stacklevel=3,
                )
        return plan

    def tiled_members(
        self, batch: torch.Tensor, plan: TilePlan, tap: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The predicted stack ``[S', B, K, *sp]`` of ``batch`` ``[B, C, *sp]`` tile by tile
        (:func:`~edue.engine.inference.tiling.predict_tiled`), and the pooled features ``[B, ΣC]``
        of the modules ``tap`` over the tiles' centres (``None`` without ``tap``)."""
        stack, k = self.method.stack_size, len(self.structures)
        if tap is None:
            return predict_tiled(self.method.predict_members, batch, plan, stack, k), None
        with TiledPooling(tapped_modules(self.method, tuple(tap))) as pooling:
            members = predict_tiled(self.method.predict_members, batch, plan, stack, k, pooling)
        return members, pooling.features()

    @property
    def size_divisor(self) -> int:
        """Input sizes the backbone needs multiples of (its total downsampling)."""
        for module in self.method.modules():
            divisor = getattr(module, "min_size_divisor", None)
            if isinstance(divisor, int):
                return divisor
        return 2 ** (len(self.config.model.channels) - 1)

    def padded_members(self, batch: torch.Tensor) -> torch.Tensor:
        """One pass, the input zero-padded to a multiple of the network's downsampling
        factor (so tiny or odd sizes work) and the members cropped back."""
        divisor = self.size_divisor
        shape = batch.shape[2:]
        pads: list[int] = []
        for size in reversed(shape):
            pads += [0, (-size) % divisor]
        if any(pads):
            batch = torch.nn.functional.pad(batch, pads)
        members = self.method.predict_members(batch).float()
        crop: tuple[Any, ...] = (..., *(slice(0, s) for s in shape))
        return members[crop]

    def sliding_members(self, batch: torch.Tensor, roi: Sequence[int]) -> torch.Tensor:
        """Member probabilities ``[S, B, K, *sp]`` predicted window by window."""
        from monai.inferers import sliding_window_inference

        n_members, k = self.method.stack_size, len(self.structures)

        def stacked(window: torch.Tensor) -> torch.Tensor:
            m = self.method.predict_members(window).float()  # [S, b, K, *roi]
            return m.transpose(0, 1).reshape(window.shape[0], n_members * k, *window.shape[2:])

        cfg = self.config.infer
        out = sliding_window_inference(
            batch, roi, cfg.sw_batch_size, stacked, overlap=cfg.overlap, mode=cfg.blend
        )
        out = torch.as_tensor(out).reshape(batch.shape[0], n_members, k, *batch.shape[2:])
        return out.transpose(0, 1).clamp(0, 1)

    def _tap(self, names: tuple[str, ...]) -> FeatureTap:
        """The feature tap on the modules ``names`` of the method: made once per set of
        names, its hooks registered on first use and inert outside a pass that asks
        for features."""
        if names not in self._taps:
            self._taps[names] = FeatureTap(tapped_modules(self.method, names), persistent=True)
        return self._taps[names]

    def check_feature_modules(self, names: Sequence[str]) -> None:
        """Refuse feature modules the method lacks (a gate fitted on another model).

        Raises:
            CheckpointError: the method has no such module.
        """
        tapped_modules(self.method, names)

    def feature_module_names(self) -> list[str]:
        """The modules whose pooled outputs the distribution-shift gate reads: the
        encoder blocks of the method's first network, fine to coarse (none: empty)."""
        return encoder_block_names(self.method)

    @torch.no_grad()
    def predict_batch_with_features(
        self,
        images: Sequence[np.ndarray | torch.Tensor],
        case_ids: Sequence[str | None] | None = None,
        tap: Sequence[str] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> tuple[list[Prediction], torch.Tensor | None]:
        """:meth:`predict_batch`, also returning the pooled outputs of the modules ``tap``.

        The features come from the same forward pass, through a forward hook
        (:class:`~edue.engine.inference.features.FeatureTap`): no second pass. An image predicted
        tile by tile (over the memory budget, :meth:`memory_plan`) gets them pooled over
        the tiles' centres (:class:`~edue.engine.inference.tiling.TiledPooling`): the same
        features as a whole-image pass.

        Args:
            images: each ``[C, *sp]``.
            case_ids: optional identifiers.
            tap: names of the modules to read (``None``: no features).
            spacing: the images' voxel spacing (one for the batch), when known: a volume
                outside the training spacings is resampled (:meth:`input_shape`).

        Returns:
            The predictions and the channel means of the modules' outputs, concatenated
            ``[B, ΣC]`` (``None`` without ``tap``, or for windows of several images mixed).

        Raises:
            CheckpointError: the method lacks a module of ``tap``.
            DataError: an image the model cannot take, or whose member stack alone
                exceeds the memory budget (``infer.max_memory_mb``).
        """
        tensors = [
            self.check_image(img, str(cid or "image"))
            for img, cid in zip(images, case_ids or [None] * len(images), strict=True)
        ]
        shape = tuple(tensors[0].shape[1:])
        size = self.input_shape(shape, spacing)
        batch = to_grid(tensors, size).to(self.device)
        members, features = self.members_with_features(batch, tap)  # [S', B, K, *size]
        members = from_grid(members, shape).cpu()
        scale = pixel_scale(size, shape)
        preds = [
            self.prediction(members[:, i], (case_ids or [None] * len(tensors))[i], scale)
            for i in range(len(tensors))
        ]
        return preds, features

    def prediction(
        self, stack: torch.Tensor, case_id: str | None = None, pixel_scale: float = 1.0
    ) -> Prediction:
        """The :class:`Prediction` of one image's predicted stack ``[S', K, *sp]``
        (``pixel_scale``: see :attr:`Prediction.pixel_scale`)."""
        members, segmentation = self.method.split_stack(stack)
        return Prediction(
            members,
            case_id=case_id,
            method=self.name,
            structures=self.structures,
            segmentation=segmentation,
            score=self.method.score,
            pixel_scale=pixel_scale,
        )

    def predict_cases(
        self, source: CaseSource | Sequence[MultiRaterCase], batch_size: int = 16
    ) -> Iterator[tuple[MultiRaterCase, Prediction]]:
        """Predict every case of a source in batches of equal-sized images."""
        for case, pred, _ in self.predict_cases_with_features(source, batch_size):
            yield case, pred

    def predict_cases_with_features(
        self,
        source: CaseSource | Sequence[MultiRaterCase],
        batch_size: int = 16,
        tap: Sequence[str] | None = None,
    ) -> Iterator[tuple[MultiRaterCase, Prediction, torch.Tensor | None]]:
        """:meth:`predict_cases`, with each case's pooled features of the modules ``tap``
        ``[ΣC]`` from the same pass (``None`` without ``tap``)."""
        cases = source if isinstance(source, CaseSource) else list(source)
        pending: list[MultiRaterCase] = []
        for index in range(len(cases)):
            case = cases.load(index) if isinstance(cases, CaseSource) else cases[index]
            if pending and (
                len(pending) == batch_size or self._grid_key(pending[0]) != self._grid_key(case)
            ):
                yield from self._flush(pending, tap)
                pending = []
            pending.append(case)
        if pending:
            yield from self._flush(pending, tap)

    def _grid_key(self, case: MultiRaterCase) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Cases of equal key share a pass: the same shape, predicted at the same shape."""
        return case.spatial_shape, self.input_shape(case.spatial_shape, case.spacing)

    def _flush(
        self, cases: list[MultiRaterCase], tap: Sequence[str] | None
    ) -> Iterator[tuple[MultiRaterCase, Prediction, torch.Tensor | None]]:
        preds, features = self.predict_batch_with_features(
            [c.image for c in cases], [c.case_id for c in cases], tap, cases[0].spacing
        )
        rows = [None] * len(cases) if features is None else list(features)
        yield from zip(cases, preds, rows, strict=True)

    def n_parameters(self) -> int:
        """Trainable parameters of the whole predictor (all members)."""
        return sum(p.numel() for p in self.method.parameters())
