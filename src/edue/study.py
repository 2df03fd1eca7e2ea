"""``edue study``: every method trained to convergence with several seeds, evaluated on
the same test images, compared with paired intervals.

Rules shared by all methods: the same data and split, the same budget (``train.epochs``
as the most epochs, early stopping on the validation loss with ``train.patience``), the
same seeds. Layout of the study folder::

    study.json                      what was asked (config, methods, seeds)
    seed<S>/<method>/               the run (best.pt, last.pt, log.jsonl, …)
    seed<S>/<method>/eval/          its evaluation on the test split (edue evaluate)
    timing.json                     all methods timed side by side on the same images
    study.md, study.json            mean ± std over seeds, paired differences, targets
    report/                         the comparison report of the first seed

A killed study continues where it stopped: finished runs and evaluations are kept, an
interrupted run resumes from its ``last.pt``. Seeds are independent and run as separate
processes with ``jobs > 1``; with a submitit launcher (``slurm``, ``local``, ``debug``;
:mod:`edue.launcher`) every run, seed and ensemble member is its own job instead.

*Arms* are named variants of a method (``--arm NAME:key=value,…``: ``method.*`` values
over the study's, ``name=`` picks the method, default ``edue``; ``preset=paper`` starts
from the published configuration), run and compared like registered methods. An arm
that differs from a run trained before it only in how predictions are read
(:data:`READ_OUT_KEYS`) reuses that run's weights instead of training again.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from edue import result_keys as rk
from edue.config import Config, config_from_dict
from edue.errors import ConfigError
from edue.io import write_json
from edue.launcher import LAUNCHERS, StudyJob, executor, job_folder, launch
from edue.methods.registry import get_method, method_label
from edue.report.roles import method_with_role, methods_with_role

log = logging.getLogger("edue.study")

#: per-image metrics compared by their mean over images
MEAN_METRICS = ("soft_dice", "nll", "pixel_ncc", "ged")
#: per-image metrics reported by their mean only (no per-image column to pair: the GED of
#: many samples, methods that sample only) or not compared (Hungarian-matched IoU)
REPORTED_ONLY = ("hungarian_iou", "ged_many")
#: image-level correlations compared as correlations over images (model SV vs expert SV)
CORRELATIONS = ("image_spearman", "image_partial_spearman", "image_spearman_per_boundary")
#: the study's targets against the references (see docs/method.md, "Study targets")
SPEARMAN_RATIO_VS_ENSEMBLE = 1.3
SPEARMAN_MARGIN_VS_SOFT_LABEL = 0.05
DICE_MARGIN_VS_SOFT_LABEL = 0.01
#: ``method.*`` keys that change how a trained network's outputs are read, not its training
READ_OUT_KEYS = ("segmentation", "score")


def parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` → the arm's name and its ``method.*`` values (YAML
    scalars: ``true``, ``0.1``, ``final``).

    Raises:
        ConfigError: no name, or an item that is not ``key=value``.
    """
    import yaml

    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--arm {text!r}: expected NAME:key=value,… with a plain NAME")
    values: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--arm {text!r}: {item!r} is not key=value")
        values[key.strip()] = yaml.safe_load(value)
    return name, values


def run_config(base: Config, run: str, arms: dict[str, dict[str, Any]]) -> Config:
    """The configuration of one run of a study: a registered method, or an arm.

    Raises:
        ConfigError: an arm's values are not a valid method configuration.
    """
    from edue.config import PAPER_PRESET

    config = copy.deepcopy(base)
    if run not in arms:
        config.method.name = run
        return config
    values = dict(arms[run])
    method = config.to_dict()["method"]
    if values.get("preset") == "paper":
        method.update(PAPER_PRESET)
    method.update({"name": "edue", **values})
    data = config.to_dict()
    data["method"] = method
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"arm {run}: {exc}") from None


def run_label(run: str, arms: dict[str, dict[str, Any]]) -> str:
    """Display name of a run: the arm's name, else the method's label."""
    return run if run in arms else method_label(run)


def _training_key(config: Config) -> str:
    """What decides a run's weights: its configuration less the read-out keys."""
    data = config.to_dict()
    for key in READ_OUT_KEYS:
        data["method"].pop(key, None)
    data.pop("out_dir", None)
    return json.dumps(data, sort_keys=True, default=str)


def run_study(
    config: Config,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    jobs: int = 1,
    ood: bool = False,
    n_boot: int = 1000,
    arms: dict[str, dict[str, Any]] | None = None,
    subject: str | None = None,
    launcher: str = "processes",
    cluster: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and compare ``methods`` over ``seeds``; returns ``study.json``.

    Args:
        jobs: ``processes``: seeds trained side by side; a submitit launcher: jobs
            running at a time (``1``: one after another, except on Slurm, where every
            job is queued at once).
        launcher: where the work runs (:data:`edue.launcher.LAUNCHERS`).
        cluster: submitit executor parameters (``timeout_min``, ``slurm_partition``, …).
        arms: named variants (run name → ``method.*`` values; see :func:`run_config`),
            run after the registered ``methods`` (or where ``methods`` names them).
        subject: the run compared with every other one (default: the registered
            subject, EDUE).

    Raises:
        ConfigError: an unknown method, no seeds, or a study folder that holds a study
            of another configuration (one of the same configuration is extended by the
            methods and seeds it lacks).
    """
    out = Path(out)
    arms = dict(arms or {})
    methods = [m if m in arms else get_method(m).name for m in methods]
    methods += [a for a in arms if a not in methods]
    if not seeds or not methods:
        raise ConfigError("a study needs at least one method or arm, and one seed")
    for arm in arms:
        run_config(config, arm, arms)  # a wrong arm fails before any work
    runs = list(dict.fromkeys([*_requested_runs(out), *methods]))
    if subject is not None and subject not in runs:
        raise ConfigError(f"--subject {subject}: not one of the study's runs ({', '.join(runs)})")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if launcher != "processes":
        executor(launcher, job_folder(out), cluster or {})  # a wrong parameter fails first
    before = _previous_minutes(out)
    methods, seeds, arms = _claim_folder(out, config, methods, seeds, arms)
    started = time.perf_counter()
    threads = max(1, _cores() // max(1, jobs))
    args = [(config.to_dict(), list(methods), seed, str(out), ood, threads, arms) for seed in seeds]
    if launcher != "processes":
        _run_with_submitit(
            config, methods, seeds, out, ood, arms, launcher, dict(cluster or {}), jobs
        )
    elif jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            list(pool.map(_study_seed_in_worker, *zip(*args, strict=True)))
    else:
        for item in args:
            with _torch_threads(threads):
                _study_seed(*item)
    timing = time_side_by_side(out, methods, seeds[0], config)
    summary = summarise(out, methods, seeds, n_boot, subject=subject, arms=arms)
    summary["timing"] = timing
    summary["minutes"] = before + (time.perf_counter() - started) / 60
    write_json(out / "study.json", summary)
    (out / "study.md").write_text(study_markdown(summary), encoding="utf-8")
    from edue.report.compare import compare_runs

    compare_runs([str(out / f"seed{seeds[0]}" / m / "eval") for m in methods], out / "report")
    return summary


def _requested_runs(out: Path) -> list[str]:
    """The runs of the study already in ``out`` (none when there is none)."""
    try:
        request = json.loads((out / "study-request.json").read_text(encoding="utf-8"))
        return [str(m) for m in request["methods"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def _previous_minutes(out: Path) -> float:
    """Minutes a finished study in ``out`` took (0 when there is none): an extension adds
    its own."""
    try:
        return float(json.loads((out / "study.json").read_text(encoding="utf-8"))["minutes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _claim_folder(
    out: Path,
    config: Config,
    methods: list[str],
    seeds: Sequence[int],
    arms: dict[str, dict[str, Any]],
) -> tuple[list[str], list[int], dict[str, dict[str, Any]]]:
    """Claim ``out`` for this study, or check that it holds the same one.

    A study may be *extended*: methods or seeds not in it are added, those it has are
    kept (naming only the new ones is enough), with the same configuration (compared
    after both are read by this version, so keys added since with their defaults do not
    count as a change); what was trained is reused.

    Returns:
        the study's runs, seeds and arms (an extension's: the earlier ones, then the new).

    Raises:
        ConfigError: ``out`` holds a study of another configuration, or an arm of the
            same name with other values.
    """
    from edue.config import config_from_dict

    path = out / "study-request.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        try:
            same = config_from_dict(before["config"]).to_dict() == config.to_dict()
        except (ConfigError, KeyError, TypeError):
            same = False
        if not same:
            raise ConfigError(
                f"{out} holds another study (its configuration differs); choose another "
                "--out, or pass the same configuration to add methods or seeds"
            )
        earlier = dict(before.get("arms") or {})
        changed = [a for a in arms if a in earlier and earlier[a] != arms[a]]
        if changed:
            raise ConfigError(
                f"{out} holds arm {changed[0]} with other values ({earlier[changed[0]]}); "
                "give the new variant another name"
            )
        arms = {**earlier, **arms}
        methods = [*before["methods"], *(m for m in methods if m not in before["methods"])]
        seeds = [*before["seeds"], *(s for s in seeds if s not in before["seeds"])]
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {"config": config.to_dict(), "methods": methods, "seeds": list(seeds), "arms": arms},
    )
    return list(methods), [int(s) for s in seeds], arms


def _study_seed_in_worker(*args: Any) -> None:
    """:func:`_study_seed` in a worker process, its progress lines on the worker's
    stderr (a spawned process does not inherit the command's log handler)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with _torch_threads(int(args[5])):
        _study_seed(*args)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block, restored after it (a
    seed run in-process, ``jobs = 1``, leaves the caller's count as it was)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _seed_config(
    base: Config,
    run: str,
    arms: dict[str, dict[str, Any]],
    seed: int,
    out: str | Path,
    threads: int,
) -> Config:
    """The configuration of ``run`` for ``seed``, trained into ``out/seed<S>/<run>``."""
    config = run_config(base, run, arms)
    config.train.seed = seed
    config.train.threads = threads
    config.out_dir = str(Path(out) / f"seed{seed}" / run)
    return config


def _runs_in_order(methods: Sequence[str], arms: dict[str, dict[str, Any]]) -> list[str]:
    """Registered methods in training order (a reused run first), then the arms."""
    from edue.engine.training.jobs import training_order

    registered = training_order([m for m in methods if m not in arms])
    return [*registered, *(m for m in methods if m in arms)]


def _train_seed(
    base: Config,
    methods: Sequence[str],
    seed: int,
    out: str | Path,
    threads: int,
    arms: dict[str, dict[str, Any]],
) -> dict[str, Path]:
    """Train (or resume, or reuse) every run of one seed; returns each run's checkpoint."""
    from edue.engine.checkpoint import reconfigured_checkpoint
    from edue.engine.training.jobs import train_compared

    trained: dict[str, Path] = {}
    keys: dict[str, str] = {}
    for run in _runs_in_order(methods, arms):
        config = _seed_config(base, run, arms, seed, out, threads)
        started = time.perf_counter()
        key = _training_key(config)
        same = next((r for r, k in keys.items() if k == key), None)
        if run in arms and same is not None:  # read differently, trained the same
            trained[run] = reconfigured_checkpoint(trained[same], config)
            log.info(f"[study] seed {seed}: {run} reuses the weights of {same}")
        else:
            trained[run] = train_compared(config, trained)
            log.info(f"[study] seed {seed}: {run} trained ({time.perf_counter() - started:.0f} s)")
        keys.setdefault(run, key)
    return trained


def _test_cases(base: Config) -> list[Any]:
    """The study's test images (every run is evaluated on the same ones)."""
    from edue.data.pipeline import prepare_data

    test = prepare_data(base.data, ["test"], require_train=False).subsets["test"]
    return [test.load(i) for i in range(len(test))]


def _evaluation_folder(out: str | Path, seed: int, run: str) -> Path:
    return Path(out) / f"seed{seed}" / run / "eval"


def _evaluate_run(
    base: Config,
    run: str,
    seed: int,
    out: str | Path,
    checkpoint: Path,
    cases: list[Any],
    ood: bool,
    arms: dict[str, dict[str, Any]],
) -> None:
    """Evaluate one trained run on the test images into ``seed<S>/<run>/eval``."""
    from edue.engine.evaluation.evaluate import evaluate_predictor
    from edue.engine.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device=base.train.device)
    label = run if run in arms else None
    evaluate_predictor(
        predictor,
        cases,
        _evaluation_folder(out, seed, run),
        ood=ood,
        seed=seed,
        extra={"label": label, "seed": seed},
    )
    log.info(f"[study] seed {seed}: {run} evaluated")


def _study_seed(
    config_dict: dict[str, Any],
    methods: list[str],
    seed: int,
    out: str,
    ood: bool,
    threads: int,
    arms: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Train and evaluate every run for one seed (one process of the study; the caller
    sets torch's threads, :func:`_torch_threads`)."""
    arms = arms or {}
    base = config_from_dict(config_dict)
    trained = _train_seed(base, methods, seed, out, threads, arms)
    cases = _test_cases(base)
    for run in methods:
        if not (_evaluation_folder(out, seed, run) / "metrics.json").is_file():
            _evaluate_run(base, run, seed, out, trained[run], cases, ood, arms)


def _finished(config: Config) -> bool:
    """Whether the run of ``config`` finished training (its ``last.pt`` says so)."""
    from edue.engine.checkpoint import load_checkpoint

    last = Path(config.out_dir) / "last.pt"
    return last.is_file() and bool(load_checkpoint(last).get("finished"))


def plan_training(
    base: Config,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    arms: dict[str, dict[str, Any]] | None = None,
) -> list[StudyJob]:
    """The training jobs a study still needs: one per run, seed and ensemble member.

    Left out: finished runs, runs that reuse another run's weights (``trained_as``, an
    arm trained like an earlier run) and an ensemble's member 0 when it is another
    run's (``first_member_from``); these are assembled afterwards in no time.
    """
    from edue.engine.training.ensemble import member_config

    arms = arms or {}
    jobs: list[StudyJob] = []
    for seed in seeds:
        keys: dict[str, str] = {}
        for run in _runs_in_order(methods, arms):
            config = _seed_config(base, run, arms, seed, out, threads=1)
            key = _training_key(config)
            same = next((r for r, k in keys.items() if k == key), None)
            keys.setdefault(run, key)
            spec = get_method(config.method.name)
            if (run in arms and same is not None) or (spec.trained_as in keys):
                continue
            if not spec.trains_members_separately:
                if not _finished(config):
                    jobs.append(StudyJob("train", seed, run))
                continue
            for i in range(config.method.ensemble_size):
                if i == 0 and spec.first_member_from in keys:
                    continue
                if not _finished(member_config(config, i)):
                    jobs.append(StudyJob("train", seed, run, member=i))
    return jobs


def run_job(
    job: StudyJob,
    config_dict: dict[str, Any],
    out: str,
    arms: dict[str, dict[str, Any]],
    ood: bool,
    threads: int | None,
) -> str:
    """Run one study job (in a submitit job: a cluster node, a local subprocess).

    Returns:
        The trained run's folder, or the evaluation folder.
    """
    from edue.engine.training.ensemble import member_config
    from edue.engine.training.trainer import train_or_resume

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = config_from_dict(config_dict)
    cores = threads or _cores()
    with _torch_threads(cores):
        config = _seed_config(base, job.run, arms, job.seed, out, cores)
        if job.kind == "train":
            if job.member is not None:
                config = member_config(config, job.member)
            return str(train_or_resume(config))
        if job.checkpoint is None:
            raise ConfigError(f"study job {job.name}: no checkpoint to evaluate")
        _evaluate_run(
            base, job.run, job.seed, out, Path(job.checkpoint), _test_cases(base), ood, arms
        )
        return str(_evaluation_folder(out, job.seed, job.run))


def _run_with_submitit(
    config: Config,
    methods: list[str],
    seeds: list[int],
    out: Path,
    ood: bool,
    arms: dict[str, dict[str, Any]],
    launcher: str,
    parameters: dict[str, Any],
    jobs: int,
) -> None:
    """Train every run as its own job, assemble, then evaluate each run as a job."""
    in_flight = jobs if jobs > 1 else (None if launcher == "slurm" else 1)
    threads = None if launcher == "slurm" else max(1, _cores() // (in_flight or 1))
    work = functools.partial(
        run_job, config_dict=config.to_dict(), out=str(out), arms=arms, ood=ood, threads=threads
    )
    folder = job_folder(out)
    training = plan_training(config, methods, seeds, out, arms)
    log.info(f"[study] {len(training)} training jobs through submitit ({launcher})")
    launch(training, work, launcher, folder, parameters, in_flight)
    evaluations: list[StudyJob] = []
    for seed in seeds:
        trained = _train_seed(config, methods, seed, out, 1, arms)  # all done: assembles
        evaluations += [
            StudyJob("evaluate", seed, run, checkpoint=str(trained[run]))
            for run in methods
            if not (_evaluation_folder(out, seed, run) / "metrics.json").is_file()
        ]
    log.info(f"[study] {len(evaluations)} evaluation jobs through submitit ({launcher})")
    launch(evaluations, work, launcher, folder, parameters, in_flight)


def time_side_by_side(
    out: Path, methods: Sequence[str], seed: int, config: Config, images: int = 4, rounds: int = 5
) -> dict[str, float]:
    """Seconds per image of every method of one seed, timed side by side
    (:func:`edue.engine.inference.timing.time_interleaved`) on test images, written into every
    seed's evaluation ``metrics.json``.

    Returns:
        Median seconds per image by method.
    """
    from edue.engine.inference.timing import record_times, time_interleaved

    folder = Path(out) / f"seed{seed}"
    sample = np.load(folder / methods[0] / "eval" / "samples.npz")
    inputs = [sample[f"{i}/image"] for i in range(images) if f"{i}/image" in sample.files]
    checkpoints = {m: _checkpoint(folder / m) for m in methods}
    medians = time_interleaved(checkpoints, inputs, config.train.device, rounds)
    for seed_folder in Path(out).glob("seed*"):
        record_times({m: seed_folder / m / "eval" for m in methods}, medians)
    write_json(Path(out) / "timing.json", {"seconds_per_image": medians, "images": len(inputs)})
    return medians


def _checkpoint(run: Path) -> Path:
    for name in ("ensemble.pt", "best.pt"):
        if (run / name).is_file():
            return run / name
    raise ConfigError(f"{run}: no trained checkpoint")


def _per_case(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        key: np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
        for key in rows[0]
        if key not in ("case_id", "method")
    }


def summarise(
    out: Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    n_boot: int = 1000,
    subject: str | None = None,
    arms: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Mean ± std over seeds of every run, and paired differences of the subject
    (``subject``, default the registered one: EDUE) against every other run, with the
    targets checked."""
    from edue.metrics.paired import mean_statistic, paired_difference, spearman_statistic

    metrics = {
        m: [json.loads((out / f"seed{s}" / m / "eval" / "metrics.json").read_text()) for s in seeds]
        for m in methods
    }
    cases = {
        m: [_per_case(out / f"seed{s}" / m / "eval" / "per_case.csv") for s in seeds]
        for m in methods
    }
    structures = metrics[methods[0]][0]["structures"]
    summary: dict[str, Any] = {
        "methods": list(methods),
        "seeds": list(seeds),
        "structures": structures,
    }
    table: dict[str, dict[str, list[float]]] = {}
    for m in methods:
        table[m] = {}
        for s in structures:
            for key in (
                *[rk.key(k, s, rk.MEAN) for k in (*MEAN_METRICS, *REPORTED_ONLY)],
                *[rk.key(k, s) for k in CORRELATIONS],
            ):
                values = np.array([float(info["metrics"].get(key, np.nan)) for info in metrics[m]])
                finite = values[np.isfinite(values)]  # a correlation is nan on constant SVs
                table[m][key] = (
                    [float(finite.mean()), float(finite.std())] if finite.size else [np.nan, np.nan]
                )
    summary["mean_std"] = table
    summary["members"] = {m: int(metrics[m][0].get("n_members", 0)) for m in methods}
    summary["labels"] = {m: run_label(m, arms or {}) for m in methods}
    summary["arms"] = dict(arms or {})
    if subject is None:
        registered = method_with_role("subject")
        subject = registered.name if registered is not None else None
    if subject is None or subject not in methods:
        summary["differences"] = {}
        return summary
    summary["subject"] = subject

    def stack(m: str, key: str) -> np.ndarray:
        return np.stack([c[key] for c in cases[m]])

    differences: dict[str, dict[str, dict[str, float]]] = {}
    for other in methods:
        if other == subject:
            continue
        differences[other] = {}
        for s in structures:
            for k in MEAN_METRICS:
                differences[other][rk.key(k, s)] = paired_difference(
                    (stack(subject, rk.key(k, s)),),
                    (stack(other, rk.key(k, s)),),
                    mean_statistic,
                    n_boot,
                )
            sv = (stack(subject, rk.key(rk.MODEL_SV, s)), stack(subject, rk.key(rk.EXPERT_SV, s)))
            sv_other = (stack(other, rk.key(rk.MODEL_SV, s)), stack(other, rk.key(rk.EXPERT_SV, s)))
            differences[other][rk.key(rk.IMAGE_SPEARMAN, s)] = paired_difference(
                sv, sv_other, spearman_statistic, n_boot
            )
    summary["differences"] = differences
    summary["targets"] = check_targets(summary, subject)
    return summary


def check_targets(summary: dict[str, Any], subject: str) -> list[dict[str, Any]]:
    """The study's targets per structure, each with its numbers and verdict (``None``:
    the reference was not part of the study)."""
    table, diffs = summary["mean_std"], summary["differences"]
    ensemble = method_with_role("ensemble_reference")
    soft = [
        s.name
        for s in methods_with_role("one_pass_reference")
        if s.name in table and s.name != subject
    ]
    out: list[dict[str, Any]] = []

    def add(target: str, structure: str, value: float, passed: bool | None) -> None:
        out.append({"target": target, "structure": structure, "value": value, "passed": passed})

    for s in summary["structures"]:
        mine = table[subject]
        if ensemble is not None and ensemble.name in table:
            ref = table[ensemble.name]
            ratio = mine[rk.key(rk.IMAGE_SPEARMAN, s)][0] / ref[rk.key(rk.IMAGE_SPEARMAN, s)][0]
            add(
                f"Spearman >= {SPEARMAN_RATIO_VS_ENSEMBLE} x {ensemble.label}",
                s,
                ratio,
                bool(ratio >= SPEARMAN_RATIO_VS_ENSEMBLE),
            )
            nll = mine[rk.key(rk.NLL, s, rk.MEAN)][0] - ref[rk.key(rk.NLL, s, rk.MEAN)][0]
            add(f"NLL <= {ensemble.label}", s, nll, bool(nll <= 0))
        if soft:
            best = max(soft, key=lambda m: table[m][rk.key(rk.IMAGE_SPEARMAN, s)][0])
            d = diffs[best][rk.key(rk.IMAGE_SPEARMAN, s)]
            add(
                f"Spearman >= best soft-label baseline ({method_label(best)}) + "
                f"{SPEARMAN_MARGIN_VS_SOFT_LABEL}, interval above 0",
                s,
                d["difference"],
                bool(d["difference"] >= SPEARMAN_MARGIN_VS_SOFT_LABEL and d["ci_low"] > 0),
            )
            worst_ncc = min(
                mine[rk.key(rk.PIXEL_NCC, s, rk.MEAN)][0]
                - table[m][rk.key(rk.PIXEL_NCC, s, rk.MEAN)][0]
                for m in soft
            )
            add("pixel NCC >= every soft-label baseline", s, worst_ncc, bool(worst_ncc >= 0))
            best_dice = max(table[m][rk.key(rk.SOFT_DICE, s, rk.MEAN)][0] for m in soft)
            gap = mine[rk.key(rk.SOFT_DICE, s, rk.MEAN)][0] - best_dice
            add(
                f"soft Dice within {DICE_MARGIN_VS_SOFT_LABEL} of the better soft-label baseline",
                s,
                gap,
                bool(gap >= -DICE_MARGIN_VS_SOFT_LABEL),
            )
    return out


def _pm(pair: list[float], digits: int) -> str:
    mean, std = pair
    return "—" if not np.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def study_markdown(summary: dict[str, Any]) -> str:
    """The study's tables: mean ± std over seeds, paired differences, targets, time."""
    structures, seeds = summary["structures"], summary["seeds"]
    labels = summary.get("labels", {})

    def label(run: str) -> str:
        return str(labels.get(run) or method_label(run))

    lines = [
        f"# Study: {len(summary['methods'])} methods, seeds {', '.join(map(str, seeds))}",
        "",
        "Mean ± std over seeds (test split). Spearman: model SV vs expert SV over images;",
        "partial: controlling for the structure's area; per boundary: SV per boundary pixel.",
        "GED (squared, d = 1 − IoU, self-pairs included, empty–empty IoU 1) and HM-IoU of",
        f"the members (their number: `members`); GED of {rk.MANY_SAMPLES} samples for the",
        "methods that sample (MC dropout, SSN, the Probabilistic U-Net).",
        "",
    ]
    if summary.get("arms"):
        lines += ["Arms (`method.*` values over the study's configuration):", ""]
        for arm, values in summary["arms"].items():
            text = ", ".join(f"{k}={v}" for k, v in values.items()) or "(none)"
            lines.append(f"* {arm}: {text}")
        lines.append("")
    if summary.get("subject"):
        lines += [f"Subject of the paired differences: {label(summary['subject'])}.", ""]
    columns = [
        ("soft Dice", rk.template(rk.SOFT_DICE, rk.MEAN), 3),
        ("NLL", rk.template(rk.NLL, rk.MEAN), 3),
        ("Spearman", rk.template(rk.IMAGE_SPEARMAN), 2),
        ("partial", rk.template(rk.IMAGE_PARTIAL_SPEARMAN), 2),
        ("per boundary", rk.template(rk.IMAGE_SPEARMAN_PER_BOUNDARY), 2),
        ("pixel NCC", rk.template(rk.PIXEL_NCC, rk.MEAN), 2),
        ("GED (members)", rk.template(rk.GED, rk.MEAN), 3),
        (f"GED ({rk.MANY_SAMPLES} samples)", rk.template(rk.GED_MANY, rk.MEAN), 3),
        ("HM-IoU (members)", rk.template(rk.HUNGARIAN_IOU, rk.MEAN), 3),
    ]
    for s in structures:
        lines += [
            f"## {s}",
            "",
            "| method | members | " + " | ".join(c[0] for c in columns) + " | ms/image |",
            "|---" * (len(columns) + 3) + "|",
        ]
        for m in summary["methods"]:
            row = summary["mean_std"][m]
            ms = summary.get("timing", {}).get(m, float("nan")) * 1000
            cells = [_pm(row[key.format(s=s)], digits) for _, key, digits in columns]
            members = summary.get("members", {}).get(m, "—")
            lines.append(f"| {label(m)} | {members} | " + " | ".join(cells) + f" | {ms:.1f} |")
        lines.append("")
    if summary.get("differences"):
        lines += [
            "## Paired differences (subject − other; 95 % bootstrap over images, "
            "pooled over seeds)",
            "",
            "| other | metric | difference | interval |",
            "|---|---|---|---|",
        ]
        for other, entries in summary["differences"].items():
            for key, d in entries.items():
                lines.append(
                    f"| {label(other)} | {key} | {d['difference']:+.3f} | "
                    f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |"
                )
        lines.append("")
    if summary.get("targets"):
        lines += ["## Targets", "", "| target | structure | value | met |", "|---|---|---|---|"]
        for t in summary["targets"]:
            mark = {True: "yes", False: "**no**", None: "—"}[t["passed"]]
            lines.append(f"| {t['target']} | {t['structure']} | {t['value']:+.3f} | {mark} |")
    return "\n".join(lines) + "\n"
