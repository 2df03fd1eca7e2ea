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

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edue.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config
    from edue.methods.base import Method
    from edue.nets.backbones import Backbone


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
        from edue.methods.backbone_spec import backbone_spec
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
        member_method: for ensembles of independently trained networks, the registered
            method each member is (members train as separate jobs, ``method.member=i``,
            and a member's checkpoint loads as that method); ``None`` otherwise.
        first_member_from: a method whose run is, with the same seed and configuration,
            exactly member 0 (the demo reuses it instead of training it twice).
        trained_as: a method whose training is exactly this one's (same network, loss
            and seed) and which differs only in how it reads its outputs at prediction;
            its checkpoint serves both (see :func:`edue.engine.checkpoint.renamed_checkpoint`).
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
    member_method: str | None = None
    first_member_from: str | None = None
    trained_as: str | None = None
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
    return method_spec_for(config, for_training).build(request)


def method_spec_for(config: Config, for_training: bool = False) -> MethodSpec:
    """The method a configuration actually builds: ``method.name``'s, or its member
    method for one separately trained member (or any training job of such a method).

    Raises:
        ConfigError: the name is not registered.
    """
    spec = get_method(config.method.name)
    if spec.member_method is not None and (for_training or config.method.member is not None):
        return get_method(spec.member_method)
    return spec
