"""The distortion study of ``edue evaluate --ood`` (``ood.json``): how the members'
disagreement, the SV and the shift gate's score react when 0 / 50 / 100 % of the images
are distorted (noise, blur, hue), and how well each separates distorted from clean
images (AUROC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edue import result_keys as rk
from edue.data.case import MultiRaterCase
from edue.data.distortions import distort_dataset
from edue.engine.inference.predictor import Predictor
from edue.engine.referral.gate import OODGate
from edue.metrics.ood import pairwise_dice_variance, separation_auroc
from edue.prediction import Prediction

OOD_KINDS = ("noise", "blur", "hue")
OOD_FRACTIONS = (0.0, 0.5, 1.0)


def ood_study(
    predictor: Predictor,
    cases: Sequence[MultiRaterCase],
    seed: int = 0,
    kinds: Sequence[str] = OOD_KINDS,
    gate: OODGate | None = None,
) -> dict[str, Any]:
    """Distort 0 / 50 / 100 % of the images and score the members' disagreement.

    Per image: the variance of the pairwise Dice between members (layer / model
    agreement) and SV, and with ``gate`` the distribution-shift score (read from the
    same forward pass) and whether the gate flags the image. Per kind at 50 %: the AUROC
    with which each separates distorted from clean images.
    """
    images = [c.image for c in cases]
    out: dict[str, Any] = {"kinds": list(kinds), "fractions": list(OOD_FRACTIONS), "results": {}}
    for kind in kinds:
        if kind == "hue" and images[0].shape[0] != 3:
            continue
        for fraction in OOD_FRACTIONS:
            result, flags = distort_dataset(images, fraction, kind, seed=seed)
            distorted: list[np.ndarray] = list(result)  # type: ignore[call-overload]
            preds: list[Prediction] = []
            scores: list[float] = []
            for start in range(0, len(distorted), 16):
                chunk = distorted[start : start + 16]
                if gate is None:
                    preds += predictor.predict_batch(chunk)
                    continue
                more, features = predictor.predict_batch_with_features(chunk, tap=gate.modules)
                preds += more
                scores += (
                    [float("nan")] * len(chunk)
                    if features is None
                    else gate.score(features).tolist()
                )
            agreement = np.stack([pairwise_dice_variance(p.members).numpy() for p in preds])
            sv = np.stack([p.sv.numpy() for p in preds])
            entry: dict[str, Any] = {
                "is_distorted": flags.tolist(),
                "agreement_variance": agreement.tolist(),
                "sv": sv.tolist(),
            }
            if gate is not None:
                entry["gate_score"] = scores
                entry["gate_flagged"] = gate.flags(scores).tolist()
            if 0 < flags.sum() < len(flags):
                entry["auroc_agreement"] = [
                    separation_auroc(np.nan_to_num(agreement[:, k]), flags)
                    for k in range(agreement.shape[1])
                ]
                entry["auroc_sv"] = [separation_auroc(sv[:, k], flags) for k in range(sv.shape[1])]
                if gate is not None:
                    entry["auroc_gate"] = separation_auroc(np.asarray(scores), flags)
            out["results"][rk.ood_condition(kind, fraction)] = entry
    return out
