"""Methods chosen by name: EDUE and the baselines it is judged against."""

from __future__ import annotations

from edue.config import Config
from edue.methods.base import Method
from edue.methods.deep_ensemble import DeepEnsemble
from edue.methods.edue import EDUE
from edue.methods.layer_ensembles import LayerEnsembles
from edue.methods.mc_dropout import MCDropout
from edue.methods.plain import PlainUNet
from edue.nets.unet import UNet

__all__ = [
    "EDUE",
    "DeepEnsemble",
    "LayerEnsembles",
    "MCDropout",
    "Method",
    "PlainUNet",
    "build_method",
]


def build_method(
    config: Config,
    in_channels: int,
    out_channels: int,
    spatial_dims: int,
    for_training: bool = True,
) -> Method:
    """Instantiate the method named in ``config.method.name``.

    For ``deep_ensemble`` a training job builds one member (a plain U-Net); prediction
    builds all ``ensemble_size`` members.
    """
    m, net = config.method, config.model

    def unet(out: int, dropout: float = 0.0) -> UNet:
        return UNet(spatial_dims, in_channels, out, net.channels, net.norm, dropout)

    if m.name == "edue":
        return EDUE(
            unet(0),
            out_channels,
            m.heads,
            m.aux_weight,
            m.label_sampling,
            m.guidance,
            m.guidance_weight,
        )
    if m.name == "layer_ensembles":
        return LayerEnsembles(unet(0), out_channels, m.skip_first)
    if m.name == "mc_dropout":
        return MCDropout(unet(out_channels, m.mc_dropout), m.mc_samples, config.train.seed)
    if m.name == "plain" or (m.name == "deep_ensemble" and for_training):
        return PlainUNet(unet(out_channels))
    if m.name == "deep_ensemble":
        return DeepEnsemble([unet(out_channels) for _ in range(m.ensemble_size)])
    raise ValueError(f"unknown method {m.name}")
