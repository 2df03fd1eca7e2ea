"""Seeded PET/CT-like volumes with a primary tumour and lymph nodes, several raters each.

Each case is a 2-channel volume ``[2, D, H, W]`` (channel 0 CT-like after a fixed
window, channel 1 PET-like, both in [0, 1]) with two structures, the primary tumour
``GTVp`` (structure 0, one irregular blob) and the lymph nodes ``GTVn`` (structure 1,
the union of 0–3 smaller blobs; empty for every rater when a case has no node), and
the binary masks of ``R`` raters ``[R, 2, D, H, W]``.

Geometry lives in millimetres on an anisotropic grid (``case.spacing`` per array axis,
``case.affine = diag(spacing)`` with a world origin). A blob is an ellipsoid whose
radius is perturbed by a low-frequency function of the direction ``u`` from its centre;
``sd(x)`` is the radial signed distance to its boundary (negative inside).

Each structure has an *ambiguity* ``a`` in [0, 1] that drives both the image and the
raters, as in the 2D generator (:mod:`edue.data.synthetic`):

* the PET uptake edge is a logistic step of ``sd`` whose width equals the raters'
  offset spread (diffuse for large ``a``); CT contrast and PET uptake drop with ``a``;
* rater ``r`` marks a voxel when ``sd(x) + s_b(a) b_r + s_j(a) j_r(u) < 0``, with the
  persistent rater bias ``b_r`` (:func:`~edue.data.synthetic.rater_biases`) and a jitter
  ``j_r(u) = sum_f sqrt(w_f) (g_f cos(k_f . u) + h_f sin(k_f . u))`` that is smooth over
  the surface and, since ``sum_f w_f = 1`` and ``g, h ~ N(0, 1)``, exactly standard
  normal at every direction.

Hence a rater marks a voxel of one blob with probability ``Phi(-(sd + s_b b_r) / s_j)``;
node jitters are independent, so for the union of nodes it is
``1 - prod_n (1 - Phi(-(sd_n + s_b b_r) / s_j))``. ``rater_probability [2, D, H, W]`` is
the mean over the panel: the expected soft vote, exact (no clipping is involved).

A case depends only on ``(seed, index, config)``; its image does not depend on
``n_raters`` and the rater styles depend only on ``seed`` and ``n_raters``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter
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

STRUCTURES_3D = ("GTVp", "GTVn")
_REF_SIZE = 64.0  # lengths in the config are in in-plane voxels of a 64-voxel volume
_KEY = 0x3D  # extra entropy word: 3D cases never share a stream with 2D ones
_WAVES = np.array([1.0, 1.8, 2.6, 3.4, 4.2, 5.0])  # |k| of the directional waves
_WAVE_WEIGHTS = (1.0 / _WAVES) / np.sum(1.0 / _WAVES)  # variance share of each wave

Spacing = tuple[float, float, float]


@dataclass
class Volume3DConfig:
    """Knobs of the PET/CT-like generator (lengths in voxels of a 64-voxel volume).

    Attributes:
        size: volume size ``D = H = W``.
        n_raters: number of raters ``R``.
        spacing: voxel spacing in mm per array axis ``(z, y, x)``; ``None`` draws one
            per case from ``spacing_choices``.
        spacing_choices: anisotropic spacings drawn from when ``spacing`` is ``None``.
        ambiguity_range: range of the per-structure ambiguity ``a`` (uniform).
        tumour_radius_range: mean GTVp radius as a fraction of the in-plane field of view.
        node_radius_range: mean radius of each node, likewise.
        node_count_range: number of nodes (inclusive range; fewer when they do not fit).
        eccentricity: maximum ``|log(axis ratio)|`` of the ellipsoid axes.
        irregularity: amplitude of the low-frequency radial perturbation.
        bias_std: rater bias scale ``s_b`` at ambiguity 0 and at ambiguity 1.
        jitter_std: rater jitter scale ``s_j`` at ambiguity 0 and at ambiguity 1.
        ct_contrast_range: CT density added by the tumour (window units).
        contrast_loss: fraction of CT contrast lost at ambiguity 1.
        uptake_loss: fraction of PET uptake lost at ambiguity 1.
        tumour_uptake_range: PET value of the tumour.
        node_uptake_range: PET value of the nodes.
        ct_noise_range: standard deviation of the CT noise.
        pet_noise_range: PET noise scale (Poisson-like, grows with the uptake).
        pet_blur: PET point-spread sigma in reference voxels.
    """

    size: int = 64
    n_raters: int = 4
    spacing: Spacing | None = None
    spacing_choices: tuple[Spacing, ...] = ((2.0, 1.0, 1.0), (1.5, 1.0, 1.0), (2.0, 1.25, 1.25))
    ambiguity_range: Range = (0.0, 1.0)
    tumour_radius_range: Range = (0.11, 0.16)
    node_radius_range: Range = (0.05, 0.075)
    node_count_range: tuple[int, int] = (0, 3)
    eccentricity: float = 0.2
    irregularity: float = 0.05
    bias_std: Range = (0.15, 1.3)
    jitter_std: Range = (0.2, 1.3)
    ct_contrast_range: Range = (0.08, 0.14)
    contrast_loss: float = 0.7
    uptake_loss: float = 0.35
    tumour_uptake_range: Range = (0.6, 0.95)
    node_uptake_range: Range = (0.3, 0.55)
    ct_noise_range: Range = (0.01, 0.03)
    pet_noise_range: Range = (0.02, 0.05)
    pet_blur: float = 0.6

    def check(self) -> Volume3DConfig:
        """Raise :class:`ConfigError` if a value is out of range; return ``self``."""
        check_common(self, "synthetic3d")
        n_lo, n_hi = self.node_count_range
        if not 0 <= n_lo <= n_hi <= 6:
            raise ConfigError(f"node_count_range must lie in [0, 6], got {self.node_count_range}")
        choices = [self.spacing] if self.spacing is not None else list(self.spacing_choices)
        if not choices or any(len(s) != 3 or min(s) <= 0 for s in choices):
            raise ConfigError("spacing must be three positive values (z, y, x) in mm")
        return self


def _directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random unit vectors ``[n, 3]``."""
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _waves(u: tuple[np.ndarray, ...], k: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``sum_f coef[f, 0] cos(k_f . u) + coef[f, 1] sin(k_f . u)`` at directions ``u``.

    Args:
        u: the three components of unit vectors, arrays of one shape.
        k: ``[F, 3]`` wave vectors.
        coef: ``[F, 2]`` cosine and sine amplitudes.
    """
    out = np.zeros_like(u[0])
    for kf, cf in zip(k.astype(np.float32), coef.astype(np.float32), strict=True):
        phase = kf[0] * u[0] + kf[1] * u[1] + kf[2] * u[2]
        out += cf[0] * np.cos(phase) + cf[1] * np.sin(phase)
    return out


@dataclass(frozen=True)
class _Blob:
    """An irregular ellipsoid in mm (world axes ``z, y, x`` relative to the volume corner)."""

    center: np.ndarray  # [3]
    axes: np.ndarray  # [3] semi-axes along the columns of ``rotation``
    rotation: np.ndarray  # [3, 3]
    wave_k: np.ndarray  # [F, 3]
    wave_c: np.ndarray  # [F, 2] relative radius perturbation

    @property
    def max_radius(self) -> float:
        """An upper bound of the boundary radius in any direction."""
        return float(self.axes.max() * (1.0 + np.abs(self.wave_c).sum()))

    def field(
        self, grid: tuple[np.ndarray, ...], box: tuple[slice, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Radial signed distance ``[*box]`` (mm) and unit directions inside ``box``."""
        d = [
            (g.reshape(-1)[b] - np.float32(c)).reshape([-1 if i == a else 1 for i in range(3)])
            for a, (g, b, c) in enumerate(zip(grid, box, self.center, strict=True))
        ]
        rho = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
        inv = 1.0 / np.maximum(rho, 1e-6)
        u = (np.where(rho > 1e-6, d[0] * inv, 1.0), d[1] * inv, d[2] * inv)
        rot = self.rotation.astype(np.float32)
        quad = np.zeros_like(rho)
        for i in range(3):  # coordinates in the ellipsoid frame
            v = rot[0, i] * u[0] + rot[1, i] * u[1] + rot[2, i] * u[2]
            quad += (v / np.float32(self.axes[i])) ** 2
        radius = (1.0 + _waves(u, self.wave_k, self.wave_c)) / np.sqrt(quad)
        return rho - radius, u


def _random_blob(
    rng: np.random.Generator, center: np.ndarray, radius: float, cfg: Volume3DConfig
) -> _Blob:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    eta = rng.uniform(-cfg.eccentricity, cfg.eccentricity, size=3)
    eta -= eta.mean()
    k = _directions(rng, 4) * np.array([1.0, 1.5, 2.0, 2.5])[:, None]
    coef = rng.normal(0.0, cfg.irregularity / np.sqrt(8.0), size=(4, 2))
    return _Blob(center, radius * np.exp(eta), q * np.sign(np.diag(r)), k, coef)


def _place(
    rng: np.random.Generator,
    extent: np.ndarray,
    centre: np.ndarray,
    spread: np.ndarray,
    reach: float,
    others: list[tuple[np.ndarray, float]],
) -> np.ndarray | None:
    """A centre ``centre + U(-spread, spread)`` keeping ``reach`` mm inside the volume and
    away from ``others`` (centre, reach); ``None`` after 30 failed tries."""
    for _ in range(30):
        c = centre + rng.uniform(-1.0, 1.0, size=3) * spread
        inside = np.all(c - reach >= 0) and np.all(c + reach <= extent)
        if inside and all(np.linalg.norm(c - oc) > reach + orr for oc, orr in others):
            return c
    return None


def _geometry(
    rng: np.random.Generator, cfg: Volume3DConfig, extent: np.ndarray, fov: float, pad: list
) -> tuple[_Blob, list[_Blob]]:
    """The tumour and the nodes (in mm); ``pad[k]`` is the extra reach of structure ``k``."""
    mid = extent / 2
    radius = uniform(rng, cfg.tumour_radius_range) * fov
    spread = np.array([0.08 * fov, 0.08 * fov, 0.08 * fov])
    tumour = _random_blob(rng, mid, radius, cfg)
    reach = tumour.max_radius + pad[0]
    centre = _place(rng, extent, mid + np.array([0.0, -0.04 * fov, 0.0]), spread, reach, [])
    tumour = tumour if centre is None else replace(tumour, center=centre)
    placed = [(tumour.center, tumour.max_radius + pad[0])]
    nodes = []
    for _ in range(int(rng.integers(cfg.node_count_range[0], cfg.node_count_range[1] + 1))):
        side = float(rng.choice([-1.0, 1.0]))
        node_centre = mid + np.array([0.0, 0.02 * fov, side * 0.26 * fov])
        node = _random_blob(rng, node_centre, uniform(rng, cfg.node_radius_range) * fov, cfg)
        spread = np.array([0.45 * fov, 0.08 * fov, 0.05 * fov])
        reach = node.max_radius + pad[1]
        c = _place(rng, extent, node_centre, spread, reach, placed)
        if c is not None:
            nodes.append(replace(node, center=c))
            placed.append((c, reach))
    return tumour, nodes


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates in mm of an ``n³`` volume (``coords[a]`` varies on axis ``a``)."""

    n: int
    spacing: np.ndarray  # [3] mm per voxel (z, y, x)

    @property
    def extent(self) -> np.ndarray:
        return self.n * self.spacing

    @property
    def unit(self) -> float:
        """Millimetres per reference voxel (in-plane voxel of a 64-voxel volume)."""
        return float(self.extent[1]) / _REF_SIZE

    @property
    def coords(self) -> tuple[np.ndarray, ...]:
        axis = np.arange(self.n, dtype=np.float32) + 0.5
        shapes = ([-1, 1, 1], [1, -1, 1], [1, 1, -1])
        return tuple(
            (axis * np.float32(s)).reshape(sh) for s, sh in zip(self.spacing, shapes, strict=True)
        )

    def box(self, blob: _Blob, reach: float) -> tuple[slice, ...]:
        """Voxel slices of the cube ``blob.center ± reach`` mm, clipped to the volume."""
        lo = np.floor((blob.center - reach) / self.spacing - 0.5).astype(int)
        hi = np.ceil((blob.center + reach) / self.spacing - 0.5).astype(int) + 1
        return tuple(slice(max(0, a), min(self.n, b)) for a, b in zip(lo, hi, strict=True))


def _texture(rng: np.random.Generator, grid: _Grid, wavelength: float) -> np.ndarray:
    """Smooth texture of unit RMS: four random plane waves, wavelengths ≥ ``wavelength/4``."""
    z, y, x = grid.coords
    out = np.zeros((grid.n,) * 3, dtype=np.float32)
    for _ in range(4):
        k = _directions(rng, 1)[0] * rng.uniform(1.0, 4.0) * 2 * np.pi / wavelength
        out += np.cos(k[0] * z + k[1] * y + (k[2] * x + np.float32(rng.uniform(0, 2 * np.pi))))
    return out * np.float32(np.sqrt(0.5))


def _logistic(t: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-t))`` without overflow warnings."""
    return 0.5 + 0.5 * np.tanh(0.5 * t)


def _steps(blobs: list[list[_Blob]], width: np.ndarray, grid: _Grid) -> np.ndarray:
    """Soft indicator ``[2, D, H, W]`` of each structure: logistic steps of ``-sd / width``."""
    steps = np.zeros((2, *(grid.n,) * 3), dtype=np.float32)
    coords = grid.coords
    for k, group in enumerate(blobs):
        for blob in group:
            box = grid.box(blob, blob.max_radius + 10.0 * width[k] + grid.unit)
            sd, _ = blob.field(coords, box)
            np.maximum(steps[k][box], _logistic(-sd / np.float32(width[k])), out=steps[k][box])
    return steps


def _render(
    rng: np.random.Generator, grid: _Grid, steps: np.ndarray, amb: np.ndarray, cfg: Volume3DConfig
) -> np.ndarray:
    """CT-like and PET-like channels ``[2, D, H, W]`` float32 in [0, 1]."""
    (z, y, x), fov, unit, mid = grid.coords, float(grid.extent[1]), grid.unit, grid.extent / 2
    # body: an elliptic cylinder narrowing towards both ends, a fat layer, a spine
    taper = 1.0 - 0.3 * ((z - mid[0]) / grid.extent[0]) ** 2
    ay, ax = uniform(rng, (0.32, 0.38)) * fov, uniform(rng, (0.38, 0.45)) * fov
    rb = np.sqrt(((y - mid[1]) / ay) ** 2 + ((x - mid[2]) / ax) ** 2) / taper
    body = _logistic((1.0 - rb) * ay / unit)
    fat = body * _logistic((rb - 0.88) * ay / unit)
    spine_r = np.sqrt((y - mid[1] - 0.62 * ay) ** 2 + (x - mid[2]) ** 2) + 0 * z
    spine = _logistic((0.11 * fov - spine_r) / unit)
    ct = body * (0.5 + 0.02 * _texture(rng, grid, fov)) - 0.28 * fat + 0.45 * spine
    loss = 1.0 - cfg.contrast_loss * amb
    ct += uniform(rng, cfg.ct_contrast_range) * float(loss[0]) * steps[0]
    ct += uniform(rng, cfg.ct_contrast_range) * float(loss[1]) * steps[1]
    ct += uniform(rng, cfg.ct_noise_range) * rng.standard_normal(ct.shape, dtype=np.float32)
    # PET: low background, high tumour uptake, moderate nodes, blurred, Poisson-like noise
    up = 1.0 - cfg.uptake_loss * amb
    pet = body * (0.05 + 0.015 * _texture(rng, grid, fov))
    heterogeneity = 1.0 + 0.1 * _texture(rng, grid, fov / 2)
    pet += uniform(rng, cfg.tumour_uptake_range) * float(up[0]) * steps[0] * heterogeneity
    pet += uniform(rng, cfg.node_uptake_range) * float(up[1]) * steps[1]
    pet = gaussian_filter(pet, cfg.pet_blur * unit / grid.spacing, mode="nearest", truncate=3.0)
    noise = uniform(rng, cfg.pet_noise_range) * rng.standard_normal(pet.shape, dtype=np.float32)
    pet += noise * np.sqrt(np.maximum(pet, 0.0) + 0.01)
    image = np.stack([ct, pet]).astype(np.float32, copy=False)
    return np.clip(image, 0.0, 1.0, out=image)


def _rate(
    rng: np.random.Generator,
    blobs: list[list[_Blob]],
    biases: np.ndarray,
    scales: tuple[list[float], list[float]],
    grid: _Grid,
) -> tuple[np.ndarray, np.ndarray]:
    """Rater masks ``[R, 2, D, H, W]`` bool and the analytic probability ``[2, D, H, W]``.

    ``biases`` ``[R]`` are the rater biases, ``scales`` the per-structure ``(s_b, s_j)``.
    """
    n_r, n_f, shape, coords = len(biases), len(_WAVES), (grid.n,) * 3, grid.coords
    dirs = rng.standard_normal((n_r, 7, n_f, 3))  # at most 1 tumour + 6 nodes
    dirs *= _WAVES[:, None] / np.linalg.norm(dirs, axis=-1, keepdims=True)
    coef = rng.standard_normal((n_r, 7, n_f, 2)) * np.sqrt(_WAVE_WEIGHTS)[:, None]
    bound = np.hypot(coef[..., 0], coef[..., 1]).sum(-1)  # [R, blobs] max |jitter|
    masks = np.zeros((n_r, 2, *shape), dtype=bool)
    absent = np.ones((2, n_r, *shape), dtype=np.float32)  # P(rater marks no blob)
    j = 0
    for k, group in enumerate(blobs):
        s_b, s_j = scales[0][k], scales[1][k]
        shift = (s_b * biases).astype(np.float32)
        for blob in group:  # beyond ``reach`` no rater marks the blob and Phi(...) < 1e-15
            reach = s_b * float(np.abs(biases).max()) + s_j * max(8.0, float(bound[:, j].max()))
            box = grid.box(blob, blob.max_radius + reach + grid.unit)
            sd, u = blob.field(coords, box)
            for r in range(n_r):
                jitter = _waves(u, dirs[r, j], coef[r, j])
                masks[r, k][box] |= sd + shift[r] + np.float32(s_j) * jitter < 0
                absent[k, r][box] *= ndtr((sd + shift[r]) / np.float32(s_j))
            j += 1
    prob = 1.0 - absent.mean(1)
    return masks, np.clip(prob, 0.0, 1.0, out=prob)


def generate_volume(
    index: int, seed: int = 0, config: Volume3DConfig | None = None
) -> MultiRaterCase:
    """Generate one synthetic PET/CT-like case.

    Args:
        index: case index (non-negative); with ``seed`` it fully determines the case.
        seed: generator seed (non-negative); also fixes the rater styles.
        config: generator settings (defaults: 64³, 4 raters, drawn anisotropic spacing).

    Returns:
        A :class:`MultiRaterCase` with ``image`` float32 ``[2, D, H, W]`` in [0, 1]
        (CT, PET), ``masks`` uint8 ``[R, 2, D, H, W]`` (GTVp, GTVn),
        ``rater_probability`` float32 ``[2, D, H, W]``, ``spacing`` ``(z, y, x)`` mm,
        ``affine`` 4×4 (``diag(spacing)`` and the world origin) and ``meta`` holding
        ``ambiguity`` ``[a_GTVp, a_GTVn]``, ``n_nodes``, ``seed``, ``index``, the geometry
        and the rater offset scales.

    Raises:
        ConfigError: on a negative seed or index or an invalid config.
    """
    cfg = (config or Volume3DConfig()).check()
    if index < 0 or seed < 0:
        raise ConfigError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    image_ss, rater_ss = np.random.SeedSequence([seed, index, _KEY]).spawn(2)
    rng = np.random.default_rng(image_ss)
    amb = rng.uniform(*cfg.ambiguity_range, size=2)
    choices = [cfg.spacing] if cfg.spacing is not None else list(cfg.spacing_choices)
    grid = _Grid(int(cfg.size), np.array(choices[int(rng.integers(len(choices)))], dtype=float))
    origin = np.round(rng.uniform(-80.0, 80.0, size=3), 1)
    s_b = [lerp(cfg.bias_std, float(a)) * grid.unit for a in amb]
    s_j = [lerp(cfg.jitter_std, float(a)) * grid.unit for a in amb]
    pad = [1.5 * b + 2.5 * s for b, s in zip(s_b, s_j, strict=True)]  # typical rater reach
    tumour, nodes = _geometry(rng, cfg, grid.extent, float(grid.extent[1]), pad)
    blobs = [[tumour], nodes]
    width = np.hypot(s_b, s_j) / LOGISTIC_SCALE  # logistic scale with the offsets' std
    image = _render(rng, grid, _steps(blobs, width, grid), amb, cfg)
    biases = rater_biases(seed, cfg.n_raters)
    masks, prob = _rate(np.random.default_rng(rater_ss), blobs, biases, (s_b, s_j), grid)
    affine = np.diag([*grid.spacing, 1.0])
    affine[:3, 3] = origin
    meta: dict[str, object] = {
        "ambiguity": [float(amb[0]), float(amb[1])],
        "n_nodes": len(nodes),
        "seed": int(seed),
        "index": int(index),
        "generator": "edue.data.synthetic3d",
        "tumour": {"center_mm": tumour.center.tolist(), "axes_mm": tumour.axes.tolist()},
        "nodes": [{"center_mm": b.center.tolist(), "axes_mm": b.axes.tolist()} for b in nodes],
        "offset_std": {"bias": s_b, "jitter": s_j},
        "edge_width": width.tolist(),
        "rater_bias": biases.tolist(),
    }
    return MultiRaterCase(
        image=image,
        masks=masks.view(np.uint8),
        case_id=f"vol-{seed}-{index:05d}",
        structures=STRUCTURES_3D,
        spacing=tuple(float(v) for v in grid.spacing),
        affine=affine,
        rater_probability=prob.astype(np.float32, copy=False),
        meta=meta,
    )


def generate_volumes(
    n: int, seed: int = 0, config: Volume3DConfig | None = None, start: int = 0
) -> list[MultiRaterCase]:
    """Generate the cases with indices ``start .. start + n - 1``.

    Args:
        n: number of cases.
        seed: generator seed.
        config: generator settings.
        start: first case index.

    Returns:
        ``n`` cases, each as described in :func:`generate_volume`.
    """
    if n < 0:
        raise ConfigError(f"number of synthetic volumes must be >= 0, got {n}")
    return [generate_volume(start + i, seed, config) for i in range(n)]
