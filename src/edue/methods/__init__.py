"""Methods chosen by name: EDUE, the baselines it is judged against, and the generative
models of the raters (Stochastic Segmentation Networks, the Probabilistic U-Net).

Each method lives in its own module and registers itself in :mod:`edue.methods.registry`;
importing this package registers the built-in ones.
"""

from __future__ import annotations

from edue.methods import (  # noqa: F401  (each registers itself)
    deep_ensemble,
    deep_supervision,
    edue,
    layer_ensembles,
    mc_dropout,
    plain,
    prob_unet,
    ssn,
)
from edue.methods.base import Method
from edue.methods.deep_ensemble import DeepEnsemble
from edue.methods.deep_supervision import DeepSupervision
from edue.methods.edue import EDUE
from edue.methods.layer_ensembles import LayerEnsembles
from edue.methods.mc_dropout import MCDropout
from edue.methods.plain import PlainUNet
from edue.methods.prob_unet import ProbUNet
from edue.methods.registry import (
    BuildRequest,
    MethodSpec,
    build_method,
    get_method,
    method_label,
    method_names,
    method_spec_for,
    method_specs,
    register_method,
    unregister_method,
)
from edue.methods.ssn import SSN

__all__ = [
    "EDUE",
    "BuildRequest",
    "DeepEnsemble",
    "DeepSupervision",
    "LayerEnsembles",
    "MCDropout",
    "Method",
    "MethodSpec",
    "PlainUNet",
    "ProbUNet",
    "SSN",
    "build_method",
    "method_spec_for",
    "get_method",
    "method_label",
    "method_names",
    "method_specs",
    "register_method",
    "unregister_method",
]
