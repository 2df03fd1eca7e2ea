"""Training a set of methods side by side for a comparison (the demo, a study).

Each method trains into its own folder with the same data, budget and rules. Work that
is provably identical is done once: a method trained exactly as another one
(``MethodSpec.trained_as``) reuses that checkpoint under its own name, and an ensemble
whose member 0 is another method's run (``MethodSpec.first_member_from``) reuses it as
that member. A finished run is kept, an interrupted one resumes, so a killed comparison
continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edue.config import Config, save_config
from edue.engine.checkpoint import load_checkpoint, renamed_checkpoint
from edue.engine.training.ensemble import gather_ensemble, member_config
from edue.engine.training.trainer import train_or_resume
from edue.methods.registry import get_method


def training_order(names: list[str]) -> list[str]:
    """``names`` reordered so that a run another one reuses (``trained_as``,
    ``first_member_from``) comes before it; otherwise the given order is kept."""
    order = list(names)
    for name in names:
        spec = get_method(name) if name in order else None
        for needed in (spec.trained_as, spec.first_member_from) if spec else ():
            if needed in order and order.index(needed) > order.index(name):
                order.remove(needed)
                order.insert(order.index(name), needed)
    return order


def train_compared(config: Config, trained: Mapping[str, Path]) -> Path:
    """Train (or resume, or reuse) the method of ``config`` into ``config.out_dir``.

    Args:
        config: the method's run configuration (``out_dir`` is its folder).
        trained: checkpoints of the methods already trained for this comparison, by
            method name.

    Returns:
        The method's checkpoint (``best.pt``, or ``ensemble.pt`` for an ensemble).
    """
    spec = get_method(config.method.name)
    out = Path(config.out_dir)
    if spec.trained_as and spec.trained_as in trained:
        save_config(config, out / "config.yaml")
        return renamed_checkpoint(trained[spec.trained_as], out / "best.pt", spec.name)
    if not spec.trains_members_separately:
        return train_or_resume(config) / "best.pt"
    target = out / "ensemble.pt"
    if target.is_file() and _ensemble_complete(target, config.method.ensemble_size):
        return target
    reused = trained.get(spec.first_member_from) if spec.first_member_from else None
    members: list[Path] = []
    for i in range(config.method.ensemble_size):
        if i == 0 and reused is not None:
            members.append(reused)  # member 0 = that run (same configuration and seed)
        else:
            members.append(train_or_resume(member_config(config, i)))
    save_config(config, out / "config.yaml")
    return gather_ensemble(members, target)


def _ensemble_complete(path: Path, size: int) -> bool:
    return len(load_checkpoint(path).get("members", [])) == size
