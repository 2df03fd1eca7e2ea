"""Two CPU processes with gloo train like one process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from edue.config import load_config
from tests.conftest import free_port, join_process_group_env

DDP_OVERRIDES = [
    "data.format=synthetic",
    "data.options={size: 32}",
    "data.split={train: 16, val: 6, test: 0}",
    "model.channels=[4, 8, 16]",
    # group norm and no random rater draws: per-rank losses then average exactly to the
    # single-process loss, so the two runs must agree up to float rounding
    "model.norm=group",
    "method.name=edue",
    "method.label_sampling=false",
    "method.guidance=false",
    "train.epochs=2",
    "train.batch_size=8",
    "train.device=cpu",
    "train.threads=1",
]
TOLERANCE = 1e-4  # absolute, on every weight after 4 Adam steps


def _worker(rank: int, world: int, port: int, out: str) -> None:
    join_process_group_env(rank, world, port)
    from edue.data.pipeline import PreparedSource
    from edue.engine.runtime import teardown_runtime
    from edue.engine.training.trainer import Trainer

    decoded: list[str] = []
    original = PreparedSource.decode

    def counting(self, index):  # type: ignore[no-untyped-def]
        decoded.append(self.case_ids[index])
        return original(self, index)

    PreparedSource.decode = counting  # type: ignore[method-assign]
    cache = ["data.cache=disk", f"data.cache_dir={out}/cache"]
    trainer = Trainer(load_config(None, [*DDP_OVERRIDES, *cache, f"out_dir={out}/run"]))
    trainer.setup()
    Path(f"{out}/decoded{rank}.txt").write_text("\n".join(decoded))
    trainer.fit()
    torch.save(
        {k: v.detach().clone() for k, v in trainer.method.state_dict().items()},
        f"{out}/rank{rank}.pt",
    )
    teardown_runtime(trainer.runtime)


@pytest.mark.slow
def test_two_gloo_ranks_match_each_other_and_single_process(tmp_path: Path) -> None:
    mp.start_processes(
        _worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0 and rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"
    # one shared cache: every case was decoded by one rank only, the other read it
    decoded = [(tmp_path / f"decoded{r}.txt").read_text().split() for r in (0, 1)]
    assert sorted(decoded[0] + decoded[1]) == sorted(set(decoded[0] + decoded[1]))
    assert len(decoded[0] + decoded[1]) == 22  # 16 train + 6 val cases, once each
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1
    assert (tmp_path / "run" / "last.pt").is_file()  # written by rank 0 only
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # one line per epoch, not one per rank

    from edue.engine.training.trainer import Trainer

    single = Trainer(load_config(None, [*DDP_OVERRIDES, f"out_dir={tmp_path}/single"]))
    single.setup()
    single.fit()
    reference = single.method.state_dict()
    assert reference.keys() == rank0.keys()
    worst = max(float((rank0[k].float() - reference[k].float()).abs().max()) for k in rank0)
    assert worst < TOLERANCE, f"DDP and single-process weights differ by {worst}"
