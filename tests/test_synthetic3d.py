"""Tests of the seeded PET/CT-like volume generator and its case source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from edue.data.case import expert_sv
from edue.data.source import open_source
from edue.data.synthetic3d import STRUCTURES_3D, Volume3DConfig, generate_volume, generate_volumes
from edue.errors import ConfigError

SMALL = Volume3DConfig(size=32)


@pytest.fixture(scope="module")
def forty_volumes() -> list:
    return generate_volumes(40, seed=0, config=SMALL)


def test_shapes_dtypes_and_values() -> None:
    case = generate_volume(0).validate()
    assert case.case_id == "vol-0-00000"
    assert case.structures == STRUCTURES_3D == ("GTVp", "GTVn")
    assert case.spatial_dims == 3
    assert case.image.shape == (2, 64, 64, 64) and case.image.dtype == np.float32
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0
    assert case.masks.shape == (4, 2, 64, 64, 64) and case.masks.dtype == np.uint8
    prob = case.rater_probability
    assert prob is not None and prob.shape == (2, 64, 64, 64) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    amb = case.meta["ambiguity"]
    assert isinstance(amb, list) and len(amb) == 2 and all(0.0 <= a <= 1.0 for a in amb)
    assert case.masks[:, 0].reshape(4, -1).any(1).all()  # every rater draws a tumour


@pytest.mark.parametrize("size,n_raters", [(24, 4), (32, 3), (32, 1)])
def test_configurable_size_and_raters(size: int, n_raters: int) -> None:
    case = generate_volume(3, seed=1, config=Volume3DConfig(size=size, n_raters=n_raters))
    case.validate()
    assert case.image.shape == (2, size, size, size)
    assert case.masks.shape == (n_raters, 2, size, size, size)
    assert 0.002 < case.masks[:, 0].mean() < 0.2
    if n_raters == 1:
        assert float(expert_sv(torch.from_numpy(case.masks)).sum()) == 0.0


def test_deterministic_and_order_independent() -> None:
    a, b = generate_volume(5, seed=2, config=SMALL), generate_volume(5, seed=2, config=SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.rater_probability, b.rater_probability)
    batch = generate_volumes(3, seed=2, config=SMALL, start=4)
    assert [c.case_id for c in batch] == ["vol-2-00004", "vol-2-00005", "vol-2-00006"]
    np.testing.assert_array_equal(batch[1].masks, a.masks)
    assert not np.array_equal(generate_volume(5, seed=3, config=SMALL).image, a.image)
    assert not np.array_equal(generate_volume(6, seed=2, config=SMALL).image, a.image)


def test_image_does_not_depend_on_rater_count() -> None:
    a = generate_volume(2, config=Volume3DConfig(size=32, n_raters=4))
    b = generate_volume(2, config=Volume3DConfig(size=32, n_raters=7))
    np.testing.assert_array_equal(a.image, b.image)
    assert b.masks.shape[0] == 7


def test_anisotropic_spacing_and_affine(forty_volumes: list) -> None:
    seen = set()
    for case in forty_volumes[:10]:
        assert case.spacing is not None and len(case.spacing) == 3
        assert case.spacing[0] > case.spacing[1] == case.spacing[2]  # thick axial slices
        affine = case.affine
        assert affine is not None and affine.shape == (4, 4)
        np.testing.assert_allclose(np.diag(affine)[:3], case.spacing)
        np.testing.assert_allclose(affine[3], [0, 0, 0, 1])
        assert np.count_nonzero(affine[:3, :3]) == 3
        seen.add(case.spacing)
    assert len(seen) > 1  # drawn per case from a small set
    fixed = generate_volume(0, config=Volume3DConfig(size=24, spacing=[3.0, 1.0, 1.0]))
    assert fixed.spacing == (3.0, 1.0, 1.0)


def test_gtvn_may_be_empty(forty_volumes: list) -> None:
    counts = [int(c.meta["n_nodes"]) for c in forty_volumes]
    assert min(counts) == 0 and max(counts) >= 2
    for case, count in zip(forty_volumes, counts, strict=True):
        drawn = case.masks[:, 1].reshape(case.n_raters, -1).any(1)
        if count == 0:
            assert not drawn.any() and case.rater_probability[1].max() == 0.0
        else:
            assert drawn.any()
    # structures do not overlap in the expected soft vote
    for case in forty_volumes[:10]:
        prob = case.rater_probability
        assert np.minimum(prob[0], prob[1]).max() < 0.05


def test_rater_probability_is_calibrated() -> None:
    config = Volume3DConfig(size=32, n_raters=200, node_count_range=(2, 3))
    for index in (0, 3):
        case = generate_volume(index, seed=1, config=config)
        prob = case.rater_probability
        assert prob is not None and case.meta["n_nodes"] >= 1
        empirical = case.masks.mean(0)
        error = np.abs(empirical - prob)
        band = (prob > 0.02) & (prob < 0.98)
        assert error.mean() < 0.002
        assert error[band].mean() < 0.03
        np.testing.assert_allclose(
            empirical.reshape(2, -1).sum(1), prob.reshape(2, -1).sum(1), rtol=0.05
        )


def test_ambiguity_predicts_expert_disagreement(forty_volumes: list) -> None:
    amb = np.array([c.meta["ambiguity"] for c in forty_volumes])
    sv = np.stack([expert_sv(torch.from_numpy(c.masks)).numpy() for c in forty_volumes])
    size = np.stack([c.masks.mean(0).reshape(2, -1).sum(1) for c in forty_volumes])
    assert spearmanr(amb[:, 0], sv[:, 0])[0] >= 0.6
    assert spearmanr(amb[:, 0], sv[:, 0] / size[:, 0] ** (2 / 3))[0] >= 0.7
    has_nodes = size[:, 1] > 0
    rho_n = spearmanr(amb[has_nodes, 1], sv[has_nodes, 1] / size[has_nodes, 1] ** (2 / 3))[0]
    assert rho_n >= 0.5


def test_ambiguity_is_visible_as_a_diffuse_pet_edge(forty_volumes: list) -> None:
    amb = np.array([c.meta["ambiguity"][0] for c in forty_volumes])
    sharpness = []
    for case in forty_volumes:
        spacing = np.asarray(case.spacing)
        grads = np.gradient(case.image[1].astype(np.float64), *spacing)
        band = np.abs(case.rater_probability[0] - 0.5) < 0.45
        sharpness.append(np.sqrt(sum(g**2 for g in grads))[band].mean())
    assert spearmanr(amb, sharpness)[0] < -0.5


def test_tumour_visible_in_both_channels(forty_volumes: list) -> None:
    for case in forty_volumes[:20]:
        prob = case.rater_probability[0]
        inside, outside = prob > 0.98, (prob < 0.02) & (case.image[0] > 0.3)
        assert case.image[1][inside].mean() > case.image[1][outside].mean() + 0.3  # PET
        assert case.image[0][inside].mean() > case.image[0][outside].mean() - 0.05  # CT


def test_source_and_registry() -> None:
    source = open_source("synthetic3d", n=3, seed=4, size=24, n_raters=2)
    assert len(source) == 3 and source.spatial_dims == 3
    assert source.case_ids == ["vol-4-00000", "vol-4-00001", "vol-4-00002"]
    case = source.load(1)
    assert case.case_id == "vol-4-00001" and case.masks.shape == (2, 2, 24, 24, 24)
    assert source.load(1) is case  # cached
    np.testing.assert_array_equal(
        case.image, generate_volume(1, 4, Volume3DConfig(size=24, n_raters=2)).image
    )


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError):
        generate_volume(-1)
    with pytest.raises(ConfigError):
        generate_volume(0, seed=-1)
    with pytest.raises(ConfigError):
        generate_volume(0, config=Volume3DConfig(size=8))
    with pytest.raises(ConfigError):
        generate_volume(0, config=Volume3DConfig(n_raters=0))
    with pytest.raises(ConfigError):
        generate_volume(0, config=Volume3DConfig(spacing=(1.0, 0.0, 1.0)))
    with pytest.raises(ConfigError):
        open_source("synthetic3d", n=1, not_an_option=3)
