"""The study's submitit launchers: one job per run, seed and member; resumable; the
`local` (subprocesses) and `debug` (in-process) executors run here."""

import copy
import functools
import json

import pytest

from edue.config import load_config
from edue.engine.checkpoint import load_checkpoint
from edue.engine.training.callbacks import TrainingCallback
from edue.engine.training.trainer import train
from edue.errors import ConfigError
from edue.launcher import StudyJob, StudyJobFailed, launch, parse_parameters
from edue.study import plan_training, run_job, run_study
from tests.conftest import TINY_OVERRIDES

pytest.importorskip("submitit")


def _config(epochs: int = 1):
    split = "data.split={train: 8, val: 4, test: 4}"
    return load_config(None, [*TINY_OVERRIDES, f"train.epochs={epochs}", split])


def test_the_plan_has_one_job_per_run_seed_and_member(tmp_path):
    config = _config()
    methods = ["plain", "deep_ensemble", "edue", "deep_supervision"]
    jobs = plan_training(config, methods, [0, 1], tmp_path)
    names = {j.name for j in jobs}
    for seed in (0, 1):
        assert f"train/seed{seed}/plain" in names
        assert f"train/seed{seed}/edue" in names
        # member 0 of the ensemble is the plain run; member 1 trains on its own
        assert f"train/seed{seed}/deep_ensemble/member_1" in names
        assert f"train/seed{seed}/deep_ensemble/member_0" not in names
    assert len(jobs) == 2 * 4  # deep_supervision trains as its own run
    # without the plain run the ensemble trains every member
    alone = plan_training(config, ["deep_ensemble"], [0], tmp_path)
    assert [j.member for j in alone] == [0, 1]
    # an arm read differently from a run is not trained again
    arms = {"final": {"segmentation": "mean"}}
    assert {j.run for j in plan_training(config, ["edue", "final"], [0], tmp_path, arms)} == {
        "edue"
    }


def test_a_debug_study_trains_each_job_and_a_rerun_has_nothing_left(tmp_path):
    config = _config()
    out = tmp_path / "study"
    summary = run_study(config, ["plain", "deep_ensemble"], [0], out, n_boot=20, launcher="debug")
    assert summary["methods"] == ["plain", "deep_ensemble"]
    for run in ("plain", "deep_ensemble"):
        metrics = json.loads((out / "seed0" / run / "eval" / "metrics.json").read_text())
        assert metrics["seed"] == 0
    assert (out / "seed0" / "deep_ensemble" / "member_1" / "best.pt").is_file()
    assert not (out / "seed0" / "deep_ensemble" / "member_0").exists()  # the plain run
    assert plan_training(config, ["plain", "deep_ensemble"], [0], out) == []
    stamp = (out / "seed0" / "plain" / "best.pt").stat().st_mtime_ns
    # an extension may name as its subject a run the folder already holds
    again = run_study(
        config, ["deep_ensemble"], [0], out, n_boot=20, launcher="debug", subject="plain"
    )
    assert (out / "seed0" / "plain" / "best.pt").stat().st_mtime_ns == stamp
    assert again["subject"] == "plain" and set(again["differences"]) == {"deep_ensemble"}


@pytest.mark.slow
def test_a_local_study_runs_its_jobs_as_subprocesses_and_resumes_a_killed_one(tmp_path):
    config = _config(epochs=2)
    out = tmp_path / "study"
    # the plain run was interrupted after its first step (its last.pt is not finished)
    interrupted = copy.deepcopy(config)
    interrupted.method.name, interrupted.train.seed = "plain", 0
    interrupted.out_dir = str(out / "seed0" / "plain")

    class StopAfterOneStep(TrainingCallback):
        def on_step_end(self, trainer, step):
            trainer.request_stop()

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[StopAfterOneStep()])
    assert not load_checkpoint(out / "seed0" / "plain" / "last.pt")["finished"]
    summary = run_study(config, ["plain", "edue"], [0], out, n_boot=20, launcher="local", jobs=2)
    assert set(summary["differences"]) == {"plain"}
    assert load_checkpoint(out / "seed0" / "plain" / "last.pt")["finished"]
    epochs = [json.loads(line)["epoch"] for line in (out / "seed0" / "plain" / "log.jsonl").open()]
    assert epochs == [1, 2]  # resumed inside epoch 1, not started again
    logs = list((out / "jobs").rglob("*_log.err"))
    assert len(logs) == 4  # two trainings, two evaluations, each its own process


def test_a_failed_job_is_one_line_naming_it_after_the_others_ran(tmp_path):
    config = _config()
    work = functools.partial(
        run_job, config_dict=config.to_dict(), out=str(tmp_path), arms={}, ood=False, threads=1
    )
    jobs = [StudyJob("evaluate", 0, "plain"), StudyJob("train", 0, "plain")]
    with pytest.raises(StudyJobFailed, match=r"study job evaluate/seed0/plain failed: .*logs: "):
        launch(jobs, work, "local", tmp_path / "jobs", in_flight=1)
    assert (tmp_path / "seed0" / "plain" / "best.pt").is_file()  # the other job ran
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_parameters(["timeout_min"])
    assert parse_parameters(["timeout_min=30", "slurm_partition=gpu"]) == {
        "timeout_min": 30,
        "slurm_partition": "gpu",
    }
    with pytest.raises(ConfigError, match="--cluster"):
        run_study(_config(), ["plain"], [0], tmp_path / "s", launcher="local", cluster={"nope": 1})
