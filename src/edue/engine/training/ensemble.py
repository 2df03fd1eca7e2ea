"""Deep Ensembles from independently trained members.

Each member is an ordinary run (``method.name=deep_ensemble method.member=i``), which any
scheduler can run side by side; :func:`gather_ensemble` checks that the members share a
configuration and writes one checkpoint that predicts with all of them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edue.config import Config
from edue.engine.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from edue.errors import CheckpointError
from edue.methods.registry import MethodSpec, method_specs

#: configuration sections that must agree between members (the seed and member may differ)
_SHARED = ("model", "data")


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member`` derived from the run seed."""
    return seed + 1000 * member


def member_config(config: Config, member: int) -> Config:
    """The configuration of one member's training job."""
    out = copy.deepcopy(config)
    out.method.member = member
    out.train.seed = member_seed(config.train.seed, member)
    out.out_dir = str(Path(config.out_dir) / f"member_{member}")
    return out


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    data = dict(config["data"])
    return {
        "model": config["model"],
        "data": data,
        "train": {
            k: v for k, v in config["train"].items() if k not in ("seed", "device", "threads")
        },
    }


def _ensemble_method(method: str, where: str | Path) -> MethodSpec:
    """The registered ensemble whose member is ``method`` (or which is ``method``)."""
    for spec in method_specs():
        if spec.trains_members_separately and method in (spec.name, spec.member_method):
            return spec
    raise CheckpointError(f"a '{method}' model is no member of any registered ensemble", where)


def gather_ensemble(members: Sequence[str | Path], out: str | Path) -> Path:
    """Join member checkpoints into one Deep Ensemble checkpoint.

    Args:
        members: member checkpoints or run folders (``best.pt`` is taken from a folder).
        out: destination file.

    Raises:
        CheckpointError: fewer than two members, a member that is not an ensemble member, or
            members whose configurations differ (other than seed).
    """
    if len(members) < 2:
        raise CheckpointError("an ensemble needs at least two members")
    states = [load_checkpoint(resolve_checkpoint(m)) for m in members]
    ensemble = _ensemble_method(states[0]["method"], members[0])
    reference = _comparable(states[0]["config"])
    for path, state in zip(members, states, strict=True):
        if state["method"] not in (ensemble.name, ensemble.member_method):
            raise CheckpointError(
                f"member is a '{state['method']}' model, not a {ensemble.label} member "
                f"('{ensemble.member_method}')",
                path,
            )
        if _comparable(state["config"]) != reference:
            raise CheckpointError("member configuration differs from the first member's", path)
        if state["data"] != states[0]["data"]:
            raise CheckpointError("member was trained on differently shaped data", path)
    weights = {
        f"network.{i}.{key[len('network.') :]}": tensor
        for i, state in enumerate(states)
        for key, tensor in state["model"].items()
    }
    config = copy.deepcopy(states[0]["config"])
    config["method"]["name"] = ensemble.name
    config["method"]["ensemble_size"] = len(states)
    config["method"]["member"] = None
    payload = {
        "model": weights,
        "method": ensemble.name,
        "config": config,
        "data": states[0]["data"],
        "members": [str(m) for m in members],
        "epoch": min(int(s["epoch"]) for s in states),
    }
    return save_checkpoint(out, payload)
