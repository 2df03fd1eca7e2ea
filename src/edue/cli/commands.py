"""The subcommands of ``edue``: each parses nothing and formats nothing, it calls the
library and prints what the library returns (heavy imports happen inside them)."""

from __future__ import annotations

import argparse
import sys


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
    from edue.launcher import parse_parameters
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
        launcher=args.launcher,
        cluster=parse_parameters(args.cluster),
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
    from edue.engine.predict.files import predict_files
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
        dicom_out=args.dicom_out,
    )
    for item in result.failed:
        print(f"edue: skipped {item['input']}: {item['reason']}", file=sys.stderr)
    print(
        f"predicted {len(result.done)} image(s), {len(result.failed)} failed; "
        f"outputs in {result.out_dir}"
    )
    if result.resampled:
        print(
            f"resampled {result.resampled} of {len(result.done)} input(s) to {result.grid} "
            "for the model, and their outputs back to each input's own grid"
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


def _reader_options(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` reader options, values read as YAML."""
    import yaml

    options: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    return options


def cmd_data_check(args: argparse.Namespace) -> int:
    from edue.data.check import check_path

    report = check_path(args.root, args.format, _reader_options(args.option))
    print(report.format())
    return 2 if args.strict and not report.ok else 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from edue.data.monai_datalist import write_monai_datalist
    from edue.data.nnunet_raw import write_nnunet_raw
    from edue.data.source import open_source
    from edue.outputs import check_output_dir

    inputs = [args.root] if args.root else []
    what = "output folder (--out)"
    check_output_dir(args.out, inputs=inputs, what=what, create=False)
    cases = list(open_source(args.format, args.root, **_reader_options(args.option)))
    out = check_output_dir(args.out, inputs=inputs, what=what)  # made once the data read
    writer = write_monai_datalist if args.to == "monai-datalist" else write_nnunet_raw
    written = writer(cases, out)
    print(f"{len(cases)} cases of {args.format} written as {args.to}: {written}")
    return 0


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


def cmd_export(args: argparse.Namespace) -> int:
    from edue.engine.predict.export import SIDECAR, export_model

    if args.format == "monai-bundle":
        from edue.engine.predict.bundle import export_bundle

        path = export_bundle(args.checkpoint, args.out)
        print(
            f"exported a MONAI bundle: {path} (run it with: python -m monai.bundle run "
            f"--config_file {path / 'configs' / 'inference.json'} --bundle_root {path} "
            "--dataset_dir IMAGES)"
        )
    else:
        path = export_model(args.checkpoint, args.out, args.format)
        print(f"exported {args.format}: {path} (sidecar {path.parent / SIDECAR})")
    return 0
