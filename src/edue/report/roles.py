"""What each method is in the comparison: the report, the study's claims and the
benchmarks read the roles from here (building a method does not need them).

* ``subject``: the method the claims are about (EDUE);
* ``ensemble_reference``: the multi-pass reference of the paper's claims (Deep
  Ensembles);
* ``one_pass_reference``: the one-pass soft-label references (the plain U-Net and the
  deep-supervised U-Net).

A method registered by a plugin plays no role unless :func:`assign_role` gives it one.
"""

from __future__ import annotations

from edue.methods import deep_ensemble, deep_supervision, edue, plain
from edue.methods.registry import MethodSpec, get_method, method_names

ROLES = ("subject", "ensemble_reference", "one_pass_reference")

_ROLES: dict[str, str] = {
    edue.SPEC.name: "subject",
    deep_ensemble.SPEC.name: "ensemble_reference",
    plain.SPEC.name: "one_pass_reference",
    deep_supervision.SPEC.name: "one_pass_reference",
}


def assign_role(method: str, role: str) -> None:
    """Make ``method`` play ``role`` (``""`` removes its role).

    Raises:
        ValueError: an unknown role.
    """
    if role and role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    if role:
        _ROLES[method] = role
    else:
        _ROLES.pop(method, None)


def role_of(method: str) -> str:
    """The role of ``method`` (``""`` when it plays none)."""
    return _ROLES.get(method, "")


def methods_with_role(role: str) -> tuple[MethodSpec, ...]:
    """Every registered method playing ``role``, in registry order."""
    return tuple(get_method(name) for name in method_names() if _ROLES.get(name) == role)


def method_with_role(role: str) -> MethodSpec | None:
    """The first registered method playing ``role``, if any."""
    return next(iter(methods_with_role(role)), None)
