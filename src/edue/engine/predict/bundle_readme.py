"""The README of a MONAI bundle written by ``edue export --format monai-bundle``
(:mod:`edue.engine.predict.bundle`): what goes in and out, how to run it, the windows,
the training grid and the licence placeholder, in words filled from the model."""

from __future__ import annotations

from typing import Any

README_TEMPLATE = """# {name}

{description}.

Exported from an edue checkpoint by edue {edue_version} (weights SHA-256
`{weights_sha256}`). Bundle version {version}.

## Licence

{licence}. The `LICENSE` file and the `copyright` and `license` fields of
`configs/metadata.json` are placeholders for the model's owner to replace.

## Input

{reading} {channels} channel(s) per image, float32.

## Output

For each input `<name>`, in `output_dir` (default `<bundle_root>/eval`), two float32
NIfTI files on the input's grid (with its affine, for NIfTI inputs), the structures
({structures}) along the last axis ({layout}):

* `<name>_mean.nii.gz`: the segmentation probability of each structure;
* `<name>_uncertainty.nii.gz`: its uncertainty (score `{score}`: {score_text}).

They are the `mean` and `uncertainty` of `edue predict` wherever both predict on the
same grid (see "Training grid"). The network, `models/model.ts` (TorchScript; edue is not
needed to run it), maps an image `[B, C, *sp]` to both at once, `[B, 2K, *sp]`; its
method `stack` gives the probabilities of the {members} member(s) `[B, S'*K, *sp]` and
`reduce` turns such a stack into the mean and the uncertainty. The inference blends
windows and resamples back member by member and reduces last, as edue does, so the
spread across members is that of the blended members.

## Run

```
python -m monai.bundle run --config_file configs/inference.json \\
    --bundle_root . --dataset_dir /path/to/images
```

Other settings are overridden the same way: `--image_pattern`, `--output_dir`,
`--device`, `--roi_size`. Besides MONAI, PyTorch and NumPy it needs {packages}
(`required_packages_version` in `configs/metadata.json`: MONAI's evaluator runs on
pytorch-ignite, its command line on fire). With the default settings {windows}.

## Training grid

{grid}

## Files

`configs/metadata.json` (MONAI's metadata, and edue's: structures, members, method,
score, training grid, edue version, weights hash), `configs/inference.json`,
`models/model.ts` (the metadata also inside), `models/model.json` (edue's sidecar).
"""


def _reading_text(spatial_dims: int) -> str:
    """The README's sentence on the files read and their intensities."""
    if spatial_dims == 2:
        return (
            "PNG images (`image_pattern`, default `*.png`; JPEG and BMP read too), rows "
            "first, as edue reads them: 8-bit values divided by 255 and 16-bit ones by "
            "65535, palette and CMYK images converted to RGB. TIFF, `.npy` and NIfTI "
            "slices, which `edue predict` also reads, are not read by this bundle."
        )
    return (
        "NIfTI volumes (`image_pattern`, default `*.nii.gz`) in stored voxel order, "
        "values kept as they are (no reorientation, no intensity scaling), as edue "
        "reads them."
    )


def _windows_text(predictor: Any, roi: list[int] | None) -> str:
    """The README's sentence on whole-image and window-by-window prediction."""
    if roi is None:
        return "every image is predicted in one pass"
    infer = predictor.config.infer
    return (
        f"an image larger than the window {roi} on some axis is predicted window by "
        f"window (overlap {infer.overlap}, {infer.blend} blending), as `edue predict` "
        "does, and a smaller one in one pass"
    )


def _grid_text(predictor: Any, grid: dict[str, Any]) -> str:
    """The README's paragraph on the training grid."""
    if predictor.spatial_dims == 2 and grid["size"]:
        size = "×".join(str(s) for s in grid["size"])
        return (
            f"The model was trained on {size} images. `model.ts` resizes every image to "
            f"{size} (bilinear, antialiased when shrinking) and the members' probabilities "
            "back to the image's size, exactly as `edue predict` does; such a model is "
            "predicted whole at that size (`roi_size` is null)."
        )
    if predictor.spatial_dims == 3 and grid["spacing"]:
        spacing = " × ".join(f"{s:g}" for s in grid["spacing"])
        return (
            f"The model was trained on volumes of median voxel spacing {spacing} mm "
            "(`training_spacing` in `configs/inference.json`). The bundle **always** "
            "resamples a volume to that spacing (`Spacingd`, bilinear) and the members' "
            "probabilities back onto the volume's grid (`Invertd`). `edue predict` "
            "resamples only volumes whose spacing lies outside the training range "
            "(`training_grid` in `configs/metadata.json`, with 10 % slack), by a "
            "trilinear resize: the two agree on volumes at the training spacing, and "
            "differ by the interpolation elsewhere."
        )
    return "The model takes every image at its own size and spacing (no resampling)."


def _score_text(score: str) -> str:
    return {
        "variance": "the unbiased variance across members, p (1 − p) for a single member",
        "bernoulli": "p (1 − p) of the mean",
        "combined": "the variance across members plus p (1 − p) of the mean",
    }.get(score, score)


def readme(
    predictor: Any,
    meta: dict[str, Any],
    roi: list[int] | None,
    grid: dict[str, Any],
    packages: list[str],
    licence: str,
) -> str:
    """The content of a bundle's ``docs/README.md`` (:data:`README_TEMPLATE`).

    Args:
        predictor: the exported checkpoint's predictor.
        meta: the bundle's ``metadata.json`` content.
        roi: the sliding window (``None``: whole images).
        grid: the training grid (:meth:`~edue.engine.inference.grid.TrainingGrid.to_dict`).
        packages: what running the bundle needs besides MONAI, PyTorch and NumPy.
        licence: the licence placeholder.
    """
    dims = predictor.spatial_dims
    return README_TEMPLATE.format(
        **{key: meta[key] for key in ("name", "description", "edue_version", "version")},
        weights_sha256=meta["weights_sha256"],
        licence=licence,
        reading=_reading_text(dims),
        channels=predictor.in_channels,
        structures=", ".join(f"`{s}`" for s in predictor.structures),
        layout="`[X, Y, Z, K]`" if dims == 3 else "`[H, W, 1, K]`",
        score=meta["score"],
        score_text=_score_text(meta["score"]),
        members=meta["members"],
        packages=", ".join(packages),
        windows=_windows_text(predictor, roi),
        grid=_grid_text(predictor, grid),
    )
