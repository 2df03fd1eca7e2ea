"""The one list of methods: every method registers itself here, in its own module.

A method module calls :func:`register_method` once, at import, with a
:class:`MethodSpec`: its name (what ``method.name`` says), a display label, how many
members it predicts and how many forward passes that takes, and a builder. Everything
that needs the set of methods — configuration checks, ``edue train``, the demo, the
report, the benchmarks — reads this registry; adding a method is one new module that
registers itself (and is imported once, e.g. from a plugin or a test).

The built-in methods are registered when :mod:`edue.methods` is imported, which importing
this module always does first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edue.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config
    from edue.methods.base import Method
    from edue.nets.backbones import Backbone, BackboneSpec


@dataclass(frozen=True)
class BuildRequest:
    """What a builder needs to make a method for one dataset.

    Attributes:
        config: the whole run configuration (``config.method`` holds the method's switches).
        in_channels: image channels ``C``.
        out_channels: structures ``K``.
        spatial_dims: 2 or 3.
        for_training: ``True`` for a training job, ``False`` to predict with a checkpoint.
    """

    config: Config
    in_channels: int
    out_channels: int
    spatial_dims: int
    for_training: bool = True

    def backbone(self, out_channels: int | None = None, dropout: float = 0.0) -> Backbone:
        """The configured backbone (``model.backbone``: U-Net, smp or DynUNet).

        Args:
            out_channels: output logits; ``0`` gives a feature-only backbone for heads
                attached by hooks; ``None`` gives ``K``.
            dropout: dropout probability inside the blocks.

        Returns:
            an ``nn.Module`` with the :class:`edue.nets.backbones.Backbone` interface.
            Pretrained encoder weights are loaded for training jobs only (a checkpoint
            follows otherwise).
        """
        from edue.nets.backbones import BackboneError
        from edue.nets.factory import build_backbone

        spec = backbone_spec(
            self.config, self.spatial_dims, self.in_channels, for_training=self.for_training
        )
        out = self.out_channels if out_channels is None else out_channels
        try:
            return build_backbone(replace(spec, out_channels=out, dropout=dropout))
        except BackboneError as error:
            raise ConfigError(str(error)) from None

    unet = backbone  # the name builders used before other backbones existed


def backbone_spec(
    config: Config, spatial_dims: int, in_channels: int = 3, for_training: bool = True
) -> BackboneSpec:
    """The :class:`~edue.nets.backbones.BackboneSpec` of a configuration's ``model``."""
    from edue.nets.backbones import BackboneSpec

    m, data = config.model, config.data
    patch: tuple[int, ...] | None = None
    if data.patch_size:
        patch = tuple(data.patch_size)
        patch = patch * spatial_dims if len(patch) == 1 else patch
    elif data.size:
        patch = (data.size,) * spatial_dims
    return BackboneSpec(
        kind=m.backbone,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        channels=tuple(m.channels),
        norm=m.norm,
        arch=m.arch,
        encoder=m.encoder,
        encoder_depth=m.encoder_depth,
        decoder_channels=tuple(m.decoder_channels) if m.decoder_channels else None,
        encoder_weights=m.encoder_weights,
        encoder_weights_path=m.encoder_weights_path,
        load_weights=for_training,
        input_mean=tuple(m.input_mean) if m.input_mean else None,
        input_std=tuple(m.input_std) if m.input_std else None,
        kernel_size=tuple(tuple(k) for k in m.kernel_size) if m.kernel_size else None,
        strides=tuple(tuple(s) for s in m.strides) if m.strides else None,
        filters=tuple(m.filters) if m.filters else None,
        patch_size=patch,
        spacing=tuple(m.spacing) if m.spacing else None,
    )


def configured_spatial_dims(config: Config) -> int:
    """The spatial dimensions a configuration fixes before any data is read: those of
    ``model.strides``, ``model.kernel_size`` or ``model.spacing`` where given, else of a
    2- or 3-value ``data.patch_size``, else 2."""
    m, patch = config.model, config.data.patch_size
    for given in (m.strides[0] if m.strides else None, m.kernel_size[0] if m.kernel_size else None):
        if given and len(given) in (2, 3):
            return len(given)
    if m.spacing and len(m.spacing) in (2, 3):
        return len(m.spacing)
    return len(patch) if patch and len(patch) in (2, 3) else 2


def backbone_blocks(config: Config) -> tuple[list[str], list[str]]:
    """``(encoder block names, decoder block names)`` of the configured backbone, at the
    spatial dimensions of :func:`configured_spatial_dims` (the names do not depend on
    them otherwise)."""
    from edue.nets.backbones import BackboneError
    from edue.nets.factory import tap_layout

    dims = configured_spatial_dims(config)
    try:
        return tap_layout(backbone_spec(config, dims, for_training=False))
    except BackboneError as error:
        raise ConfigError(str(error)) from None


def _one(_: Config) -> int:
    return 1


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        name: registry key, the value of ``method.name``.
        label: display name in tables and figures.
        build: makes the :class:`~edue.methods.base.Method` for a :class:`BuildRequest`.
        members: members ``S`` of its prediction, from the run configuration.
        one_pass: all members come from one forward pass (heads); otherwise each member
            takes a pass of its own (ensemble members, MC samples): see :meth:`passes`.
        summary: one line for ``--help`` and the docs.
        role: what the report compares: ``subject`` (the method the claims are about),
            ``ensemble_reference`` (the multi-pass reference of the paper's claims),
            ``one_pass_reference`` (the one-pass reference), or ``""``.
        member_method: for ensembles of independently trained networks, the registered
            method each member is (members train as separate jobs, ``method.member=i``,
            and a member's checkpoint loads as that method); ``None`` otherwise.
        first_member_from: a method whose run is, with the same seed and configuration,
            exactly member 0 (the demo reuses it instead of training it twice).
        trained_as: a method whose training is exactly this one's (same network, loss
            and seed) and which differs only in how it reads its outputs at prediction;
            its checkpoint serves both (see :func:`edue.engine.checkpoint.renamed_checkpoint`).
        ablations: named variants for the demo's ablation study: run name → the
            ``method.*`` values that differ from the defaults.
        order: position in listings (tables, the demo); ties keep registration order.
        check: checks the run configuration beyond each key's own type and range
            (raises ``ValueError`` naming the keys); ``None``: nothing to check.
    """

    name: str
    label: str
    build: Callable[[BuildRequest], Method]
    members: Callable[[Config], int] = _one
    one_pass: bool = True
    summary: str = ""
    role: str = ""
    member_method: str | None = None
    first_member_from: str | None = None
    trained_as: str | None = None
    ablations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    order: int = 100
    check: Callable[[Config], None] | None = None

    def passes(self, config: Config) -> int:
        """Forward passes of the network per image at prediction."""
        return 1 if self.one_pass else self.members(config)

    @property
    def trains_members_separately(self) -> bool:
        """Whether members are independent training jobs (Deep Ensembles)."""
        return self.member_method is not None


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (call once, at import of the method's module).

    Args:
        spec: the method's declaration.
        replace: allow replacing a method of the same name (tests, plugins).

    Raises:
        ValueError: the name is taken (and ``replace`` is false) or not an identifier.
    """
    if not spec.name.isidentifier():
        raise ValueError(f"method name {spec.name!r} must be a Python identifier")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (tests and plugins that registered one)."""
    _REGISTRY.pop(name, None)


def method_specs() -> tuple[MethodSpec, ...]:
    """Registered methods, by ``order`` (then registration order)."""
    return tuple(sorted(_REGISTRY.values(), key=lambda spec: spec.order))


def method_names() -> tuple[str, ...]:
    """Registered method names, by ``order`` (then registration order)."""
    return tuple(spec.name for spec in method_specs())


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``.

    Raises:
        ConfigError: no such method (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"method.name: {name!r} is not a registered method "
            f"(one of: {', '.join(method_names())})"
        ) from None


def method_label(name: str) -> str:
    """Display label of a method; the name itself for an unregistered one."""
    spec = _REGISTRY.get(name)
    return spec.label if spec else name


def method_with_role(role: str) -> MethodSpec | None:
    """The first registered method playing ``role`` in the report, if any."""
    return next(iter(methods_with_role(role)), None)


def methods_with_role(role: str) -> tuple[MethodSpec, ...]:
    """Every registered method playing ``role`` in the report, in order."""
    return tuple(s for s in method_specs() if s.role == role)


def build_method(
    config: Config,
    in_channels: int,
    out_channels: int,
    spatial_dims: int,
    for_training: bool = True,
) -> Method:
    """Instantiate the method named in ``config.method.name``.

    For a method whose members train separately (Deep Ensembles), a training job — or a
    checkpoint of one member (``method.member`` set) — builds one member; prediction
    with a gathered checkpoint builds all of them.

    Raises:
        ConfigError: the name is not registered.
    """
    request = BuildRequest(config, in_channels, out_channels, spatial_dims, for_training)
    return built_method(config, for_training).build(request)


def built_method(config: Config, for_training: bool = False) -> MethodSpec:
    """The method a configuration actually builds: ``method.name``'s, or its member
    method for one separately trained member (or any training job of such a method).

    Raises:
        ConfigError: the name is not registered.
    """
    spec = get_method(config.method.name)
    if spec.member_method is not None and (for_training or config.method.member is not None):
        return get_method(spec.member_method)
    return spec
