"""A tiny sweep end to end on real MNIST: every output file, resumption, failure and retry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_gankd
from gankd.errors import GankdError
from gankd.experiments.sweep import load_spec

TINY = {
    "name": "tiny",
    "description": "two depths, a few steps",
    "data": {"dataset": "mnist", "image_size": 32},
    "common": {"batch_size": 16, "log_every": 5, "checkpoint_every": 5, "sample_every": 10},
    "teacher": {"depth": 8, "loss": "dcgan", "steps": 10},
    "depths": [2, 4],
    "methods": {"mse": {"steps": 10}, "joint": {"alpha": 0.1, "loss": "dcgan", "steps": 5},
                "regular": {"loss": "dcgan", "steps": 5}},
    "evaluation": {"metrics": ["is", "cfid", "fidelity", "cost"], "samples": 200},
}


def write(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


def test_tiny_sweep_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broken = json.loads(json.dumps(TINY))
    broken["methods"]["regular"]["data"] = str(tmp_path / "no-such-mnist")
    # first call: the regular GANs fail (their data is missing) and are reported
    result = run_gankd("sweep", str(write(tmp_path / "broken.json", broken)), "--out", str(out), "--jobs", "2", check=False)
    assert result.returncode == 1 and "regular-d2: failed" in result.stderr and "no-such-mnist" in result.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["regular-d4"]["status"] == "failed" and status["mse-d4"]["status"] == "done"
    assert "Runs that did not finish" in (out / "report.md").read_text()
    mse_mtime = (out / "runs" / "mse-d2" / "generator.safetensors").stat().st_mtime

    # second call with the data fixed: finished runs are skipped, the failed ones retried
    run_gankd("sweep", str(write(tmp_path / "tiny.json", TINY)), "--out", str(out))
    assert (out / "runs" / "mse-d2" / "generator.safetensors").stat().st_mtime == mse_mtime
    assert all(v["status"] == "done" for v in json.loads((out / "status.json").read_text()).values())

    with (out / "results.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"teacher", "mse-d2", "joint-d2", "regular-d2", "mse-d4", "joint-d4", "regular-d4"}
    for name, row in rows.items():
        assert 1 <= float(row["is"]) <= 10 and float(row["cfid"]) > 0 and int(row["samples"]) == 200
        assert float(row["images_per_s_batch256"]) > 0 and int(row["steps"]) > 0
        assert (row["fidelity_mse"] != "") == name.startswith(("mse", "joint"))
    assert float(rows["mse-d2"]["ratio"]) == pytest.approx(int(rows["teacher"]["parameters"]) / int(rows["mse-d2"]["parameters"]))
    assert len(json.loads((out / "results.json").read_text())) == 7

    table = (out / "table.md").read_text()
    for label in ("| GAN size d | 2 | 4 |", "| Ratio |", "IS (Stu. (MSE))", "IS (Stu. (joint))", "IS (Reg.)", "cFID (Reg.)"):
        assert label in table
    report = (out / "report.md").read_text()
    for picture in ("plot_is.png", "plot_cfid.png", "plot_fidelity_mse.png", "figure11.png"):
        assert picture in report
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and image.width > 100
    assert "beats the regular GAN" in report or "does not beat the regular GAN" in report


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(colour="red"), "unknown key"),
    (lambda s: s["methods"].update(distill={}), "unknown method"),
    (lambda s: s["methods"]["mse"].update(stpes=3), "did you mean 'steps'"),
    (lambda s: s.update(depths=[0]), "positive integers"),
])
def test_bad_sweep_configs(tmp_path: Path, change, message: str) -> None:
    from gankd.experiments.sweep import plan

    spec = json.loads(json.dumps(TINY))
    change(spec)
    with pytest.raises(GankdError, match=message):
        plan(load_spec(write(tmp_path / "s.json", spec)), tmp_path)


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    from gankd.experiments.sweep import plan

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    assert {c.stem for c in configs} >= {"mnist-cpu", "mnist-paper", "cifar10-paper", "celeba-paper"}
    for config in configs:
        jobs = plan(load_spec(config), tmp_path)
        assert jobs[0].method == "teacher" and len(jobs) == 1 + 3 * len(load_spec(config)["depths"])
