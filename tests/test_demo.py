"""The demo pipeline end to end, at toy size (the real demo is `make demo`)."""

from __future__ import annotations

import json

from edue.cli import main


def test_quick_demo_writes_the_whole_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--ablations"]) == 0
    for method in (
        "edue",
        "layer_ensembles",
        "mc_dropout",
        "plain",
        "deep_ensemble",
        "edue_no_guidance",
        "edue_no_sampling",
    ):
        metrics = json.loads((out / method / "eval" / "metrics.json").read_text())
        assert metrics["label"] == method
    ensemble = json.loads((out / "deep_ensemble" / "eval" / "metrics.json").read_text())
    plain = json.loads((out / "plain" / "eval" / "metrics.json").read_text())
    assert ensemble["n_members"] == 2 and plain["n_members"] == 1
    assert ensemble["parameters"] == 2 * plain["parameters"]  # member 0 is the plain U-Net
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "edue_no_guidance" in html
    claims = json.loads((out / "claims.json").read_text())
    assert claims  # computed from the numbers, whatever they are at toy size
    printed = capsys.readouterr().out
    assert "finished in" in printed and "report.html" in printed
