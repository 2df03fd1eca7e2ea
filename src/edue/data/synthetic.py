"""The embedded default dataset: seeded fundus-like images annotated by several raters.

A case is a colour image ``[3, H, W]`` with two nested structures, the optic disc
(structure 0) and the optic cup (structure 1, inside the disc), and the binary masks of
``R`` raters ``[R, 2, H, W]``. Each structure has an *ambiguity* ``a`` in [0, 1] per
image that drives both what the image shows and how much the raters disagree:

* rater ``r`` marks a pixel when ``sd + s_b(a) * b_r + s_j(a) * j_r(theta) < 0``, with
  ``sd`` the radial signed distance to the true boundary (``rho - R(theta)`` around the
  structure's centre, negative inside; close to the Euclidean one for these near-round
  shapes), ``b_r`` the rater's persistent bias (unit-RMS normal quantiles spread over the
  panel and permuted by the seed: some raters draw larger, some smaller), ``j_r`` a
  smooth angular jitter (harmonics 1..4, drawn per rater and case, standard normal at
  every angle) and ``s_b``, ``s_j`` growing linearly with ``a`` (pixels);
* the image shows each structure as a Gaussian-CDF-like step of ``sd`` whose spread is
  the raters' offset spread ``hypot(s_b, s_j)`` (plus the global blur), with a contrast
  that drops with ``a``: blurry, faint boundaries are the ones raters disagree on.

``rater_probability`` is ``mean_r Phi(-(sd + s_b b_r) / s_j)``, the exact expectation of
the soft vote over the jitter for this panel (for a large panel it tends to the
population value ``Phi(-sd / hypot(s_b, s_j))``). The only approximation is the clipping
``cup &= disc``, made rare by keeping the true cup at least 2.5 standard deviations of the
disc-minus-cup offset (+1 px) inside the disc (the cup is shrunk when needed).

A case depends only on ``(seed, index, config)``, not on how many cases are made or in
which order; rater styles depend only on ``seed`` and ``n_raters``; the image does not
depend on ``n_raters``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from edue.data._generate import (
    LOGISTIC_SCALE,
    Range,
    check_common,
    lerp,
    rater_biases,
    uniform,
)
from edue.data.case import MultiRaterCase
from edue.errors import ConfigError

STRUCTURES = ("disc", "cup")
SPLIT_STRIDE = 100_000  # index offset between the train, val and test ranges
_N_HARMONICS = 4  # jitter harmonics 1..4
_REF_SIZE = 128.0  # pixel quantities in the config refer to a 128-pixel image

Grid = tuple[np.ndarray, np.ndarray]  # pixel x (column) and y (row) coordinates, [H, W] each


@dataclass
class FundusConfig:
    """Knobs of the fundus-like generator (pixel quantities refer to a 128² image).

    Attributes:
        size: image height and width ``H = W``.
        n_raters: number of raters ``R``.
        ambiguity_range: range of the per-structure ambiguity ``a`` (uniform).
        disc_radius_range: mean disc radius as a fraction of ``size``.
        center_range: disc centre coordinates as a fraction of ``size``.
        cup_ratio_range: mean cup radius as a fraction of the disc radius.
        eccentricity: maximum ``|log(axis ratio)| / 2`` of the ellipses.
        irregularity: amplitude of the low-frequency radial perturbation (harmonics 2..4).
        bias_std: rater bias scale ``s_b`` in pixels at ambiguity 0 and at ambiguity 1.
        jitter_std: rater jitter scale ``s_j`` in pixels at ambiguity 0 and at ambiguity 1.
        contrast_loss: fraction of a structure's contrast lost at ambiguity 1.
        disc_contrast_range: blend weight of the disc colour over the background.
        cup_contrast_range: blend weight of the cup colour over the disc.
        blur_range: global Gaussian blur sigma in pixels.
        noise_range: standard deviation of the additive white noise.
        texture_range: amplitude of the multiplicative low-frequency background texture.
        vessel_range: number of vessels (inclusive range).
    """

    size: int = 128
    n_raters: int = 6
    ambiguity_range: Range = (0.0, 1.0)
    disc_radius_range: Range = (0.18, 0.30)
    center_range: Range = (0.42, 0.58)
    cup_ratio_range: Range = (0.4, 0.7)
    eccentricity: float = 0.12
    irregularity: float = 0.02
    bias_std: Range = (0.2, 2.4)
    jitter_std: Range = (0.3, 2.4)
    contrast_loss: float = 0.45
    disc_contrast_range: Range = (0.6, 0.85)
    cup_contrast_range: Range = (0.5, 0.8)
    blur_range: Range = (0.0, 0.8)
    noise_range: Range = (0.005, 0.03)
    texture_range: Range = (0.02, 0.06)
    vessel_range: tuple[int, int] = (4, 8)

    def check(self) -> FundusConfig:
        """Raise :class:`ConfigError` if a value is out of range; return ``self``."""
        check_common(self, "synthetic")
        if not 0.0 < self.cup_ratio_range[0] <= self.cup_ratio_range[1] < 0.9:
            raise ConfigError(f"cup_ratio_range must lie in (0, 0.9), got {self.cup_ratio_range}")
        return self


def _harmonics(c: np.ndarray, s: np.ndarray, k_max: int) -> tuple[list, list]:
    """``cos(k theta)`` and ``sin(k theta)`` for ``k = 1..k_max`` from ``c, s = cos, sin``."""
    cos, sin = [c], [s]
    for _ in range(k_max - 1):
        cos.append(cos[-1] * c - sin[-1] * s)
        sin.append(sin[-1] * c + cos[-2] * s)
    return cos, sin


@dataclass(frozen=True)
class _Shape:
    """A slightly irregular ellipse in pixel coordinates (x = column, y = row)."""

    cx: float
    cy: float
    axis_a: float
    axis_b: float
    angle: float
    wobble: tuple[float, ...]  # cos/sin coefficients of harmonics 2..4 (6 values)

    def radius(self, cos: list, sin: list) -> np.ndarray:
        """Boundary radius in the directions whose harmonics 1..4 are ``cos``, ``sin``."""
        ca, sa = float(np.cos(self.angle)), float(np.sin(self.angle))
        ct = cos[0] * ca + sin[0] * sa  # cos(theta - angle)
        st = sin[0] * ca - cos[0] * sa
        ellipse = (
            self.axis_a * self.axis_b / np.sqrt((self.axis_b * ct) ** 2 + (self.axis_a * st) ** 2)
        )
        w = self.wobble
        rel = 1.0 + w[0] * cos[1] + w[1] * sin[1] + w[2] * cos[2] + w[3] * sin[2]
        return ellipse * (rel + w[4] * cos[3] + w[5] * sin[3])

    def polar(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list, list]:
        """Radial signed distance (negative inside) of points ``(x, y)`` and their angular
        harmonics ``cos(k theta)``, ``sin(k theta)`` for ``k = 1..4`` around the centre."""
        dx, dy = x - self.cx, y - self.cy
        rho = np.sqrt(dx * dx + dy * dy)
        inv = 1.0 / np.maximum(rho, 1e-6)
        c = np.where(rho > 1e-6, dx * inv, 1.0).astype(dx.dtype)  # theta = 0 at the centre
        cos, sin = _harmonics(c, dy * inv, _N_HARMONICS)
        return rho - self.radius(cos, sin), cos, sin

    def describe(self) -> dict[str, object]:
        """Centre, semi-axes and rotation, for ``meta``."""
        return {
            "center": [self.cx, self.cy],
            "axes": [self.axis_a, self.axis_b],
            "angle": self.angle,
        }

    def scaled(self, factor: float) -> _Shape:
        """The same shape with both axes multiplied by ``factor``."""
        return _Shape(
            self.cx, self.cy, self.axis_a * factor, self.axis_b * factor, self.angle, self.wobble
        )


def _random_shape(
    rng: np.random.Generator, cx: float, cy: float, radius: float, cfg: FundusConfig
) -> _Shape:
    stretch = float(np.exp(rng.uniform(-cfg.eccentricity, cfg.eccentricity)))
    wobble = tuple(rng.normal(0.0, cfg.irregularity / np.sqrt(2.0), size=6).tolist())
    angle = float(rng.uniform(0, np.pi))
    return _Shape(cx, cy, radius * stretch, radius / stretch, angle, wobble)


def _vessels(
    rng: np.random.Generator, grid: Grid, disc: _Shape, blur: float, px: float, cfg: FundusConfig
) -> np.ndarray:
    """Darkening map ``[H, W]`` in [0, 0.4] of smooth curved vessels leaving the disc.

    The Gaussian cross-section already includes the global blur ``blur`` (pixels).
    """
    xx, yy = grid
    n = xx.shape[0]
    count = int(rng.integers(cfg.vessel_range[0], cfg.vessel_range[1] + 1))
    dx, dy = xx - disc.cx, yy - disc.cy
    rho = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    start = 0.3 * (disc.axis_a + disc.axis_b) / 2
    fade = np.clip((rho - start) / start, 0.0, 1.0)
    fade = fade * fade * (3 - 2 * fade)
    rho_taper = rho / (1.2 - 0.5 * np.minimum(rho / n, 1.0))  # vessels thin out outwards
    log_dark = np.full_like(rho, -30.0)  # max over vessels of log(depth * profile)
    two_pi = 2 * np.pi
    for v in range(count):
        # the main arcades go up and down, the others anywhere
        base = (-np.pi / 2 if v % 2 else np.pi / 2) if v < 4 else rng.uniform(-np.pi, np.pi)
        direction = base + rng.uniform(-0.6, 0.6)
        bend = float(rng.choice([-1.0, 1.0])) * rng.uniform(0.3, 1.2) / n
        width = rng.uniform(0.7, 1.5) * px
        blurred = np.sqrt(width**2 + blur**2)
        depth = rng.uniform(0.2, 0.4) * width / blurred
        offset = theta - (direction - bend * start) - bend * rho
        offset -= two_pi * np.round(offset / two_pi)  # wrap to [-pi, pi]
        across = rho_taper * offset
        np.maximum(log_dark, np.log(depth) - (0.5 / blurred**2) * across * across, out=log_dark)
    return np.exp(log_dark) * fade


def _render(
    rng: np.random.Generator,
    grid: Grid,
    sd: np.ndarray,
    amb: np.ndarray,
    spread: np.ndarray,
    disc: _Shape,
    cfg: FundusConfig,
    px: float,
) -> tuple[np.ndarray, float]:
    """Draw the image ``[3, H, W]`` float32 in [0, 1]; also return the global blur sigma.

    ``sd`` ``[2, H, W]`` are the signed distances of disc and cup, ``spread`` ``[2]`` the
    standard deviations of the raters' offsets and ``amb`` ``[2]`` the ambiguities. Each
    edge is a Gaussian-CDF-like step (a logistic) with standard deviation ``spread``,
    widened by the global blur ``b`` to ``sqrt(spread**2 + b**2)``, which is what blurring
    the whole picture would give (the blur is applied analytically, the noise after it).
    """
    xx, yy = grid
    n = xx.shape[0]
    blur = uniform(rng, cfg.blur_range) * px
    base = np.array([0.78, 0.36, 0.17]) * rng.uniform(0.85, 1.1, size=3)
    disc_col = np.array([0.95, 0.70, 0.45]) * rng.uniform(0.92, 1.05, size=3)
    cup_col = np.array([1.0, 0.96, 0.86])
    loss = 1.0 - cfg.contrast_loss * amb
    c_disc = uniform(rng, cfg.disc_contrast_range) * float(loss[0])
    c_cup = uniform(rng, cfg.cup_contrast_range) * float(loss[1])
    # edges: logistic steps with the same spread as the raters' offsets
    width = np.sqrt(spread**2 + blur**2) / LOGISTIC_SCALE  # sigmoid(1.702 t) ~ Phi(t)
    step_d = 0.5 - 0.5 * np.tanh(sd[0] * float(0.5 / width[0]))
    step_c = 0.5 - 0.5 * np.tanh(sd[1] * float(0.5 / width[1]))
    # low-frequency texture: random plane waves cos(fx x + fy y + phase), separable
    freq = rng.uniform(0.5, 3.0, size=6) * 2 * np.pi / n
    ang, phase = rng.uniform(0, np.pi, size=6), rng.uniform(0, 2 * np.pi, size=6)
    ax = np.outer(np.arange(n), freq * np.cos(ang)) + phase  # [W, 6]
    ay = np.outer(np.arange(n), freq * np.sin(ang))  # [H, 6]
    texture = (np.cos(ay) @ np.cos(ax).T - np.sin(ay) @ np.sin(ax).T).astype(np.float32)
    texture *= uniform(rng, cfg.texture_range) / 1.7
    vx, vy = uniform(rng, (0.3, 0.7)) * n, uniform(rng, (0.3, 0.7)) * n
    light = (
        rng.uniform(0.85, 1.1)
        + rng.uniform(-0.25, 0.25) * (xx / n - 0.5)
        + rng.uniform(-0.25, 0.25) * (yy / n - 0.5)
        - rng.uniform(0.3, 0.9) * ((xx - vx) ** 2 + (yy - vy) ** 2) / n**2
    )
    dark = _vessels(rng, grid, disc, blur, px, cfg)
    channels = []
    for ch, shade in enumerate((0.55, 1.0, 0.9)):
        c = float(base[ch]) * (1.0 + texture)
        c += (float(disc_col[ch]) - c) * (c_disc * step_d)
        c += (float(cup_col[ch]) - c) * (c_cup * step_c)
        channels.append(c * (1.0 - shade * dark) * light)
    img = np.stack(channels)
    # white noise: difference of two uniforms (triangular, cheaper than Gaussian), std sigma
    noise = rng.random((2, *img.shape), dtype=np.float32)
    img += (uniform(rng, cfg.noise_range) * 6**0.5) * (noise[0] - noise[1])
    return np.clip(img, 0.0, 1.0, out=img).astype(np.float32, copy=False), blur


def _rater_probability(sd: np.ndarray, biases: np.ndarray, s_b: float, s_j: float) -> np.ndarray:
    """``mean_r Phi(-(sd + s_b b_r) / s_j)`` for one structure ``[H, W]``.

    The function of ``sd`` is tabulated on 4097 points across the band where it is not
    0 or 1 (to within 1e-15) and interpolated linearly (error below 1e-5).
    """
    half = s_b * float(np.abs(biases).max()) + 8.0 * s_j
    table_x = np.linspace(-half, half, 4097)
    table = ndtr(-(table_x[None, :] + (s_b * biases)[:, None]) / s_j).mean(0)
    flat = sd.ravel()
    prob = (flat < 0).astype(np.float32)
    band = np.flatnonzero(np.abs(flat) < half)
    pos = (flat[band] + half) * (4096 / (2 * half))
    i = np.minimum(pos.astype(np.int64), 4095)
    frac = pos - i
    prob[band] = table[i] * (1 - frac) + table[i + 1] * frac
    return prob.reshape(sd.shape)


def generate_case(index: int, seed: int = 0, config: FundusConfig | None = None) -> MultiRaterCase:
    """Generate one synthetic fundus-like case.

    Args:
        index: case index (non-negative); with ``seed`` it fully determines the case.
        seed: generator seed (non-negative); also fixes the rater styles.
        config: generator settings (defaults: 128², 6 raters).

    Returns:
        A :class:`MultiRaterCase` with ``image`` float32 ``[3, H, W]`` in [0, 1],
        ``masks`` uint8 ``[R, 2, H, W]`` (disc, cup; cup inside disc for every rater),
        ``rater_probability`` float32 ``[2, H, W]`` (expected soft vote) and ``meta``
        holding ``ambiguity`` ``[a_disc, a_cup]``, ``seed``, ``index``, the geometry and
        the rater offset scales.

    Raises:
        ConfigError: on a negative seed or index or an invalid config.
    """
    cfg = (config or FundusConfig()).check()
    if index < 0 or seed < 0:
        raise ConfigError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    n, n_r = int(cfg.size), int(cfg.n_raters)
    px = n / _REF_SIZE
    image_ss, rater_ss = np.random.SeedSequence([seed, index]).spawn(2)
    rng = np.random.default_rng(image_ss)

    # ---- ambiguity, rater offset scales (pixels) and geometry
    amb = rng.uniform(*cfg.ambiguity_range, size=2)
    s_b = [lerp(cfg.bias_std, float(a)) * px for a in amb]
    s_j = [lerp(cfg.jitter_std, float(a)) * px for a in amb]
    disc_r = uniform(rng, cfg.disc_radius_range) * n
    cx, cy = uniform(rng, cfg.center_range) * n, uniform(rng, cfg.center_range) * n
    disc = _random_shape(rng, cx, cy, disc_r, cfg)
    ratio = uniform(rng, cfg.cup_ratio_range)
    shift, shift_dir = rng.uniform(0, 0.08) * disc_r, rng.uniform(-np.pi, np.pi)
    cup = _random_shape(
        rng, cx + shift * np.cos(shift_dir), cy + shift * np.sin(shift_dir), ratio * disc_r, cfg
    )
    # keep the cup inside the disc by 2.5 std of the disc-minus-cup rater offset (+1 px)
    margin = 2.5 * np.sqrt((s_b[0] - s_b[1]) ** 2 + s_j[0] ** 2 + s_j[1] ** 2) + px
    ring = np.linspace(-np.pi, np.pi, 180, endpoint=False)
    ring_cs = _harmonics(np.cos(ring), np.sin(ring), _N_HARMONICS)
    shrink = 1.0
    for _ in range(60):
        edge = cup.radius(*ring_cs)
        gap = -disc.polar(cup.cx + edge * ring_cs[0][0], cup.cy + edge * ring_cs[1][0])[0]
        if gap.min() >= margin:
            break
        cup, shrink = cup.scaled(0.97), shrink * 0.97

    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    geo = [disc.polar(xx, yy), cup.polar(xx, yy)]
    sd = np.stack([g[0] for g in geo])  # [2, H, W] radial signed distance

    # ---- image
    image, blur = _render(rng, (xx, yy), sd, amb, np.hypot(s_b, s_j), disc, cfg, px)

    # ---- raters: mask = sd + s_b * b_r + s_j * j_r(theta) < 0
    rrng = np.random.default_rng(rater_ss)
    biases = rater_biases(seed, n_r)
    k = np.arange(1, _N_HARMONICS + 1)
    weights = np.tile(np.sqrt((1.0 / k) / np.sum(1.0 / k)), 2)  # unit total variance
    coef = rrng.standard_normal((n_r, 2, 2 * _N_HARMONICS)) * weights
    masks = np.empty((n_r, 2, n, n), dtype=bool)
    prob = np.empty((2, n, n), dtype=np.float32)
    for s, (sd_s, cos, sin) in enumerate(geo):
        basis = np.stack(cos + sin).reshape(2 * _N_HARMONICS, n * n)
        # einsum: a single-threaded loop without temporaries (no BLAS threads for tiny sums)
        offset = np.einsum("rh,hp->rp", (s_j[s] * coef[:, s]).astype(np.float32), basis)
        offset += (s_b[s] * biases).astype(np.float32)[:, None]
        masks[:, s] = (offset.reshape(n_r, n, n) + sd_s) < 0
        prob[s] = _rater_probability(sd_s, biases, s_b[s], s_j[s])
    clipped = int(np.count_nonzero(masks[:, 1] & ~masks[:, 0]))
    masks[:, 1] &= masks[:, 0]

    meta: dict[str, object] = {
        "ambiguity": [float(amb[0]), float(amb[1])],
        "seed": int(seed),
        "index": int(index),
        "generator": "edue.data.synthetic",
        "disc": disc.describe(),
        "cup": {**cup.describe(), "shrink": shrink},
        "offset_std": {"bias": s_b, "jitter": s_j},
        "rater_bias": biases.tolist(),
        "blur": blur,
        "clipped_cup_pixels": clipped,
    }
    return MultiRaterCase(
        image=image,
        masks=masks.view(np.uint8),
        case_id=f"synth-{seed}-{index:05d}",
        structures=STRUCTURES,
        rater_probability=prob,
        meta=meta,
    )


def generate_cases(
    n: int, seed: int = 0, config: FundusConfig | None = None, start: int = 0
) -> list[MultiRaterCase]:
    """Generate the cases with indices ``start .. start + n - 1``.

    Args:
        n: number of cases.
        seed: generator seed.
        config: generator settings.
        start: first case index.

    Returns:
        ``n`` cases, each as described in :func:`generate_case`.
    """
    if n < 0:
        raise ConfigError(f"number of synthetic cases must be >= 0, got {n}")
    return [generate_case(start + i, seed, config) for i in range(n)]


def make_splits(
    n_train: int, n_val: int, n_test: int, seed: int = 0, config: FundusConfig | None = None
) -> dict[str, list[MultiRaterCase]]:
    """Train, validation and test cases from disjoint index ranges.

    The ranges start at ``0``, ``SPLIT_STRIDE`` and ``2 * SPLIT_STRIDE``, so they never
    overlap and a split's cases do not change when another split's size changes.

    Args:
        n_train: training cases (at most ``SPLIT_STRIDE``), likewise ``n_val``, ``n_test``.
        seed: generator seed.
        config: generator settings.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for name, count in sizes.items():
        if not 0 <= count <= SPLIT_STRIDE:
            raise ConfigError(f"synthetic {name} size must be in [0, {SPLIT_STRIDE}], got {count}")
    return {
        name: generate_cases(count, seed, config, start=i * SPLIT_STRIDE)
        for i, (name, count) in enumerate(sizes.items())
    }
