"""The Probabilistic U-Net (Kohl et al., NeurIPS 2018): a U-Net whose last features are
combined with a latent sample, a prior net that gives the latent distribution of an
image, and a posterior net that sees one rater's masks in training.

The model, as published: an image ``x`` is mapped by a *prior net* to an axis-aligned
Gaussian ``P(z | x) = N(μ_p, diag σ_p²)`` over a small latent space (``latent_dim``) —
an encoder, the global average of its last features, a 1×1 convolution to ``μ`` and
``log σ``. A *posterior net* of the same form maps the image concatenated with one
segmentation ``y`` to ``Q(z | x, y)``. A segmentation U-Net gives features of ``x``
once; the *combination* ``f_comb`` broadcasts a latent sample over space, concatenates
it with those features and applies a few 1×1 convolutions to reach the logits. Training
maximises the ELBO: the reconstruction of ``y`` from a posterior sample minus
``β · KL(Q ‖ P)`` (analytic). At prediction the posterior is unused: every member is
the combination of the same features with one prior sample (only the 1×1 layers run
again).

Where edue's version differs from the authors' code (TensorFlow/Sonnet,
``SimonKohl/probabilistic_unet``) and the PyTorch port by S. Knegt, and why:

* **Structures.** The ``K`` structures are independent sigmoid maps (edue's data are
  multi-label: a cup inside a disc) trained with binary cross-entropy, instead of one
  softmax over classes with categorical cross-entropy. The posterior sees the ``K``
  binary masks of one rater (shifted by −0.5, as the authors' code shifts its one-hot
  labels) where the original sees a one-hot label map.
* **Which rater.** Batches carry every rater (``masks [B, R, K, *sp]`` with the validity
  mask ``rater_valid``), so the loss draws one rater per image and iteration among the
  valid ones (:func:`edue.data.case.random_rater`, with the trainer's generator) — on
  LIDC the original trains on one of the four graders' masks drawn per image and
  iteration in the data loader (Knegt's loader does the same); the result is the same.
* **Segmentation network.** Any edue backbone, feature-only (``model.backbone``: edue's
  U-Net, an smp network or MONAI's DynUNet), instead of the authors' VGG-style U-Net
  (three 3×3 convolutions per level, average pooling, bilinear up-sampling, ReLU, no
  normalisation). Its last decoder features have whatever width the backbone gives
  (probed once at construction); logits at a coarser size than the input are resized
  bilinearly (trilinearly in 3D), as edue's heads are.
* **Prior and posterior encoders.** Their own encoders, built from edue's U-Net blocks
  (:class:`edue.nets.unet.ConvBlock`: two 3×3(×3) convolutions and LeakyReLU per
  level, widths ``model.channels``) with 2× average pooling between levels, as the
  original down-samples, and He-normal weights, as the original initialises. They are
  not the backbone's encoder (the original keeps three encoders too): a pretrained smp
  encoder takes ``C`` channels, while the posterior needs ``C + K``; and a 2D and 3D
  encoder of the U-Net's widths works behind every backbone. Two convolutions per level
  instead of the original's three keep them alike to edue's U-Net. They use **no
  normalisation** whatever ``model.norm`` says, as in the original: the global average
  of instance-normalised features is nearly the same for every image, which would
  leave the latent distribution almost blind to it. Pooling rounds up, so any input
  size works.
* **Combination layers.** ``fcomb_layers`` counts every 1×1 convolution, the last (to
  ``K`` logits) included, with ReLU between them, as the paper describes "three
  subsequent 1×1 convolutions"; the authors' code, with ``num_1x1_convs = 3``, has three
  ReLU layers *plus* the logit layer (Knegt's ``no_convs_fcomb = 4`` likewise four in
  all): ``method.fcomb_layers=4`` reproduces that. The hidden width is the features'
  width and the weights are orthogonal, as in the original. The first layer is applied
  in two parts — the features' part once per image, the latent's part (a vector) once
  per sample — which is the concatenation's output exactly, without tiling the latent.
* **Loss scaling.** The reconstruction is the BCE averaged over structures and pixels,
  the scale of every other method's loss (whose targets differ: the soft vote, not one
  rater); the KL term is scaled to match::

      L = mean_{b,k,p} BCE(ŷ, y) + β · mean_b KL_b / (K · P)

  with ``P`` the pixels (voxels) per image. This is the original's per-image negative
  ELBO (reconstruction summed over pixels, KL per image, both averaged over the batch)
  divided by ``K · P``: the same minimiser and the same balance between the two terms,
  independent of the image size. (Knegt's port sums the reconstruction over the batch
  too while averaging the KL, which weighs the KL ``B`` times less.) The named parts
  are ``rec`` (the mean BCE) and ``kl`` (the KL in nats per image, before scaling).
* **No L2 term.** The original adds ``1e-5 · ‖w‖²`` to the loss; edue regularises every
  method alike through the optimiser (``train.weight_decay``).
* **Training forward.** The trainer calls ``model(image)`` without masks, so
  :meth:`ProbUNet.forward` runs the backbone and the prior, keeps the features and the
  prior's parameters on the module for the :meth:`~ProbUNet.loss` of the same step, and
  returns the logits of the prior's mean latent (``[1, B, K, *sp]``). The loss then runs
  the posterior on the image and the drawn rater's masks and the combination on the
  kept features (one autograd graph: backbone, prior, posterior and combination all
  receive gradients), and releases what forward kept; called without a forward (or
  after one of another batch) it encodes the batch's image itself. Both run under the
  autocast forward ran under (mixed precision).
* **Prediction.** ``samples`` prior draws from a generator seeded with ``train.seed``
  at every call (reproducible, the caller's global random state untouched); the draws
  are shared by the images of a batch, so an image's members do not depend on what it
  is batched with. The prior reads the whole image (a global average): the predictor
  finds the network non-local and predicts whole images, never tiles.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edue.data.case import random_rater
from edue.losses import bce
from edue.methods.base import Method
from edue.methods.registry import BuildRequest, MethodSpec, register_method
from edue.nets.backbones import Backbone
from edue.nets.pointwise import pointwise_conv, pointwise_projection
from edue.nets.unet import ConvBlock, conv_nd

#: offset of the masks the posterior sees (the authors' code shifts its labels by −0.5)
MASK_SHIFT = 0.5


def kl_diagonal_gaussians(
    mu_q: torch.Tensor,
    log_sigma_q: torch.Tensor,
    mu_p: torch.Tensor,
    log_sigma_p: torch.Tensor,
) -> torch.Tensor:
    """Analytic ``KL(Q ‖ P)`` between axis-aligned Gaussians, summed over the latent axis.

    ``KL = Σ_l [ log σ_p − log σ_q + (σ_q² + (μ_q − μ_p)²) / (2 σ_p²) − 1/2 ]``.

    Args:
        mu_q, log_sigma_q: the posterior's mean and log standard deviation ``[B, L]``.
        mu_p, log_sigma_p: the prior's ``[B, L]``.

    Returns:
        ``[B]``, in nats, per image.
    """
    variance_ratio = torch.exp(2.0 * (log_sigma_q - log_sigma_p))
    mean_term = (mu_q - mu_p).square() * torch.exp(-2.0 * log_sigma_p)
    per_axis = 0.5 * (variance_ratio + mean_term - 1.0) - (log_sigma_q - log_sigma_p)
    return per_axis.sum(-1)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast is enabled with on ``device_type`` now (``None``: disabled)."""
    get_dtype = getattr(torch, "get_autocast_dtype", None)
    if get_dtype is not None:  # torch >= 2.4
        enabled = torch.is_autocast_enabled(device_type)  # type: ignore[call-arg]
        return get_dtype(device_type) if enabled else None  # type: ignore[no-any-return]
    if device_type == "cpu":  # older torch: one function per device type
        cpu_on = torch.is_autocast_cpu_enabled()
        return torch.get_autocast_cpu_dtype() if cpu_on else None
    if device_type == "cuda":
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    return None


def _spatial_axes(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


#: log σ of the prior and the posterior is clamped to ``[−b, b]`` in the forward pass
#: (``exp(±2 b)`` in the KL stays finite in float32), with the gradient of the identity
LOG_SIGMA_BOUND = 10.0


def bounded(log_sigma: torch.Tensor) -> torch.Tensor:
    """``log_sigma`` clamped to ``[−LOG_SIGMA_BOUND, LOG_SIGMA_BOUND]`` with a straight-
    through gradient: a saturating bound (``tanh``) or a plain clamp would stop the
    gradient that pulls a runaway ``log σ`` back, and the posterior then stays
    deterministic (measured: the KL stuck at 50–60 nats, even with ``β = 10``)."""
    clamped = log_sigma.clamp(-LOG_SIGMA_BOUND, LOG_SIGMA_BOUND)
    return log_sigma + (clamped - log_sigma).detach()


class HalvingPool(nn.Module):
    """2× average pooling along every axis longer than one, rounding up (a last odd
    pixel is averaged alone), so any input size can be encoded.

    Shapes:
        ``[B, C, *spatial]`` → ``[B, C, *ceil(spatial / 2)]`` (axes of size 1 stay).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = [2 if size > 1 else 1 for size in x.shape[2:]]
        pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
        return pool(x, kernel, kernel, ceil_mode=True)  # type: ignore[no-any-return]


class GaussianEncoder(nn.Module):
    """An image (prior) or an image with masks (posterior) → an axis-aligned Gaussian.

    Levels of :class:`~edue.nets.unet.ConvBlock` (no normalisation) with 2× average
    pooling between them, the global average of the last level, and a 1×1 convolution to
    ``2 L`` values: the mean and the log standard deviation.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (``C``, or ``C + K`` for the posterior).
        channels: widths of the levels, fine to coarse.
        latent_dim: ``L``.

    Shapes:
        input ``[B, in_channels, *spatial]`` (any size); output ``(μ, log σ)``, each
        ``[B, L]``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, channels: Sequence[int], latent_dim: int
    ) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        self.latent_dim = latent_dim
        self.blocks = nn.ModuleList(
            ConvBlock(spatial_dims, c_in, c_out, norm="none")
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.pool = HalvingPool()
        self.project = conv_nd(spatial_dims)(widths[-1], 2 * latent_dim, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, a=0.01, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for level, block in enumerate(self.blocks):
            if level:
                x = self.pool(x)
            x = block(x)
        pooled = x.mean(dim=_spatial_axes(x), keepdim=True)  # [B, C_last, 1, …]
        out = self.project(pooled).flatten(1)
        return out[:, : self.latent_dim], bounded(out[:, self.latent_dim :])


class Combination(nn.Module):
    """``f_comb``: features and a latent sample → logits, by ``layers`` 1×1 convolutions.

    The latent is broadcast over space and concatenated with the features; ReLU between
    the layers, none after the last. The first layer is computed in two parts (the
    features' columns of its weight once, the latent's columns per sample), which equals
    the convolution of the concatenation.

    Args:
        spatial_dims: 2 or 3.
        feature_channels: ``F``, the backbone's feature width (also the hidden width).
        latent_dim: ``L``.
        out_channels: ``K``.
        layers: 1×1 convolutions in all (at least 1).

    Shapes:
        features ``[B, F, *sp]`` and latents ``[N, B, L]`` → logits ``[N, B, K, *sp]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_channels: int,
        latent_dim: int,
        out_channels: int,
        layers: int,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"fcomb_layers must be at least 1, got {layers}")
        self.feature_channels = feature_channels
        widths = [feature_channels + latent_dim] + [feature_channels] * (layers - 1)
        widths.append(out_channels)
        self.layers = nn.ModuleList(
            pointwise_conv(spatial_dims, c_in, c_out)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        for layer in self._convs():
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def _convs(self) -> list[nn.Conv2d | nn.Conv3d]:
        return [layer for layer in self.layers if isinstance(layer, nn.Conv2d | nn.Conv3d)]

    def _first(self, features: torch.Tensor) -> torch.Tensor:
        """The features' part of the first layer ``[B, H, *sp]`` (no bias)."""
        weight = self._convs()[0].weight[:, : self.feature_channels]
        return pointwise_projection(features, weight, None)

    def _latent_part(self, z: torch.Tensor) -> torch.Tensor:
        """The latent's part of the first layer with its bias ``[B, H]`` for ``z [B, L]``."""
        first = self._convs()[0]
        weight = first.weight[:, self.feature_channels :].flatten(1)  # [H, L]
        return F.linear(z.to(weight.dtype), weight, first.bias)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shared = self._first(features)
        ones = (1,) * (features.ndim - 2)
        outputs = []
        for sample in z:  # one sample at a time: the memory of one [B, H, *sp] map
            latent = self._latent_part(sample).to(shared.dtype)
            h = shared + latent.view(*latent.shape, *ones)
            for layer in self.layers[1:]:
                h = layer(F.relu(h))
            outputs.append(h)
        return torch.stack(outputs)


class _Encoded(NamedTuple):
    """What one pass over images gives: the backbone's features ``[B, F, *sp]``, the
    prior's ``μ`` and ``log σ`` ``[B, L]``, the images ``[B, C, *sp]`` it was computed
    from, and the autocast dtype it ran under (``None``: full precision)."""

    features: torch.Tensor
    prior_mu: torch.Tensor
    prior_log_sigma: torch.Tensor
    image: torch.Tensor
    autocast: torch.dtype | None


class ProbUNet(Method):
    """The Probabilistic U-Net: a feature-only backbone, a prior net, a posterior net and
    the combination layers (see the module docstring for the differences from the
    original).

    Args:
        backbone: a feature-only backbone (``out_channels=0``).
        in_channels: image channels ``C``.
        out_channels: structures ``K``.
        channels: widths of the prior's and posterior's encoder levels, fine to coarse.
        latent_dim: ``L``.
        kl_weight: ``β``.
        fcomb_layers: 1×1 convolutions of the combination, the logit layer included.
        samples: members ``N`` at prediction (prior draws).
        generator_seed: seed of the prior draws at prediction.

    Shapes:
        training logits ``[1, B, K, *sp]`` (the prior mean's); members ``[N, B, K, *sp]``.
    """

    name = "prob_unet"
    sampled = True

    def __init__(
        self,
        backbone: Backbone,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 6,
        kl_weight: float = 1.0,
        fcomb_layers: int = 3,
        samples: int = 16,
        generator_seed: int = 0,
    ) -> None:
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {latent_dim}")
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be non-negative, got {kl_weight}")
        if not channels:
            raise ValueError("the prior and posterior encoders need at least one width")
        super().__init__(backbone)
        dims = int(backbone.spatial_dims)
        self.spatial_dims = dims
        self.latent_dim = latent_dim
        self.kl_weight = float(kl_weight)
        self.samples = samples
        self.generator_seed = generator_seed
        self.prior = GaussianEncoder(dims, in_channels, channels, latent_dim)
        self.posterior = GaussianEncoder(dims, in_channels + out_channels, channels, latent_dim)
        width = self._probe_width(backbone, in_channels)
        self.combination = Combination(dims, width, latent_dim, out_channels, fcomb_layers)
        self._mode = "bilinear" if dims == 2 else "trilinear"
        self._kept: _Encoded | None = None

    @staticmethod
    @torch.no_grad()
    def _probe_width(backbone: Backbone, in_channels: int) -> int:
        """Channels of the backbone's features (one pass on zeros, in eval mode)."""
        was_training = backbone.training
        backbone.eval()
        divisor = int(getattr(backbone, "min_size_divisor", 16))
        size = max(2 * divisor, 32 if backbone.spatial_dims == 2 else 16)
        out = backbone(torch.zeros(1, in_channels, *([size] * backbone.spatial_dims)))
        backbone.train(was_training)
        return int(out.shape[1])

    # ------------------------------------------------------------------ passes
    def _encode(self, x: torch.Tensor) -> _Encoded:
        """Backbone features and the prior of images ``x [B, C, *sp]``."""
        amp = _autocast_dtype(x.device.type)
        features = self.network(x)
        mu, log_sigma = self.prior(x)
        return _Encoded(features, mu, log_sigma, x, amp)

    @contextmanager
    def _autocast_of(self, encoded: _Encoded) -> Iterator[None]:
        """The autocast ``encoded`` was computed under (none: full precision)."""
        device = encoded.features.device.type
        if encoded.autocast is None:
            with torch.autocast(device, enabled=False):
                yield
        else:
            with torch.autocast(device, dtype=encoded.autocast):
                yield

    def _combine(self, encoded: _Encoded, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, B, K, *sp]`` (at the images' size) of latents ``z [N, B, L]``."""
        with self._autocast_of(encoded):
            logits = self.combination(encoded.features, z)
        size = encoded.image.shape[2:]
        if logits.shape[3:] != size:
            n, b = logits.shape[:2]
            logits = F.interpolate(
                logits.flatten(0, 1), size=size, mode=self._mode, align_corners=False
            ).unflatten(0, (n, b))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the prior's mean latent ``[1, B, K, *sp]``; the features and the prior
        are kept for the :meth:`loss` (or :meth:`members_after_forward`) of this batch."""
        encoded = self._encode(x)
        self._kept = encoded
        return self._combine(encoded, encoded.prior_mu[None])

    def _take(self, image: torch.Tensor, release: bool) -> _Encoded:
        """What the last forward kept for ``image`` (the same batch size and spatial
        shape), else a fresh encoding of it; ``release`` forgets what was kept."""
        kept = self._kept
        if release:
            self._kept = None
        if kept is not None and kept.image.shape == image.shape:
            return kept
        return self._encode(image)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The negative ELBO per element: ``rec + β · KL / (K · P)`` (module docstring).

        Args:
            logits: the forward's output ``[1, B, K, *sp]`` (the features it kept are
                what the loss uses).
            batch: ``image [B, C, *sp]``, ``masks [B, R, K, *sp]``, ``rater_valid [B, R]``.
            generator: random source of the rater draws and the posterior samples (on
                the masks' device).

        Returns:
            The scalar loss and its parts ``rec`` (mean BCE) and ``kl`` (nats per image).
        """
        image = batch["image"]
        # a graph must not outlive its step; without one (validation) the features stay
        # for members_after_forward
        encoded = self._take(image, release=torch.is_grad_enabled())
        target = random_rater(batch["masks"], batch["rater_valid"], generator).float()
        with self._autocast_of(encoded):
            post_mu, post_log_sigma = self.posterior(
                torch.cat([image, (target - MASK_SHIFT).to(image.dtype)], dim=1)
            )
        post_mu, post_log_sigma = post_mu.float(), post_log_sigma.float()
        noise = torch.randn(
            post_mu.shape, generator=generator, device=post_mu.device, dtype=post_mu.dtype
        )
        z = post_mu + torch.exp(post_log_sigma) * noise
        reconstruction = self._combine(encoded, z[None])[0]
        rec = bce(reconstruction, target)
        kl = kl_diagonal_gaussians(
            post_mu,
            post_log_sigma,
            encoded.prior_mu.float(),
            encoded.prior_log_sigma.float(),
        ).mean()
        elements = target[0].numel()  # K · P
        total = rec + self.kl_weight * kl / elements
        return total, {"rec": float(rec.detach()), "kl": float(kl.detach())}

    def validation_loss(
        self,
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """BCE of one drawn rater against the logits of the *prior's* mean latent (what
        ``forward`` gives in evaluation), not the ELBO: the ELBO reconstructs from the
        posterior, which sees the mask, so it keeps improving while the prior that
        prediction samples is useless, and early stopping on it picks such epochs.

        Args:
            logits: the forward's output ``[1, B, K, *sp]``.
            batch: ``masks [B, R, K, *sp]``, ``rater_valid [B, R]``.
            generator: random source of the rater draw.
        """
        target = random_rater(batch["masks"], batch["rater_valid"], generator).float()
        rec = bce(logits[0].float(), target)
        return rec, {"rec": float(rec.detach())}

    # ------------------------------------------------------------------ prediction
    def _members(self, encoded: _Encoded) -> torch.Tensor:
        """Probabilities ``[N, B, K, *sp]`` of ``N`` seeded prior draws."""
        mu = encoded.prior_mu.float()
        sigma = torch.exp(encoded.prior_log_sigma.float())
        device = mu.device
        generator = torch.Generator(device=device).manual_seed(self.generator_seed)
        noise = torch.randn(
            self.samples, 1, self.latent_dim, generator=generator, device=device
        )  # shared by the images of the batch
        z = mu[None] + sigma[None] * noise
        return torch.sigmoid(self._combine(encoded, z).float())

    @torch.no_grad()
    def predict_members(self, x: torch.Tensor) -> torch.Tensor:
        """Member probabilities ``[N, B, K, *sp]``: the backbone and the prior once, then
        ``N`` prior samples through the combination layers."""
        return self._members(self._encode(x))

    @torch.no_grad()
    def members_after_forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Members of ``x`` from what its forward kept (no second backbone pass when
        the forward was of ``x``)."""
        kept = self._kept
        self._kept = None
        if kept is not None and kept.image is x:
            return self._members(kept)
        return self.predict_members(x)

    def members_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Not available: a forward's logits are the prior mean's; the members are prior
        samples, which need the features (:meth:`members_after_forward`)."""
        raise NotImplementedError(
            "prob_unet members are prior samples: use predict_members or members_after_forward"
        )

    @property
    def n_members(self) -> int:
        return self.samples


def _build(request: BuildRequest) -> ProbUNet:
    config = request.config
    m = config.method
    try:
        return ProbUNet(
            request.backbone(0),
            request.in_channels,
            request.out_channels,
            tuple(config.model.channels),
            latent_dim=m.latent_dim,
            kl_weight=m.kl_weight,
            fcomb_layers=m.fcomb_layers,
            samples=m.samples,
            generator_seed=config.train.seed,
        )
    except ValueError as error:
        from edue.errors import ConfigError

        raise ConfigError(f"method: {error}") from None


SPEC = register_method(
    MethodSpec(
        name="prob_unet",
        label="Prob. U-Net",
        build=_build,
        members=lambda config: config.method.samples,
        one_pass=True,
        summary="a U-Net with a latent prior/posterior (Kohl et al.); N prior samples",
        order=60,
    )
)
