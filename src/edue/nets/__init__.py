"""Networks: a U-Net for 2D and 3D (``spatial_dims``) that exposes its blocks by name,
and heads attached to any named block by forward hooks."""

from edue.nets.heads import MultiHeadNet
from edue.nets.pointwise import pointwise_conv
from edue.nets.unet import UNet

__all__ = ["MultiHeadNet", "UNet", "pointwise_conv"]
