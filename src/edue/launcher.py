"""Where a study's jobs run: local processes (the default) or submitit executors.

``edue study --launcher slurm`` sends every training run to a Slurm cluster through
`submitit <https://github.com/facebookincubator/submitit>`_, one job per method, seed
and ensemble member, then one job per evaluation; ``--launcher local`` runs the same
jobs as local subprocesses through submitit's ``LocalExecutor`` and ``--launcher
debug`` in this process through its ``DebugExecutor`` (both for trying a cluster set-up
out before submitting). The jobs run :func:`run_job`, which trains with
:func:`edue.engine.training.trainer.train_or_resume`: a finished run is kept, an
interrupted one resumes from its ``last.pt``, so a study whose jobs were killed (a
preempted node, a time limit) is continued by running the same command again.

Job logs and submitit's files are kept in ``<study>/jobs/``. Executor parameters are
passed as ``--cluster KEY=VALUE`` (submitit's names: ``timeout_min``,
``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, …).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edue.errors import ConfigError, EdueError

#: ``processes``: today's local worker processes (``--jobs`` seeds side by side);
#: the others run one job per method, seed and member through submitit
LAUNCHERS = ("processes", "slurm", "local", "debug")
#: the submitit cluster of each launcher that goes through submitit
SUBMITIT_CLUSTERS = {"slurm": "slurm", "local": "local", "debug": "debug"}
#: executor parameters used when the user gives none (a day per job)
DEFAULT_PARAMETERS: dict[str, Any] = {"timeout_min": 24 * 60}


class StudyJobFailed(EdueError):
    """A study job ended with an error (its log files are named in the message)."""


@dataclass(frozen=True)
class StudyJob:
    """One unit of a study's work.

    Attributes:
        kind: ``train`` (one run, or one ensemble member) or ``evaluate``.
        seed: the study seed.
        run: the run's name (a registered method or an arm).
        member: the ensemble member a ``train`` job trains (``None``: the whole run).
        checkpoint: what an ``evaluate`` job evaluates.
    """

    kind: str
    seed: int
    run: str
    member: int | None = None
    checkpoint: str | None = None

    @property
    def name(self) -> str:
        """A readable identifier (``train/seed0/deep_ensemble/member_2``)."""
        tail = f"/member_{self.member}" if self.member is not None else ""
        return f"{self.kind}/seed{self.seed}/{self.run}{tail}"


def parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` executor parameters, values read as YAML scalars (numbers, booleans).

    Raises:
        ConfigError: an item without ``=``.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--cluster {item!r}: expected KEY=VALUE, e.g. timeout_min=600")
        out[key.strip()] = yaml.safe_load(value)
    return out


def executor(launcher: str, folder: Path, parameters: Mapping[str, Any]) -> Any:
    """The submitit executor of ``launcher`` writing its files into ``folder``.

    Raises:
        ConfigError: an unknown launcher, submitit missing, or a parameter the executor
            does not know.
    """
    if launcher not in SUBMITIT_CLUSTERS:
        raise ConfigError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            f"--launcher {launcher} needs submitit: pip install 'edue[cluster]'"
        ) from None
    ex = submitit.AutoExecutor(folder=str(folder), cluster=SUBMITIT_CLUSTERS[launcher])
    try:
        ex.update_parameters(**{**DEFAULT_PARAMETERS, **parameters})
    except (NameError, ValueError, TypeError) as error:  # submitit: NameError for a name
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--cluster: {first}") from None
    return ex


def launch(
    jobs: Sequence[StudyJob],
    function: Callable[[StudyJob], Any],
    launcher: str,
    folder: Path,
    parameters: Mapping[str, Any] | None = None,
    in_flight: int | None = None,
    poll_seconds: float = 1.0,
) -> None:
    """Run ``function(job)`` for every job through submitit and wait for all of them.

    Every job runs even when another fails (finished work is kept); then the first
    failure is raised.

    Args:
        jobs: the work.
        function: a module-level function (pickled into each job).
        launcher: ``slurm``, ``local`` or ``debug``.
        folder: submitit's folder (logs, pickles), ``%j`` added per job.
        parameters: executor parameters (:data:`DEFAULT_PARAMETERS` where not given).
        in_flight: at most this many jobs submitted and unfinished at a time
            (``None``: all at once, the scheduler queues them).
        poll_seconds: how often unfinished jobs are checked.

    Raises:
        StudyJobFailed: a job failed; the message names it and its log files.
    """
    if not jobs:
        return
    folder.mkdir(parents=True, exist_ok=True)
    ex = executor(launcher, folder / "%j", parameters or {})
    pending = list(jobs)
    running: list[tuple[StudyJob, Any]] = []
    failures: list[str] = []
    cap = max(1, in_flight) if in_flight else len(pending)
    while pending or running:
        while pending and len(running) < cap:
            job = pending.pop(0)
            ex.update_parameters(name=f"edue-{job.name.replace('/', '-')}")
            running.append((job, ex.submit(function, job)))
        still: list[tuple[StudyJob, Any]] = []
        for job, handle in running:
            if launcher != "debug" and not handle.done():
                still.append((job, handle))
                continue
            try:
                handle.result()
            except Exception as error:  # noqa: BLE001 - every job's failure is reported
                failures.append(_failure_line(job, handle, error))
        running = still
        if running:
            time.sleep(poll_seconds)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise StudyJobFailed(failures[0] + more)


def _failure_line(job: StudyJob, handle: Any, error: BaseException) -> str:
    """One line naming a failed job, its error and its log files."""
    text = str(error).strip().splitlines()
    reason = text[-1] if text else type(error).__name__
    paths = getattr(handle, "paths", None)
    logs = f"; logs: {paths.stderr}" if paths is not None else ""
    return f"study job {job.name} failed: {reason[:300]}{logs}"


def job_folder(out: Path) -> Path:
    """Where a study's submitit files and job logs go."""
    return Path(out) / "jobs"
