"""The ``edue`` argument parser: one ``_add_<command>`` per subcommand, each pointing at
its :mod:`edue.cli.commands` function."""

from __future__ import annotations

import argparse
import sys

from edue.cli.commands import (
    cmd_cache,
    cmd_calibrate,
    cmd_compare,
    cmd_config_show,
    cmd_data_check,
    cmd_data_convert,
    cmd_data_synth,
    cmd_demo,
    cmd_ensemble_gather,
    cmd_evaluate,
    cmd_export,
    cmd_model_show,
    cmd_predict,
    cmd_riga_extract,
    cmd_study,
    cmd_train,
)


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
    p.add_argument(
        "checkpoint",
        help="checkpoint file or run folder, or an exported model.onnx (ONNX Runtime)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files or folders (PNG, TIFF, JPEG, NIfTI, NPY; DICOM series in folders)",
    )
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
    p.add_argument(
        "--dicom-out",
        action="store_true",
        help="for DICOM input, also a DICOM Segmentation (probabilities) and a Parametric "
        "Map (uncertainty) per series, referencing the source instances",
    )
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


def _add_reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option (repeatable), e.g. n=100 for synthetic",
    )


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
    _add_reader_options(c)
    c.set_defaults(func=cmd_data_check)
    v = dsub.add_parser(
        "convert",
        help="write any readable dataset as a MONAI datalist or an nnU-Net raw folder",
    )
    v.add_argument("root", nargs="?", default=None, help="dataset root (none for synthetic)")
    v.add_argument("--format", default="folder", help="the dataset's reader")
    _add_reader_options(v)
    v.add_argument("--to", required=True, choices=("monai-datalist", "nnunet-raw"))
    v.add_argument("--out", required=True, help="the folder to write")
    v.set_defaults(func=cmd_data_convert)
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
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes: seeds trained side by side; submitit launchers: jobs running at a "
        "time (default 1; on Slurm every job is queued at once)",
    )
    p.add_argument(
        "--launcher",
        choices=("processes", "slurm", "local", "debug"),
        default="processes",
        help="where the work runs: local worker processes (default), or one job per "
        "method, seed and ensemble member through submitit: a Slurm cluster, local "
        "subprocesses, or this process (debug); needs edue[cluster]",
    )
    p.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit executor parameter (timeout_min=600, slurm_partition=gpu, "
        "gpus_per_node=1, cpus_per_task=8, mem_gb=32, …); repeatable",
    )
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


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="a trained one-pass method as one ONNX or TorchScript graph, or a MONAI bundle",
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "monai-bundle"])
    p.add_argument(
        "--out",
        required=True,
        help="output folder (model.onnx or model.ts and model.json; a bundle's folder)",
    )
    p.set_defaults(func=cmd_export)


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
        _add_export,
    ):
        add(sub)
    return parser


# ---------------------------------------------------------------------------- commands
