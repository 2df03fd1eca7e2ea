"""Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020).

The network predicts a multivariate normal distribution over the logits of the whole
image, with a low-rank plus diagonal covariance,

    η ~ N(μ, Σ),    Σ = W Wᵀ + diag(d),

where ``μ``, ``d`` and ``W`` come from 1×1 convolutions on the backbone's last decoder
features. Training maximises the Monte-Carlo estimate of the marginal likelihood of a
rater's mask,

    log p(y | x) ≈ logsumexp_s log p(y | η_s) − log S,    η_s ~ N(μ, Σ),

with ``S / 2`` reparameterised samples and their antithetic mirrors ``2 μ − η_s``
(``method.ssn_likelihood: mc``, the original estimator), or, by default
(``method.ssn_likelihood: paired``), with each antithetic pair scored as one: the pair's
log-likelihood is the mean of its two samples', and the logsumexp runs over the
``S / 2`` pairs,

    log p(y | x) ≈ logsumexp_s ½ [log p(y | η_s) + log p(y | 2 μ − η_s)] − log (S / 2).

Why pairs: the normal distribution is symmetric about its mean, and the original
estimator rewards a sample that reproduces the rater without penalising its mirror. A
covariance that flips large regions with the sign of the noise then costs at most
``log 2`` per image (half the samples are masks no rater drew), and on edue's data it
grows until it does (the original hides this behind a region-of-interest mask, see
below): on the embedded 2D data the original estimator gives a mean soft Dice of 0.52 /
0.45 (disc / cup) and a pixel NCC below 0, the paired one 0.965 / 0.937 and 0.74 / 0.76
(docs/method.md). The price: a pair must explain the *same* rater, so the paired
estimator cannot represent two raters who contradict each other as two modes (the
original can; tested); its samples spread around the mean where the raters disagree.
Jensen's inequality makes the paired value a lower bound of the original one.

At prediction one backbone pass gives the distribution, and ``method.samples`` logit
samples through a sigmoid are the members. ``method.ssn_rank`` sets the rank of ``W``
(0: the diagonal alone, independent pixels); ``method.ssn_samples`` the training
samples ``S``.

How this implementation differs from the authors' code
(``biomedia-mira/stochastic_segmentation_networks``: ``StochasticDeepMedic`` and
``StochasticSegmentationNetworkLossMCIntegral``):

* **Sigmoid per structure instead of a softmax over classes.** edue's structures are
  independent binary maps (nested, overlapping), so the likelihood of a sample is the
  Bernoulli likelihood (``−BCE``) summed over structures and pixels, not the categorical
  one; the original needs ``num_classes >= 2`` and has no binary case.
* **One factor over all structures.** As in the original, ``W`` has ``rank`` columns
  that each span the logits of every structure and pixel (the network's ``K·rank``
  factor channels are read rank-major, ``[rank, K]``), rather than a block-diagonal
  factor with ``rank`` columns per structure. A rater's style (generous or tight
  margins, a missed lesion) acts on all the structures of an image together, and nested
  structures share boundaries, so the covariance between structures is worth modelling;
  a per-structure factor cannot express it at the same number of outputs.
* **Which rater.** The original trains on the one label of each image. Here each image
  gets one of its valid raters, drawn at random per image and iteration with the
  trainer's generator (:func:`edue.data.case.random_rater`), and all ``S`` samples of
  the image are scored against that same mask. Drawing a rater per sample instead would
  no longer estimate the likelihood of a mask: a deterministic prediction of one rater
  would then score as well as a distribution covering both, and nothing would reward
  the spread.
* **Per-pixel scale.** The loss is divided by the number of logits per image
  (``K × pixels``), so that it reads like the other methods' mean BCE (with no variance
  it equals the BCE of the mean logits); the original sums over pixels. Adam is
  invariant to this constant factor up to its epsilon.
* **Sampling without a factorisation.** Samples are drawn by reparameterisation,
  ``μ + W ε_W + √d ⊙ ε_d``, which needs no Cholesky factor; the original builds
  ``torch.distributions.LowRankMultivariateNormal``, whose constructor factorises the
  capacitance matrix ``I + Wᵀ D⁻¹ W`` and can fail, and falls back to independent
  normals for the batch when it does. Here the same fall-back is kept for what can fail:
  a factor with non-finite values is dropped for the batch (diagonal only, with a
  warning), and :func:`distribution`, which builds the ``torch.distributions`` object
  for log-densities, falls back to independent normals when the capacitance cannot be
  factorised. The diagonal is ``exp(·) + ε`` with the original's ``ε = 1e-5``, computed
  in float32 even under mixed precision.
* **Noise from an explicit generator.** Training samples draw from the generator the
  trainer passes to the loss (saved in checkpoints: resumes are bitwise); prediction
  draws from a generator seeded with ``train.seed`` on every call (reproducible members,
  the caller's global random state untouched), as MC dropout does. At prediction the
  noise is shared by the images of a batch, so an image's members do not depend on the
  batch it is predicted in, and the low-rank noise is drawn first, so that it does not
  depend on the image size either: tiles of one image share the low-rank part of each
  member (its per-pixel part differs from tile to tile). The original evaluation adds
  ``1e-3`` to the diagonal when sampling; here the training ``ε`` is kept.
* **Paired antithetic likelihood instead of a region-of-interest mask.** The original
  multiplies the factor and the diagonal by the brain mask, because the covariance of
  the background grew without bound. edue's batches have no such mask, and the
  growth is not confined to an empty background: with the original estimator
  (``method.ssn_likelihood: mc``) the factor's variance on the embedded 2D data grows
  to ≈ 17 (logit²) where every rater says background, and one sample in ten turns
  those pixels on. A mask made from the mean's own prediction (the predicted
  structures, dilated by 4 pixels) did not stop it either (soft Dice 0.61 / 0.49 after 18
  epochs). The paired estimator (default) removes the cause, the unpenalised mirror.
* **Backbone.** Any edue backbone (U-Net, smp, DynUNet; 2D and 3D) instead of
  DeepMedic. The original applies a ReLU to DeepMedic's last (linear) layer; edue's
  feature-only backbones already end in an activation, so the heads read the features
  directly, resized to the input's size where a backbone returns them smaller.
* **Prediction samples** are independent draws (no antithetic pairs), as in the
  original evaluation's random sampler; its temperature-scaled and per-class samplers
  are not provided.

Shapes:
    The network's output (what ``forward`` returns, in training and in evaluation) packs
    the distribution as a stack ``[2 + rank, B, K, *sp]``: the mean logits, the
    log-diagonal (before ``exp`` and ``ε``), then the ``rank`` columns of the factor.
    Training samples are ``[S, B, K, *sp]``; members ``[N, B, K, *sp]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import nn

from edue.data.case import random_rater
from edue.methods.base import Method
from edue.methods.registry import BuildRequest, MethodSpec, register_method
from edue.nets.backbones import Backbone
from edue.nets.pointwise import pointwise_conv

#: added to the diagonal of the covariance (the original's value)
EPSILON = 1e-5
#: rows of the packed parameters before the factor's columns (mean, log-diagonal)
_FIXED_ROWS = 2


@dataclass(frozen=True)
class LogitDistribution:
    """The parameters of a low-rank multivariate normal over an image's logits.

    Attributes:
        mean: mean logits ``[B, K, *sp]``.
        diagonal: the covariance's diagonal ``[B, K, *sp]`` (positive).
        factor: the covariance factor's columns ``[R, B, K, *sp]`` (``R = 0``: none);
            the covariance of image ``b`` is ``Σ_r f_r f_rᵀ + diag(d)`` over its flattened
            ``K × pixels`` logits.
    """

    mean: torch.Tensor
    diagonal: torch.Tensor
    factor: torch.Tensor

    @property
    def rank(self) -> int:
        """Columns of the factor ``R``."""
        return int(self.factor.shape[0])

    @property
    def variance(self) -> torch.Tensor:
        """Marginal variance of every logit ``[B, K, *sp]``: the diagonal plus the squared
        row norms of the factor."""
        return self.diagonal + self.factor.square().sum(0)


def unpack(params: torch.Tensor, epsilon: float = EPSILON) -> LogitDistribution:
    """The distribution of a network output.

    A factor with non-finite values is dropped (the diagonal alone, with a warning),
    as the original falls back to independent normals when its factorisation fails.

    Args:
        params: packed parameters ``[2 + R, B, K, *sp]`` (see the module docstring).
        epsilon: added to the diagonal.

    Returns:
        The :class:`LogitDistribution`, in float32 (or the input's wider type).
    """
    if params.shape[0] < _FIXED_ROWS:
        raise ValueError(f"packed SSN parameters need at least 2 rows, got {params.shape[0]}")
    params = params.float() if params.dtype in (torch.float16, torch.bfloat16) else params
    mean, log_diag = params[0], params[1]
    factor = params[_FIXED_ROWS:]
    if factor.shape[0] and not bool(torch.isfinite(factor).all()):
        warnings.warn(
            "SSN: the covariance factor has non-finite values; independent normals "
            "(its diagonal alone) are used for this batch",
            RuntimeWarning,
            stacklevel=2,
        )
        factor = factor[:0]
    return LogitDistribution(mean, torch.exp(log_diag) + epsilon, factor)


def sample_logits(
    dist: LogitDistribution,
    n: int,
    generator: torch.Generator | None = None,
    *,
    antithetic: bool = False,
    shared: bool = False,
) -> torch.Tensor:
    """Reparameterised samples of the logits, ``μ + W ε_W + √d ⊙ ε_d``.

    The low-rank noise ``ε_W`` is drawn before the per-pixel noise ``ε_d``.

    Args:
        dist: the distribution.
        n: samples (even with ``antithetic``).
        generator: random source (on the parameters' device); ``None``: the global one.
        antithetic: draw ``n / 2`` samples and their mirrors ``2 μ − η`` (sample ``i`` and
            ``i + n / 2`` are symmetric about the mean).
        shared: one noise for every image of the batch (each image's samples then do not
            depend on the other images).

    Returns:
        Logit samples ``[n, B, K, *sp]``, differentiable with respect to the parameters.
    """
    if antithetic and n % 2:
        raise ValueError(f"antithetic sampling needs an even number of samples, got {n}")
    mean = dist.mean
    draws = n // 2 if antithetic else n
    b = mean.shape[0]
    images = 1 if shared else b
    eps_w = (
        torch.randn(
            (draws, images, dist.rank), generator=generator, device=mean.device, dtype=mean.dtype
        )
        if dist.rank
        else None
    )
    eps_d = torch.randn(
        (draws, images, *mean.shape[1:]), generator=generator, device=mean.device, dtype=mean.dtype
    )
    if not torch.is_grad_enabled() and not antithetic:  # prediction: the same values,
        out = eps_d.expand(draws, *mean.shape).contiguous() if shared else eps_d
        out.mul_(dist.diagonal.sqrt())  # computed in place, without temporaries
        if eps_w is not None:
            columns = dist.factor.reshape(dist.rank, b, -1)  # [R, B, K·N]
            low_rank = torch.einsum("sbr,rbn->sbn", eps_w.expand(draws, b, dist.rank), columns)
            out.add_(low_rank.reshape(draws, *mean.shape))
        return out.add_(mean)
    deviation = dist.diagonal.sqrt() * eps_d
    if eps_w is not None:
        columns = dist.factor.reshape(dist.rank, b, -1)  # [R, B, K·N]
        low_rank = torch.einsum("sbr,rbn->sbn", eps_w.expand(draws, b, dist.rank), columns)
        deviation = deviation + low_rank.reshape(draws, *mean.shape)
    if antithetic:
        deviation = torch.cat([deviation, -deviation])
    return mean + deviation


def distribution(params: torch.Tensor, epsilon: float = EPSILON) -> td.Distribution:
    """The ``torch.distributions`` object of a network output, over flattened logits.

    Args:
        params: packed parameters ``[2 + R, B, K, *sp]``.
        epsilon: added to the diagonal.

    Returns:
        ``LowRankMultivariateNormal`` with batch shape ``[B]`` and event shape
        ``[K · pixels]`` (flattened structure-major, like ``mean.reshape(B, -1)``); an
        ``Independent(Normal)`` over the diagonal when ``R = 0``, or, with a warning, when
        the capacitance ``I + Wᵀ D⁻¹ W`` cannot be factorised.
    """
    dist = unpack(params, epsilon)
    b = dist.mean.shape[0]
    loc, diag = dist.mean.reshape(b, -1), dist.diagonal.reshape(b, -1)
    if dist.rank:
        factor = dist.factor.reshape(dist.rank, b, -1).permute(1, 2, 0)  # [B, K·N, R]
        try:
            return td.LowRankMultivariateNormal(loc, factor, diag)
        except (torch.linalg.LinAlgError, ValueError) as error:
            warnings.warn(
                f"SSN: the low-rank covariance cannot be factorised ({type(error).__name__}); "
                "independent normals (its diagonal alone) are used instead",
                RuntimeWarning,
                stacklevel=2,
            )
    return td.Independent(td.Normal(loc, diag.sqrt()), 1)


#: how the samples' likelihoods are combined (see the module docstring)
LIKELIHOODS = ("paired", "mc")


def ssn_loss(
    params: torch.Tensor,
    batch: dict[str, torch.Tensor],
    samples: int,
    generator: torch.Generator | None = None,
    epsilon: float = EPSILON,
    likelihood: str = "paired",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The Monte-Carlo negative log-likelihood of one random rater's mask per image.

    ``mc``: ``L = mean_b [log S − logsumexp_s ℓ_{s, b}] / (K · pixels)`` over ``S / 2``
    antithetic pairs of samples ``η`` (``ℓ = Σ_{k, pixels} log p(y_b | η_{s, b})``);
    ``paired``: the same over the ``S / 2`` pairs, each scored ``(ℓ_s + ℓ_{s'}) / 2``.

    Args:
        params: packed parameters ``[2 + R, B, K, *sp]``.
        batch: with ``masks`` ``[B, R_max, K, *sp]`` and ``rater_valid`` ``[B, R_max]``.
        samples: ``S``, even.
        generator: random source of the rater draws and of the samples (on the
            parameters' device).
        epsilon: added to the diagonal.
        likelihood: ``paired`` or ``mc`` (:data:`LIKELIHOODS`).

    Returns:
        The scalar loss and its parts: ``nll`` (the loss) and ``logit_var`` (the mean
        marginal variance of the logits).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    dist = unpack(params, epsilon)
    target = random_rater(batch["masks"], batch["rater_valid"], generator).to(dist.mean)
    logits = sample_logits(dist, samples, generator, antithetic=True)  # [S, B, K, *sp]
    bce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    log_likelihood = -bce.flatten(2).sum(-1)  # [S, B]; sample s and s + S/2 are a pair
    if likelihood == "paired":
        half = samples // 2
        log_likelihood = (log_likelihood[:half] + log_likelihood[half:]) / 2  # [S/2, B]
    per_image = math.log(log_likelihood.shape[0]) - torch.logsumexp(log_likelihood, dim=0)
    loss = per_image.mean() / target[0].numel()
    parts = {
        "nll": float(loss.detach()),
        "logit_var": float(dist.variance.detach().mean()),
    }
    return loss, parts


class SSNNetwork(nn.Module):
    """A feature-only backbone with the three 1×1 heads of the distribution.

    Args:
        backbone: a feature-only backbone (``out_channels = 0``) with ``spatial_dims``,
            ``in_channels`` and ``min_size_divisor``.
        out_channels: structures ``K``.
        rank: columns of the covariance factor ``R`` (0: diagonal only).

    Shapes:
        input ``[B, C, *sp]``; output the packed parameters ``[2 + R, B, K, *sp]``.
    """

    def __init__(self, backbone: Backbone, out_channels: int, rank: int) -> None:
        super().__init__()
        dims = int(backbone.spatial_dims)
        self.backbone = backbone
        self.out_channels = out_channels
        self.rank = rank
        width = self._probe_width(dims, int(backbone.in_channels))
        self.mean_head = pointwise_conv(dims, width, out_channels)
        self.log_diag_head = pointwise_conv(dims, width, out_channels)
        self.factor_head = pointwise_conv(dims, width, out_channels * rank) if rank else None
        self.mode = "bilinear" if dims == 2 else "trilinear"

    @torch.no_grad()
    def _probe_width(self, spatial_dims: int, in_channels: int) -> int:
        """Channels of the backbone's features (one probe pass in evaluation mode)."""
        was_training = self.backbone.training
        self.backbone.eval()
        divisor = int(getattr(self.backbone, "min_size_divisor", 16))
        size = max(2 * divisor, 32 if spatial_dims == 2 else 16)
        features = self.backbone(torch.zeros(1, in_channels, *([size] * spatial_dims)))
        self.backbone.train(was_training)
        return int(features.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Packed parameters ``[2 + R, B, K, *sp]`` of ``x`` ``[B, C, *sp]``."""
        features = self.backbone(x)
        maps = [self.mean_head(features), self.log_diag_head(features)]
        if self.factor_head is not None:
            maps.append(self.factor_head(features))
        out = torch.cat(maps, dim=1)  # [B, K (2 + R), *fsp]
        if out.shape[2:] != x.shape[2:]:
            out = F.interpolate(out, size=x.shape[2:], mode=self.mode, align_corners=False)
        b, k = out.shape[0], self.out_channels
        out = out.reshape(b, _FIXED_ROWS + self.rank, k, *out.shape[2:])
        return out.transpose(0, 1)


class SSN(Method):
    """A Stochastic Segmentation Network: one backbone pass gives a low-rank normal
    distribution over the logits; its samples are the members.

    ``forward`` returns the distribution's parameters rather than samples, in training
    and in evaluation alike: the loss draws its antithetic samples from them with the
    trainer's generator, and :meth:`members_from_logits` draws the members from them, so
    the method keeps no state between calls and validation needs no second pass.

    Args:
        backbone: a feature-only backbone (``out_channels = 0``).
        out_channels: structures ``K``.
        rank: rank of the covariance factor (0: diagonal only).
        train_samples: logit samples per image in training (even: antithetic pairs).
        samples: members drawn at prediction ``N``.
        generator_seed: seed of the prediction samples (reproducible members).
        epsilon: added to the covariance's diagonal.
        likelihood: ``paired`` (default) or ``mc``, the original estimator.

    Shapes:
        ``forward``: packed parameters ``[2 + R, B, K, *sp]`` (training and evaluation);
        members ``[N, B, K, *sp]``.
    """

    name = "ssn"
    sampled = True

    def __init__(
        self,
        backbone: Backbone,
        out_channels: int,
        rank: int = 10,
        train_samples: int = 20,
        samples: int = 16,
        generator_seed: int = 0,
        epsilon: float = EPSILON,
        likelihood: str = "paired",
    ) -> None:
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        if train_samples < 2 or train_samples % 2:
            raise ValueError(f"train_samples must be even and >= 2, got {train_samples}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        super().__init__(SSNNetwork(backbone, out_channels, rank))
        self.rank = rank
        self.train_samples = train_samples
        self.samples = samples
        self.generator_seed = generator_seed
        self.epsilon = epsilon
        self.likelihood = likelihood

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Packed distribution parameters ``[2 + R, B, K, *sp]`` of ``x`` ``[B, C, *sp]``."""
        return self.network(x)  # type: ignore[no-any-return]

    def loss(self, logits, batch, generator=None):  # type: ignore[no-untyped-def,override]
        return ssn_loss(logits, batch, self.train_samples, generator, self.epsilon, self.likelihood)

    def logit_distribution(self, params: torch.Tensor) -> LogitDistribution:
        """The :class:`LogitDistribution` of a forward's output ``[2 + R, B, K, *sp]``."""
        return unpack(params, self.epsilon)

    def members_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Members ``[N, B, K, *sp]``: sigmoids of ``N`` logit samples drawn from a
        generator seeded anew on every call (the global random state is untouched)."""
        dist = unpack(logits.float(), self.epsilon)
        generator = torch.Generator(device=dist.mean.device).manual_seed(self.generator_seed)
        return torch.sigmoid_(sample_logits(dist, self.samples, generator, shared=True))

    @torch.no_grad()
    def logit_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Analytic marginal variance of the logits ``[B, K, *sp]`` of ``x`` ``[B, C, *sp]``
        (the diagonal plus the squared row norms of the factor), from one pass."""
        return self.logit_distribution(self.forward(x).float()).variance

    @property
    def n_members(self) -> int:
        return self.samples


def _build(request: BuildRequest) -> SSN:
    m = request.config.method
    return SSN(
        request.backbone(0),
        request.out_channels,
        rank=m.ssn_rank,
        train_samples=m.ssn_samples,
        samples=m.samples,
        generator_seed=request.config.train.seed,
        likelihood=m.ssn_likelihood,
    )


SPEC = register_method(
    MethodSpec(
        name="ssn",
        label="SSN",
        build=_build,
        members=lambda config: config.method.samples,
        one_pass=True,
        summary="a low-rank normal distribution over the logits, sampled after one pass",
        order=50,
    )
)
