"""The referral numbers of docs/referral.md: calibrate EDUE, the plain U-Net and the Deep
Ensemble of the embedded demo and tell how many test images each must refer.

    python studies/referral.py --out runs/referral_demo [--study runs/study_2d]

Trains the three methods with the demo's configuration (``edue demo --methods edue plain
deep_ensemble``) unless ``OUT/METHOD`` already holds a run, then for each method:
calibrates on the validation split (poor below soft Dice 0.9 disc / 0.8 cup), evaluates
on the test split with the distortion study, and again with stricter levels (0.94 /
0.9); calibrates on 500 fresh images of the demo's own generator (cases 460-959 of
seed 0: the demo's rater styles) and tests on 500 more (960-1459); and compares. With
``--study``, the converged runs ``STUDY/seed*/{edue,plain,deep_ensemble}`` are calibrated
(poor below 0.95 / 0.9) into ``OUT/study`` without touching the study's folders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edue.cli import main as edue

METHODS = ("edue", "plain", "deep_ensemble")
LENIENT = ["disc=0.9", "cup=0.8"]
STRICT = ["--poor", "disc=0.94", "cup=0.9"]
#: (folder, first case index) of the fresh images: 500 each, seed 0.
FRESH = (("fresh_calibration", 460), ("fresh_test", 960))


def run(*args: str) -> None:
    """One ``edue`` command; stop at the first failure."""
    code = edue(list(args))
    if code != 0:
        raise SystemExit(f"edue {' '.join(args)} exited with {code}")


def fresh_data(out: Path) -> None:
    """500 + 500 new images of the demo's generator, as folder datasets."""
    from edue.data.folder import write_folder_dataset
    from edue.data.synthetic import FundusConfig, generate_cases

    for name, start in FRESH:
        if not (out / name).is_dir():
            cases = generate_cases(500, 0, FundusConfig(size=64), start=start)
            write_folder_dataset(cases, out / name, name=f"synthetic-seed0-{start}")


def demo(out: Path) -> None:
    """Calibrate, evaluate and compare the demo's three methods."""
    if not all((out / m).is_dir() for m in METHODS):
        run("demo", "--out", str(out), "--methods", *METHODS)
    fresh_data(out)
    fresh = ["--format", "folder", "--all", "--device", "cpu"]
    for m in METHODS:
        d = out / m
        run("calibrate", str(d), "--poor", *LENIENT, "--device", "cpu")
        run("evaluate", str(d), "--out", str(d / "eval"), "--ood", "--device", "cpu")
        run("evaluate", str(d), "--out", str(d / "eval_strict"), *STRICT, "--device", "cpu")
        calibration = d / "calibration_fresh500" / "calibration.json"
        run("calibrate", str(d), "--data", str(out / "fresh_calibration"), *fresh,
            "--poor", *LENIENT, "--out", str(calibration))  # fmt: skip
        for name, extra in (("eval_fresh500", []), ("eval_fresh500_strict", STRICT)):
            run("evaluate", str(d), "--data", str(out / "fresh_test"), *fresh,
                "--calibration", str(calibration), "--out", str(d / name), *extra)  # fmt: skip
    for name, report in (
        ("eval", out),
        ("eval_strict", out / "report_strict"),
        ("eval_fresh500", out / "report_fresh500"),
        ("eval_fresh500_strict", out / "report_fresh500_strict"),
    ):
        run("compare", *(str(out / m / name) for m in METHODS), "--out", str(report))


def study(runs: Path, out: Path) -> None:
    """Calibrate the converged study's runs into ``out`` (its own folders untouched)."""
    for seed_dir in sorted(runs.glob("seed*")):
        for m in METHODS:
            d = out / seed_dir.name / m
            calibration = d / "calibration.json"
            run("calibrate", str(seed_dir / m), "--poor", "disc=0.95", "cup=0.9",
                "--out", str(calibration), "--device", "cpu")  # fmt: skip
            ood = ["--ood"] if seed_dir.name == "seed0" else []
            run("evaluate", str(seed_dir / m), "--calibration", str(calibration),
                "--out", str(d / "eval"), *ood, "--device", "cpu")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/referral_demo")
    parser.add_argument("--study", help="a converged study folder (e.g. runs/study_2d)")
    args = parser.parse_args()
    out = Path(args.out)
    demo(out)
    if args.study:
        study(Path(args.study), out / "study")


if __name__ == "__main__":
    main()
