"""The ``edue`` command line. Subcommands are thin; heavy imports happen inside them.

Errors the user can cause end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method as configured")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5")
    p.add_argument("--config", help="YAML configuration (defaults when omitted)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--out", help="run folder (same as out_dir=...)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="same as train.device=...")
    p.add_argument("--member", type=int, help="train one Deep Ensemble member (method.member)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="the run folder holds a run: move it aside (<folder>.replaced-<time>) and start anew",
    )
    p.set_defaults(func=cmd_train)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="one-pass prediction on new images")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("inputs", nargs="+", help="image files or folders (PNG, TIFF, JPEG, NIfTI, NPY)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="report unreadable inputs and go on (exit status 1 if any failed)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the overlay PNGs")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="consecutive images of equal size per forward pass (default 8; 1: one by one)",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration file of `edue calibrate` (default: calibration.json beside the "
        "checkpoint, when there is one)",
    )
    p.add_argument(
        "--no-calibration", action="store_true", help="no referral decisions, whatever file exists"
    )
    p.add_argument("--no-gallery", action="store_true", help="skip predictions.html")
    p.set_defaults(func=cmd_predict)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="referral thresholds with a guarantee, the experts' scale and the OOD gate",
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument(
        "--split", default="val", help="calibration subset of the run's split (default val)"
    )
    _add_poor(p)
    p.add_argument(
        "--alpha",
        type=float,
        default=0.1,
        help="largest share of poor segmentations among the images not referred (default 0.1)",
    )
    p.add_argument(
        "--delta",
        type=float,
        default=0.1,
        help="probability that the guarantee fails, over the calibration images (default 0.1)",
    )
    p.add_argument(
        "--false-alarm",
        type=float,
        default=0.05,
        help="share of images like the calibration ones the OOD gate flags (default 0.05)",
    )
    p.add_argument("--out", help="file to write (default: calibration.json beside the checkpoint)")
    p.add_argument(
        "--data", help="dataset root of the calibration images (default: the training one's)"
    )
    p.add_argument("--format", help="dataset format (default: the training configuration's)")
    p.add_argument(
        "--all", action="store_true", help="calibrate on every case of --data (unseen images)"
    )
    p.add_argument(
        "--gate-blocks",
        type=int,
        default=2,
        metavar="N",
        help="encoder blocks the OOD gate reads, deepest first (default 2)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_calibrate)


class _PoorLevels(argparse.Action):
    """``--poor S=D [S=D ...]``, repeatable; the old ``--poor-threshold`` of ``evaluate``
    still works for one release, with a notice."""

    def __call__(  # type: ignore[override]
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: list[str],
        option_string: str | None = None,
    ) -> None:
        if option_string == "--poor-threshold":
            print(
                "edue: --poor-threshold is deprecated and will be removed; use --poor",
                file=sys.stderr,
            )
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *values])


def _add_poor(p: argparse.ArgumentParser, purpose: str = "") -> None:
    p.add_argument(
        "--poor",
        "--poor-threshold",
        dest="poor",
        action=_PoorLevels,
        nargs="+",
        default=[],
        metavar="STRUCTURE=DICE",
        help=f"{purpose}a segmentation of STRUCTURE is poor below this soft Dice "
        "(repeatable; defaults: disc 0.97, cup 0.85, GTVp 0.8, GTVn 0.6, others 0.8; "
        "--poor-threshold is a deprecated alias)",
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="every metric of a checkpoint on a dataset split")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", help="dataset root (default: the training configuration's)")
    p.add_argument("--format", help="dataset format (default: the training configuration's)")
    p.add_argument("--split", default="test", help="subset of the run's split (default test)")
    p.add_argument("--all", action="store_true", help="evaluate every case of --data")
    p.add_argument("--ood", action="store_true", help="also run the distortion study")
    _add_poor(p, "quality control and referral: ")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration file of `edue calibrate` (default: calibration.json beside the "
        "checkpoint, else one fitted on --calibration-split without saving it)",
    )
    p.add_argument(
        "--calibration-split",
        default="val",
        help="split of the in-memory calibration when there is no file (default val)",
    )
    p.add_argument("--no-calibration", action="store_true", help="no referral outcome")
    p.set_defaults(func=cmd_evaluate)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="tables, figures and report.html from evaluated runs")
    p.add_argument("runs", nargs="+", help="evaluation folders written by `edue evaluate`")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_compare)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the embedded synthetic dataset to disk")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--raters", type=int, default=6)
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="--out holds a dataset: move it aside (<folder>.replaced-<time>) first",
    )
    s.set_defaults(func=cmd_data_synth)
    c = dsub.add_parser("check", help="read a whole dataset and summarise its problems")
    c.add_argument("root")
    c.add_argument("--format", default="folder")
    c.add_argument("--strict", action="store_true", help="any problem is an error")
    c.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option (repeatable)",
    )
    c.set_defaults(func=cmd_data_check)
    r = dsub.add_parser("riga-extract", help="masks from the original RIGA release")
    r.add_argument("src")
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_riga_extract)


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="Deep Ensemble tools")
    esub = p.add_subparsers(dest="ensemble_command", required=True)
    g = esub.add_parser("gather", help="join member checkpoints into one predictor")
    g.add_argument("members", nargs="+", help="member checkpoints or run folders")
    g.add_argument("--out", required=True, help="output checkpoint file")
    g.set_defaults(func=cmd_ensemble_gather)


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="every method to convergence over several seeds, paired comparison"
    )
    p.add_argument("config", help="YAML configuration shared by every method")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.patience=5")
    p.add_argument(
        "--methods",
        default=None,
        help='comma-separated registered methods (default: all; "": only the --arm runs)',
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", required=True, help="study folder (a killed study resumes here)")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained side by side")
    p.add_argument("--ood", action="store_true", help="also run the distortion study")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws of the intervals")
    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,…",
        help="a named variant: method.* values over the study's (name=METHOD, default "
        "edue; preset=paper); repeatable",
    )
    p.add_argument(
        "--subject", default=None, help="the run compared with every other (default: EDUE)"
    )
    p.set_defaults(func=cmd_study)


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    s = csub.add_parser("show", help="print the resolved configuration, defaults included")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5")
    s.add_argument("--config", help="YAML configuration (defaults when omitted)")
    s.set_defaults(func=cmd_config_show)


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="backbone tools")
    msub = p.add_subparsers(dest="model_command", required=True)
    s = msub.add_parser(
        "show", help="the backbone's tappable blocks: output shapes, parameters, heads"
    )
    s.add_argument("config", help="YAML configuration")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.encoder=resnet50")
    s.add_argument("--in-channels", type=int, help="image channels (default: the dataset's)")
    s.add_argument("--dims", type=int, choices=[2, 3], help="2 or 3 (default: the dataset's)")
    s.add_argument("--size", type=int, nargs="+", help="probe input size (default: the patch)")
    s.set_defaults(func=cmd_model_show)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole comparison on the embedded dataset")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--dims", type=int, default=2, choices=[2, 3])
    p.add_argument("--quick", action="store_true", help="a tiny run (for tests)")
    p.add_argument(
        "--methods", nargs="*", help="subset of the registered methods to train (default: all)"
    )
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also train EDUE without guidance and without label sampling",
    )
    p.set_defaults(func=cmd_demo)


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="the prepared-case cache: list or clear its stores")
    csub = p.add_subparsers(dest="cache_command", required=True)
    where = (
        "cache folder (default, as for data.cache_dir: $EDUE_CACHE_DIR, else "
        "$XDG_CACHE_HOME/edue, else ~/.cache/edue)"
    )
    s = csub.add_parser("list", help="one line per store: reader, data root, size, last use")
    s.add_argument("--dir", metavar="FOLDER", help=where)
    s.set_defaults(func=cmd_cache)
    c = csub.add_parser("clear", help="remove stores (those in use are kept)")
    c.add_argument("--dir", metavar="FOLDER", help=where)
    c.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="only stores not used for DAYS days (default: every store)",
    )
    c.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    c.set_defaults(func=cmd_cache)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``edue``."""
    from edue._version import __version__

    parser = argparse.ArgumentParser(
        prog="edue",
        description="One-pass uncertainty for multi-rater medical image segmentation (EDUE).",
    )
    parser.add_argument("--version", action="version", version=f"edue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_predict,
        _add_calibrate,
        _add_evaluate,
        _add_compare,
        _add_data,
        _add_ensemble,
        _add_config,
        _add_model,
        _add_study,
        _add_demo,
        _add_cache,
    ):
        add(sub)
    return parser


# ---------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    import contextlib

    from edue.config import load_config
    from edue.engine.run_folder import claim_folder, folder_lock, is_main_rank
    from edue.engine.training.trainer import train, train_method
    from edue.outputs import check_output_dir

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.member is not None:
        overrides.append(f"method.member={args.member}")
    main_rank = is_main_rank()
    if args.resume:
        config, resume = _resumed(args, overrides, main_rank)
    else:
        config, resume = load_config(args.config, overrides), None
        if main_rank:
            check_output_dir(config.out_dir, what="run folder (--out)")
            claim_folder(config.out_dir, args.overwrite)
    lock = folder_lock(config.out_dir) if main_rank else contextlib.nullcontext()
    with lock:
        run = train(config, resume=resume) if resume is not None else train_method(config)
    print(f"run folder: {run}")
    return 0


def _resumed(args: argparse.Namespace, overrides: list[str], main_rank: bool) -> tuple:  # type: ignore[type-arg]
    """The configuration and checkpoint of ``train --resume``: the run's configuration
    with the changes asked for (only those a resume allows), continuing in the resumed
    folder or, with ``--out``, in a copy of it."""
    import shutil
    from pathlib import Path

    from edue.engine.checkpoint import load_checkpoint
    from edue.engine.run_folder import check_lock, claim_folder
    from edue.engine.training.trainer import resume_state_path, resumed_config
    from edue.outputs import check_output_dir

    source = resume_state_path(args.resume)
    state = load_checkpoint(source)
    folder = source.parent
    if not any(o.startswith("out_dir=") for o in overrides):
        overrides = [f"out_dir={folder}", *overrides]  # where the run is now
    config = resumed_config(state["config"], args.config, overrides, int(state.get("epoch", 0)))
    target = Path(config.out_dir)
    if not main_rank:
        return config, (target / source.name if target.resolve() != folder.resolve() else source)
    check_output_dir(target, what="run folder (--out)")
    if target.resolve() == folder.resolve():
        check_lock(folder)
        return config, source
    claim_folder(target, args.overwrite)  # the copy goes into a folder of its own
    for name in ("config.yaml", "split.json", "log.jsonl", "best.pt", "last.pt"):
        if (folder / name).is_file():
            shutil.copy2(folder / name, target / name)
    if source.name != "last.pt":
        shutil.copy2(source, target / source.name)
    return config, target / source.name


def cmd_study(args: argparse.Namespace) -> int:
    from edue.config import load_config
    from edue.errors import ConfigError
    from edue.methods.registry import method_names
    from edue.outputs import check_output_dir
    from edue.study import parse_arm, run_study

    config = load_config(args.config, list(args.overrides))
    arms = dict(parse_arm(a) for a in args.arm)
    check_output_dir(args.out, what="study folder (--out)")
    methods = (
        [m for m in args.methods.split(",") if m.strip()]
        if args.methods is not None
        else list(method_names())
    )
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds '{args.seeds}': expected comma-separated integers") from None
    summary = run_study(
        config,
        methods,
        seeds,
        args.out,
        jobs=args.jobs,
        ood=args.ood,
        n_boot=args.n_boot,
        arms=arms,
        subject=args.subject,
    )
    print(f"study of {len(methods)} methods x {len(seeds)} seeds: {args.out}/study.md")
    for target in summary.get("targets", []):
        verdict = {True: "met", False: "NOT met", None: "n/a"}[target["passed"]]
        print(f"  {target['structure']:>6}: {target['target']}: {target['value']:+.3f} {verdict}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from edue.config import load_config

    config = load_config(args.config, list(args.overrides))
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from edue.config import load_config
    from edue.engine.training.model_summary import summarize_backbone

    config = load_config(args.config, list(args.overrides))
    in_channels, dims, size = args.in_channels, args.dims, None
    if in_channels is None or dims is None:
        from edue.data.pipeline import open_configured_source

        first = open_configured_source(config.data).load(0)
        in_channels = in_channels or int(first.image.shape[0])
        dims = dims or first.spatial_dims
        if not (config.data.patch_size or config.data.size):
            size = tuple(int(s) for s in first.image.shape[1:])
    if args.size:
        size = tuple(args.size) * (dims if len(args.size) == 1 else 1)
    summary = summarize_backbone(config, in_channels, dims, size)
    print(
        f"backbone {summary.kind}: {summary.total_parameters:,} parameters; input "
        f"{list(summary.input_shape)} (sizes multiples of {summary.size_divisor})"
    )
    print(f"{'block':<12} {'output [C, *spatial]':<26} {'parameters':>12}  head")
    for row in summary.blocks:
        shape = str(list(row.shape))
        print(f"{row.name:<12} {shape:<26} {row.parameters:>12,}  {'yes' if row.head else ''}")
    n_heads = sum(row.head for row in summary.blocks)
    print(f"method.heads = {config.method.heads}: {n_heads} heads")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from edue.engine.inference.files import predict_files
    from edue.outputs import check_output_dir
    from edue.report.console import referral_line

    check_output_dir(args.out, inputs=args.inputs, what="prediction folder (--out)")
    from edue.report.gallery import write_gallery
    from edue.report.prediction_figures import write_prediction_figure

    result = predict_files(
        args.checkpoint,
        args.inputs,
        args.out,
        device=args.device,
        skip_bad=args.skip_bad,
        figure_writer=None if args.no_figures else write_prediction_figure,
        batch_size=args.batch_size,
        calibration=args.calibration,
        use_calibration=not args.no_calibration,
        gallery_writer=None if args.no_gallery else write_gallery,
    )
    for item in result.failed:
        print(f"edue: skipped {item['input']}: {item['reason']}", file=sys.stderr)
    print(
        f"predicted {len(result.done)} image(s), {len(result.failed)} failed; "
        f"outputs in {result.out_dir}"
    )
    print(referral_line(result.referral, args.no_calibration))
    if result.gallery is not None:
        print(f"gallery: {result.gallery}")
    for item in result.failed:
        print(f"  failed: {item['input']}: {item['reason']}")
    return 1 if result.failed else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edue.engine.referral.calibrate import calibrate_checkpoint
    from edue.metrics.qc import parse_poor_thresholds
    from edue.report.console import calibration_lines

    calibration = calibrate_checkpoint(
        args.checkpoint,
        parse_poor_thresholds(args.poor, flag="--poor"),
        alpha=args.alpha,
        delta=args.delta,
        split=args.split,
        false_alarm=args.false_alarm,
        out=args.out,
        data=args.data,
        data_format=args.format,
        device=args.device,
        all_cases=args.all,
        gate_blocks=args.gate_blocks,
    )
    for line in calibration_lines(calibration):
        print(line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edue.engine.evaluation.evaluate import evaluate_checkpoint
    from edue.metrics.qc import parse_poor_thresholds
    from edue.outputs import check_output_dir
    from edue.report.console import evaluation_lines

    check_output_dir(args.out, what="evaluation folder (--out)")

    result = evaluate_checkpoint(
        args.checkpoint,
        args.out,
        data=args.data,
        data_format=args.format,
        split=args.split,
        all_cases=args.all,
        ood=args.ood,
        poor_thresholds=parse_poor_thresholds(args.poor),
        device=args.device,
        calibration=args.calibration,
        use_calibration=not args.no_calibration,
        calibration_split=args.calibration_split,
    )
    for line in evaluation_lines(result):
        print(line)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from edue.outputs import check_output_dir
    from edue.report.compare import compare_runs

    check_output_dir(args.out, inputs=args.runs, what="report folder (--out)")

    report = compare_runs(args.runs, args.out)
    print(f"report: {report}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from edue.data.folder import write_folder_dataset
    from edue.data.synthetic import FundusConfig, generate_cases
    from edue.engine.run_folder import DATASET_FILES, claim_folder, folder_lock
    from edue.outputs import check_output_dir

    check_output_dir(args.out, what="dataset folder (--out)")
    claim_folder(args.out, args.overwrite, "dataset", DATASET_FILES, resume_hint=False)
    with folder_lock(args.out):
        cases = generate_cases(
            args.n, args.seed, FundusConfig(size=args.size, n_raters=args.raters)
        )
        root = write_folder_dataset(cases, args.out, name=f"synthetic-fundus-seed{args.seed}")
    print(f"wrote {len(cases)} cases to {root}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    import yaml

    from edue.data.check import check_path

    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    report = check_path(args.root, args.format, options)
    print(report.format())
    return 2 if args.strict and not report.ok else 0


def cmd_riga_extract(args: argparse.Namespace) -> int:
    from edue.data.riga_extract import extract_riga
    from edue.outputs import check_output_dir

    check_output_dir(args.out, inputs=[args.src], what="output folder (--out)")
    report = extract_riga(args.src, args.out)
    print(report.format())
    return 0 if report.extracted else 2


def cmd_ensemble_gather(args: argparse.Namespace) -> int:
    from edue.engine.training.ensemble import gather_ensemble

    path = gather_ensemble(args.members, args.out)
    print(f"ensemble of {len(args.members)} members: {path}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from edue.data.cache_admin import cache_root, check_days, clear_stores, list_lines

    if args.cache_command == "clear":
        check_days(args.older_than)
    root = cache_root(args.dir)
    if args.cache_command == "list":
        lines = list_lines(root)
    else:
        lines = clear_stores(root, args.older_than, args.dry_run).lines()
    print("\n".join(lines))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edue.demo import run_demo

    return run_demo(
        args.out,
        dims=args.dims,
        quick=args.quick,
        methods=args.methods,
        with_ablations=args.ablations,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors become one line and exit status 2."""
    from edue.errors import EdueError

    parser = build_parser()
    # Overrides (key=value) may come before or after the options: argparse gives the
    # positional list only its first run, so the later ones arrive as extras.
    args, extras = parser.parse_known_args(argv)
    stray = [e for e in extras if e.startswith("-") or "=" not in e]
    if stray or (extras and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extras)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    _log_to_stdout()
    warnings.showwarning = _showwarning
    try:
        return int(args.func(args) or 0)
    except EdueError as exc:
        print(f"edue: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edue: interrupted (the last checkpoint is kept)", file=sys.stderr)
        return 130


def _log_to_stdout() -> None:
    """Progress lines of the library (``edue.*`` loggers, e.g. one per epoch) on stdout."""
    import logging

    class StdoutLines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(record.getMessage(), file=sys.stdout, flush=True)  # the current stdout

    logger = logging.getLogger("edue")
    if not any(type(h).__name__ == "StdoutLines" for h in logger.handlers):
        logger.addHandler(StdoutLines())
    logger.setLevel(logging.INFO)


def _showwarning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    print(f"edue: warning: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
