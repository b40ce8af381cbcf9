"""A tiny sweep end to end on real MNIST: seeds, recipes, every output file, resumption, failure
and retry; the CI arithmetic; the compression-limit search."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from conftest import run_gankd
from gankd.errors import GankdError
from gankd.experiments.ablation import ablation_jobs, load_ablation
from gankd.experiments.stats import Estimate, better, estimate, keeps, smallest_kept
from gankd.experiments.sweep import Plan, load_spec

TINY = {
    "name": "tiny",
    "description": "two depths, two seeds, two regular recipes, a few steps",
    "data": {"dataset": "mnist", "image_size": 32},
    "common": {"batch_size": 16, "log_every": 5, "checkpoint_every": 5, "sample_every": 10},
    "seeds": [0, 1],
    "teacher": {"depth": 8, "loss": "dcgan", "steps": 10},
    "depths": [2, 4],
    "methods": {"mse": {"steps": 12, "patience": 2, "eval_every": 4},
                "joint": {"alpha": 0.3, "loss": "dcgan", "steps": 5, "init": "mse", "monitor": "is", "eval_every": 5, "patience": 2},
                "mse-continued": {},
                "regular": {"recipes": {"dcgan-c8": {"loss": "dcgan", "critic_depth": 8, "steps": 5},
                                        "dcgan-c4": {"loss": "dcgan", "critic_depth": 4, "steps": 5}}}},
    "evaluation": {"metrics": ["is", "cfid", "fidelity"], "samples": 200},
}


def write(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


def test_tiny_sweep_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broken = json.loads(json.dumps(TINY))
    broken["methods"]["regular"]["recipes"]["dcgan-c4"]["data"] = str(tmp_path / "no-such-mnist")
    # first call: one regular recipe fails (its data is missing) and is reported; the rest finish
    result = run_gankd("sweep", str(write(tmp_path / "broken.json", broken)), "--out", str(out), "--jobs", "2", check=False)
    assert result.returncode == 1 and "regular/dcgan-c4/s0: failed" in result.stderr and "no-such-mnist" in result.stderr
    assert "mse/s0: started (d = 2, 4; log" in result.stderr and "mse/s0: done" in result.stderr  # the sweep's own news lines
    status = json.loads((out / "status.json").read_text())
    assert status["mse/s0"]["status"] == "done" and status["regular/dcgan-c8/s1"]["status"] == "done"
    assert "did not finish" in (out / "report.md").read_text()
    mse_mtime = (out / "runs" / "mse" / "s0" / "d2" / "generator.safetensors").stat().st_mtime

    # --report-only trains nothing: the failed recipe stays untrained and is listed as not finished
    result = run_gankd("sweep", str(write(tmp_path / "tiny.json", TINY)), "--out", str(out), "--report-only")
    assert "regular/dcgan-c4/s0: pending" in result.stderr and not (out / "runs" / "regular" / "dcgan-c4" / "s0" / "d2" / "generator.safetensors").exists()
    assert "regular/dcgan-c4/s0" in (out / "report.md").read_text()

    # second call with the data fixed: finished runs are skipped, the failed ones retried
    run_gankd("sweep", str(write(tmp_path / "tiny.json", TINY)), "--out", str(out))
    assert (out / "runs" / "mse" / "s0" / "d2" / "generator.safetensors").stat().st_mtime == mse_mtime
    status = json.loads((out / "status.json").read_text())
    assert all(v["status"] == "done" for v in status.values()), status
    # a third call finds everything finished, the other seeds of the chosen recipes too: it starts nothing
    assert ": started" not in run_gankd("sweep", str(tmp_path / "tiny.json"), "--out", str(out)).stderr

    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = {(r["method"], r["recipe"], r["seed"], r["depth"]) for r in rows}
    for method in ("mse", "joint", "mse-continued"):
        assert {(method, "", s, d) for s in "01" for d in "24"} <= keys
    assert {("regular", r, "0", d) for r in ("dcgan-c8", "dcgan-c4") for d in "24"} <= keys
    chosen = [r for r in rows if r["method"] == "regular" and r["seed"] == "1"]
    assert len(chosen) == 2  # the other seed trains only the recipe chosen at each depth
    for row in rows:
        assert 1 <= float(row["is"]) <= 10 and float(row["cfid"]) > 0 and int(row["samples"]) == 200
        assert (row["fidelity_mse"] != "") == (row["method"] in ("mse", "joint", "mse-continued"))
    assert all(r["stopped"] for r in rows if r["method"] != "teacher")
    joint = json.loads((out / "runs" / "joint" / "s1" / "d4" / "config.json").read_text())
    assert joint["init"] == str(out / "runs" / "mse" / "s1" / "d4" / "generator.safetensors")  # warm-started from its MSE student
    control = json.loads((out / "runs" / "mse-continued" / "s1" / "d4" / "config.json").read_text())
    assert control["method"] == "mse" and control["init"] == joint["init"] and control["steps"] == joint["steps"] == 5
    assert control["alpha"] == 0 and control["seed"] == joint["seed"]  # the joint students' run without the critic

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "mnist" and summary["teacher"]["metric"] == "is" and summary["teacher"]["params"] > 0
    is_rows = {(r["method"], r["depth"]): r for r in summary["rows"] if r["metric"] == "is"}
    assert set(is_rows) == {(m, d) for m in ("mse", "joint", "mse-continued", "regular") for d in (2, 4)}
    mse_values = [float(r["is"]) for r in rows if r["method"] == "mse" and r["depth"] == "2"]
    expected = estimate(mse_values)
    assert is_rows[("mse", 2)]["mean"] == pytest.approx(expected.mean) and is_rows[("mse", 2)]["ci95"] == pytest.approx(expected.ci95)
    assert is_rows[("mse", 2)]["seeds"] == 2 and is_rows[("mse", 2)]["ratio"] == pytest.approx(summary["teacher"]["params"] / 13_487)
    floor = json.loads((out / "floor.json").read_text())  # real MNIST test images in a generator's place, same N
    (entry,) = floor.values()
    assert summary["real_test"] == {"is": entry["metrics"]["is"]["mean"], "cfid": entry["metrics"]["cfid"]["value"]}
    assert summary["real_test"]["is"] > max(float(r["is"]) for r in rows) and entry["samples"] == 200

    table = (out / "table.md").read_text()
    for label in ("Real test images in a generator's place", "| GAN size d | 2 | 4 |", "| Ratio |", "IS (Stu. (MSE))", "IS (Stu. (joint))", "IS (Reg.)", "regular recipe", " ± "):
        assert label in table
    # the regular GANs' 5 steps are their cap (no plateau possible): every seed is marked as stopped by it
    steps_line = next(line for line in table.splitlines() if line.startswith("| steps (Reg.)"))
    assert steps_line == "| steps (Reg.) | 5 (2/2 at the cap) | 5 (2/2 at the cap) |", steps_line
    report = (out / "report.md").read_text()
    for picture in ("plot_is.png", "plot_cfid.png", "figure11.png", "curves.png"):
        assert picture in report
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and image.width > 100
    assert "recipes tried" in report and "(chosen)" in report
    # a fidelity MSE and an IS share no useful axis: each monitor has its own row of panels
    assert "One row per monitor: fidelity (Stu. (MSE)); is (Stu. (joint), Stu. (MSE, continued))." in report, report
    assert "compression limit" in report
    assert "Stu. (joint) against the same MSE students continued by MSE" in report and "same seed, joint − continued" in report


VARIANTS = {
    "name": "variants",
    "data": {"dataset": "mnist", "image_size": 32},
    "common": {"batch_size": 16, "log_every": 5, "checkpoint_every": 5, "sample_every": 10},
    "seeds": [0, 1],
    "teacher": {"depth": 8, "loss": "dcgan", "steps": 10, "eval_every": 5, "monitor": "is"},
    "depths": [2],
    "methods": {"mse+relation": {"method": "mse", "terms": {"relation": 10.0}, "steps": 6},
                "mse": {"steps": 6},
                "regular": {"loss": "dcgan", "critic_depth": 4, "steps": 5}},
    "evaluation": {"metrics": ["is", "fidelity"], "samples": 100},
}


def test_a_named_student_variant_is_trained_and_reported_beside_mse_and_the_teacher_against_regular_gans(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_gankd("sweep", str(write(tmp_path / "v.json", VARIANTS)), "--out", str(out))
    config = json.loads((out / "runs" / "mse+relation" / "s1" / "d2" / "config.json").read_text())
    assert config["method"] == "mse" and config["terms"]["relation"] == 10.0 and config["seed"] == 1
    assert json.loads((out / "runs" / "mse" / "s0" / "d2" / "config.json").read_text())["terms"].get("relation", 0) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"teacher", "mse", "mse+relation", "regular"}
    assert all(r["fidelity_mse"] for r in rows if r["method"] == "mse+relation")  # scored as a student
    table = (out / "table.md").read_text()
    assert table.index("IS (Stu. (MSE))") < table.index("IS (Stu. (mse+relation))") < table.index("IS (Reg.)")  # built-ins first
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["method"], r["metric"]) for r in summary["rows"]} >= {("mse+relation", "is"), ("mse+relation", "fidelity_mse")}
    report = (out / "report.md").read_text()
    assert "- Stu. (mse+relation) against the regular GAN of its size, IS: d=2:" in report
    teacher_is = float(next(r["is"] for r in rows if r["method"] == "teacher"))
    line = next(line for line in report.splitlines() if line.startswith("- Teacher ("))
    assert line.startswith(f"- Teacher ({teacher_is:.3g}) against the regular GANs, IS: ") and "beat every regular GAN" in line
    assert "One row per monitor: is (teacher)." in report  # the teacher's own training curve (the students' runs are too short)
    assert "then Stu. (mse+relation)" in report
    assert "figure11.png" in report


def test_the_teacher_finding_needs_the_teacher_beyond_every_interval() -> None:
    from gankd.experiments.report import teacher_finding

    regular = {16: Estimate(35.0, 16.0, 3), 8: Estimate(60.0, 5.0, 3)}
    line = teacher_finding(30.0, regular, "FID", higher=False)
    assert "better than the whole 95% interval at d = 8, not at d = 16: the teacher is not shown to beat every regular GAN" in line
    assert "Teacher / best regular mean (d=16, 35 ± 16) = 0.86" in line
    assert "at every depth (d = 16, 8): the teacher beats every regular GAN" in teacher_finding(18.0, regular, "FID", higher=False)
    assert "undecided" in teacher_finding(18.0, {16: Estimate(35.0, math.nan, 1)}, "FID", higher=False)


def test_confidence_intervals_match_scipy() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        values = list(rng.normal(7.0, 0.3, n))
        e = estimate(values)
        low, high = stats.t.interval(0.95, n - 1, loc=np.mean(values), scale=stats.sem(values))
        assert e.mean == pytest.approx(np.mean(values)) and e.low == pytest.approx(low) and e.high == pytest.approx(high)
    assert estimate([3.0]).n == 1 and math.isnan(estimate([3.0]).ci95)


def test_claims_need_intervals_that_do_not_overlap() -> None:
    a, b = Estimate(7.0, 0.2, 3), Estimate(6.5, 0.2, 3)
    assert better(a, b, True) and not better(b, a, True)
    assert not better(Estimate(7.0, 0.3, 3), Estimate(6.5, 0.3, 3), True)  # overlap: no claim either way
    assert better(Estimate(10.0, 1.0, 3), Estimate(20.0, 1.0, 3), False)  # FID: lower is better
    assert not better(Estimate(9.0, math.nan, 1), Estimate(1.0, math.nan, 1), True)  # one seed claims nothing
    assert keeps(Estimate(7.0, 0.1, 3), 7.5, 0.9, True) and not keeps(Estimate(7.0, 0.5, 3), 7.5, 0.9, True)
    assert keeps(Estimate(10.5, 0.4, 3), 10.0, 0.9, False) and not keeps(Estimate(11.0, 0.4, 3), 10.0, 0.9, False)
    by_depth = {16: Estimate(7.4, 0.1, 3), 8: Estimate(7.2, 0.1, 3), 4: Estimate(6.6, 0.1, 3), 2: Estimate(6.9, 0.1, 3)}
    assert smallest_kept(by_depth, 7.5, 0.9, True) == 8  # d=2 keeps, but d=4 does not: the limit is where the run of keeping ends


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(colour="red"), "unknown key"),
    (lambda s: s["methods"].update(distill={}), "unknown method"),
    (lambda s: s["methods"]["mse"].update(stpes=3), "did you mean 'steps'"),
    (lambda s: s.update(depths=[0]), "positive integers"),
    (lambda s: s.update(seeds=[1, 1]), "distinct"),
    (lambda s: s["methods"].update(regular={"recipes": {}}), "recipes"),
    (lambda s: s["methods"].update(kd={"terms": {"relation": 1.0}}), "unknown method 'kd'.*give \"method\""),
    (lambda s: s["methods"].update({"K D": {"method": "mse"}}), "unknown method 'K D'"),
    (lambda s: s["methods"].update(kd={"method": "gan"}), "unknown method 'kd'"),
])
def test_bad_sweep_configs(tmp_path: Path, change, message: str) -> None:
    spec = json.loads(json.dumps(TINY))
    change(spec)
    with pytest.raises(GankdError, match=message):
        Plan(load_spec(write(tmp_path / "s.json", spec)), tmp_path)


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    assert {c.stem for c in configs} >= {"mnist-paper", "cifar10-paper", "celeba-paper"}
    for config in configs:
        if "variants" in json.loads(config.read_text()):  # an ablation config (gankd ablation)
            spec = load_ablation(config)
            teacher, jobs = ablation_jobs(spec, tmp_path, str(config))
            assert teacher.checkpoint.exists() and len(jobs) == len(spec["variants"]) * len(spec.get("seeds", [0]))
            continue
        spec = load_spec(config)
        plan = Plan(spec, tmp_path)
        assert plan.teacher.method == "teacher" and len(plan.students) == len([m for m in spec["methods"] if m != "regular"]) * len(plan.seeds)


def test_limit_bisects_depths_on_a_tiny_configuration(mnist_teacher: Path, tmp_path: Path) -> None:
    """Depths 1..8 of a 200-step d=16 teacher: the answer is the smallest depth whose interval keeps
    the fraction, found by bisection; the line states it with its interval, limit.json keeps every probe."""
    out = tmp_path / "limit"
    common = ["limit", "--teacher", str(mnist_teacher), "--out", str(out), "--depths", "1,2,3,4,5,6,7,8", "--seeds", "2", "--steps", "40",
              "--batch-size", "16", "--samples", "300", "--log-every", "20", "--sample-every", "1000"]
    line = run_gankd(*common, "--keep", "0.5").stdout.strip().splitlines()[-1]
    result = json.loads((out / "limit.json").read_text())
    probes = {p["depth"]: p for p in result["probes"]}
    assert 8 in probes and len(probes) <= 5  # bisection: the largest, the smallest, then at most 3 of the 6 between
    kept = sorted(d for d, p in probes.items() if p["kept"])
    assert result["limit"] == (kept[0] if kept else None)
    for d, p in probes.items():
        assert p["kept"] == (p["mean"] - p["ci95"] >= 0.5 * result["teacher"]["value"])
    if result["limit"] is not None:
        assert f"d={result['limit']}" in line and "±" in line and "95% CI over 2 seeds" in line
    # a second call reuses every student: nothing is trained again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("s*/d*/generator.safetensors")}
    run_gankd(*common, "--keep", "0.5")
    assert {p: p.stat().st_mtime_ns for p in out.glob("s*/d*/generator.safetensors")} == stamps


def test_a_folder_trained_with_other_options_is_not_reused(mnist_teacher: Path, tmp_path: Path) -> None:
    from gankd.experiments.jobs import make_job, refresh

    options = {"method": "mse", "teacher": str(mnist_teacher), "steps": 3, "log_every": 1}
    job = make_job("mse/s0", "mse", 0, tmp_path / "s0", [2], options)
    run_gankd("distill", "--teacher", str(mnist_teacher), "--depth", "2", "--steps", "3", "--log-every", "1", "--out", str(tmp_path / "s0" / "d2"))
    refresh(job)
    assert job.status == "done"  # the same options: reused
    other = make_job("mse/s0", "mse", 0, tmp_path / "s0", [2], {**options, "batch_size": 32})
    with pytest.raises(GankdError, match="holds a run with other options \\(batch_size\\)"):
        refresh(other)


def test_students_start_before_regular_gans_and_joint_ones_as_soon_as_their_mse_job_is_done(mnist_teacher: Path, tmp_path: Path,
                                                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import gankd.experiments.sweep as sweep

    spec = {**json.loads(json.dumps(TINY)), "teacher": {"checkpoint": str(mnist_teacher)}}
    plan = Plan(spec, tmp_path, "tiny")
    started: list[str] = []
    threads_given: set[int] = set()

    def run_job(job, threads: int, children) -> None:  # trains nothing: records the order, marks the job done
        started.append(job.name)
        threads_given.add(threads)
        job.status = "done"
        for model in job.models:
            model.status = "done"

    monkeypatch.setattr(sweep, "run_job", run_job)
    monkeypatch.setattr(sweep, "evaluate_model", lambda model, *a, **k: {"metrics": {"is": {"mean": float(model.depth)}}})
    sweep.train_all(plan, sweep.evaluation_settings(spec), parallel=1, threads=3)
    assert threads_given == {3}  # --threads
    assert started[:6] == ["mse/s0", "mse/s1", "joint/s0", "joint/s1", "mse-continued/s0", "mse-continued/s1"]
    assert set(started[6:8]) == {"regular/dcgan-c8/s0", "regular/dcgan-c4/s0"} and len(started) == 9  # then seed 1 of the recipe chosen at both depths


def test_a_stop_while_the_first_seed_is_scored_ends_the_sweep_at_once(mnist_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Choosing the regular recipe scores every first-seed GAN (minutes each): SIGTERM there must
    not wait for the scoring to end, nor start the other seeds."""
    import signal
    import time

    import gankd.experiments.sweep as sweep

    spec = {**json.loads(json.dumps(TINY)), "teacher": {"checkpoint": str(mnist_teacher)}}
    plan = Plan(spec, tmp_path, "tiny")
    started: list[str] = []

    def run_job(job, threads: int, children) -> None:
        started.append(job.name)
        job.status = "done"
        for model in job.models:
            model.status = "done"

    def evaluate_model(model, *args, **kwargs) -> dict:  # a long evaluation, stopped in its first second
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("the evaluation ran on after SIGTERM")

    monkeypatch.setattr(sweep, "run_job", run_job)
    monkeypatch.setattr(sweep, "evaluate_model", evaluate_model)
    with pytest.raises(GankdError, match="sweep stopped by SIGTERM.*run the same command again to resume"):
        sweep.train_all(plan, sweep.evaluation_settings(spec), parallel=1, threads=1)
    assert "regular/dcgan-c8/s0" in started and not [name for name in started if name.startswith("regular/") and name.endswith("/s1")]


def test_scores_are_cached_by_content_so_a_clone_reuses_them_and_a_retrained_model_or_teacher_does_not(
        mnist_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import gankd.metrics.evaluate as evaluate_module
    from gankd.checkpoint import read_checkpoint, save_checkpoint
    from gankd.experiments.jobs import Model, evaluate_model

    calls: list[bool] = []

    def evaluate(generator, meta, metrics, samples, device, teacher=None, **kwargs) -> dict:
        calls.append(teacher is not None)
        return {"metrics": {"is": {"mean": 5.0 + len(calls)}}}

    monkeypatch.setattr(evaluate_module, "evaluate", evaluate)
    student = Model("mse", 16, 0, tmp_path / "mse" / "d16" / "generator.safetensors")
    teacher = Model("teacher", 16, 0, tmp_path / "teacher" / "generator.safetensors")
    for model in (student, teacher):
        model.run_dir.mkdir(parents=True)
        shutil.copy(mnist_teacher, model.checkpoint)

    def score() -> float:
        return evaluate_model(student, ["is", "fidelity"], 100, 0, "cpu", teacher)["metrics"]["is"]["mean"]

    assert score() == 6.0 and score() == 6.0 and len(calls) == 1
    for model in (student, teacher):  # what a git clone does: the same bytes, new modification times
        os.utime(model.checkpoint, ns=(1_000_000_000, 1_000_000_000))
    assert score() == 6.0 and len(calls) == 1
    for model, expected in ((student, 7.0), (teacher, 8.0)):  # retrained: other weights in the same file
        tensors, meta = read_checkpoint(model.checkpoint)
        save_checkpoint(model.checkpoint, {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, meta)
        assert score() == expected
    assert calls == [True, True, True]


def test_the_sweep_says_when_jobs_start_and_end_and_where_running_ones_are(mnist_teacher: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    import time

    import gankd.experiments.sweep as sweep

    spec = {**json.loads(json.dumps(TINY)), "teacher": {"checkpoint": str(mnist_teacher)}, "seeds": [0]}
    plan = Plan(spec, tmp_path, "tiny")

    def run_job(job, threads: int, children) -> None:  # writes the progress lines a training run writes, then "finishes"
        job.folder.mkdir(parents=True, exist_ok=True)
        with (job.folder / "train.log").open("w") as log:
            log.write(f"mse d=2, d=4: 3/12 steps (25%), 9.1 steps/s, ETA 0:00:01 [{job.name}]\nfid monitor: 10/200 imgs (5%)\n")
        time.sleep(0.4)
        job.status = "done"
        for model in job.models:
            model.status = "done"

    monkeypatch.setattr(sweep, "run_job", run_job)
    monkeypatch.setattr(sweep, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(sweep, "evaluate_model", lambda model, *a, **k: {"metrics": {"is": {"mean": float(model.depth)}}})
    sweep.train_all(plan, sweep.evaluation_settings(spec), parallel=1, threads=1)
    err = capsys.readouterr().err
    log = plan.out / "runs" / "mse" / "s0" / "train.log"
    assert f"mse/s0: started (d = 2, 4; log {log})" in err
    # while it runs: the newest step line of its log (not the monitor line after it), then its end
    assert "mse/s0: mse d=2, d=4: 3/12 steps (25%), 9.1 steps/s, ETA 0:00:01 [mse/s0]" in err and "mse/s0: done" in err
    assert err.index("mse/s0: started") < err.index("[mse/s0]") < err.index("mse/s0: done") < err.index("joint/s0: started")


def test_table_cells_round_the_mean_to_its_interval_and_one_seed_decides_nothing() -> None:
    from types import SimpleNamespace

    from gankd.experiments.report import _fmt, findings

    assert _fmt(Estimate(6.6612, 0.0981, 3)) == "6.661 ± 0.098" and _fmt(Estimate(8.3, 0.25, 3)) == "8.30 ± 0.25"
    assert _fmt(Estimate(585.2, 131.0, 2)) == "585 ± 131" and _fmt(Estimate(7.06, math.nan, 1)) == "7.06"
    agg = {("mse", 2): {"is": Estimate(6.66, 0.1, 3), "parameters": 13_487}, ("joint", 2): {"is": Estimate(7.06, math.nan, 1), "parameters": 13_487}}
    lines = findings(SimpleNamespace(depths=[2], after={}, spec={"methods": {"mse": {}, "joint": {}}}), {"is": 8.36, "parameters": 3_443_585}, agg, "is", 0.9)
    assert any("Stu. (joint) against MSE" in line and "undecided (one seed" in line for line in lines)
    assert any(line.startswith("- Stu. (joint): one seed so far") for line in lines)
    assert not any("beats" in line or "ties" in line for line in lines)


def test_warm_started_joint_students_are_also_compared_seed_by_seed() -> None:
    from types import SimpleNamespace

    from gankd.experiments.report import findings

    # the seeds' spread (6.3 .. 7.2) hides a difference that every seed shows (+0.4 +- 0.1)
    mse, joint = {0: 6.3, 1: 6.8, 2: 7.2}, {0: 6.75, 1: 7.15, 2: 7.62}
    agg = {(m, 2): {"is": estimate(list(v.values())), "is_by_seed": v, "parameters": 13_487} for m, v in (("mse", mse), ("joint", joint))}
    plan = SimpleNamespace(depths=[2], after={"joint/s0": "mse/s0"}, spec={"methods": {"mse": {}, "joint": {}, "mse-continued": {}}})
    line = next(x for x in findings(plan, {"parameters": 3_443_585}, agg, "is", 0.9) if "Stu. (joint) against MSE" in x)
    difference = estimate([joint[s] - mse[s] for s in mse])
    assert "ties (intervals overlap)" in line and f"same seed, joint − MSE = {difference.mean:.2f} ± {difference.ci95:.2f}" in line and line.endswith(": better).")
    worse = {s: v - 0.45 for s, v in mse.items()}
    agg[("joint", 2)] = {"is": estimate(list(worse.values())), "is_by_seed": worse, "parameters": 13_487}
    assert next(x for x in findings(plan, {"parameters": 3_443_585}, agg, "is", 0.9) if "Stu. (joint) against MSE" in x).endswith(": worse).")

    # lower is better (cFID): a negative difference is the better one
    agg = {(m, 2): {"cfid": estimate(list(v.values())), "cfid_by_seed": v, "parameters": 13_487} for m, v in (("mse", joint), ("joint", mse))}
    assert next(x for x in findings(plan, {"parameters": 3_443_585}, agg, "cfid", 0.9) if "Stu. (joint) against MSE" in x).endswith(": better).")


def test_a_named_variant_warm_started_from_mse_is_compared_with_mse_seed_by_seed() -> None:
    from types import SimpleNamespace

    from gankd.experiments.report import findings

    # the re-sweep's "joint-tc" (joint with the teacher's critic, from the MSE students): FID, lower is better
    mse, variant = {0: 66.6, 1: 68.0, 2: 67.6}, {0: 37.6, 1: 40.1, 2: 38.3}
    agg = {(m, 8): {"fid": estimate(list(v.values())), "fid_by_seed": v, "parameters": 52_000} for m, v in (("mse", mse), ("joint-tc", variant))}
    plan = SimpleNamespace(depths=[8], after={"joint-tc/s0": "mse/s0"}, spec={"methods": {"mse": {}, "joint-tc": {"method": "joint", "init": "mse"}}})
    lines = findings(plan, {"parameters": 3_443_585}, agg, "fid", 0.9)
    line = next(x for x in lines if x.startswith("- Stu. (joint-tc) against MSE students"))
    difference = estimate([variant[s] - mse[s] for s in mse])
    assert "d=8: beats" in line and f"same seed, joint-tc − MSE = {difference.mean:.1f} ± {difference.ci95:.1f}: better" in line, line
    assert not any("continued" in x for x in lines)  # the MSE-continued control belongs to the built-in joint method



def test_a_failed_teacher_skips_its_students_and_the_job_bar_counts_them(tmp_path: Path) -> None:
    """Students of a teacher that failed are skipped, not left pending: the report says why and the
    job bar ends full instead of stuck at the teacher."""
    spec = {**json.loads(json.dumps(TINY)), "seeds": [0], "depths": [2],
            "teacher": {**TINY["teacher"], "data": str(tmp_path / "no-such-mnist")},
            "methods": {"mse": {"steps": 5}, "joint": {"alpha": 0.3, "loss": "dcgan", "steps": 5, "init": "mse"}}}
    out = tmp_path / "out"
    result = run_gankd("sweep", str(write(tmp_path / "spec.json", spec)), "--out", str(out), check=False)
    assert result.returncode == 1 and "teacher: failed" in result.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["mse/s0"] == status["joint/s0"] == {"status": "skipped", "error": "the teacher did not finish"}
    assert "sweep jobs: 3/3 jobs" in result.stderr  # teacher (failed) and both skipped jobs


def test_a_stopped_sweep_stops_its_runs_and_leaves_no_orphan(mnist_teacher: Path, tmp_path: Path) -> None:
    """SIGTERM to the sweep (a scheduler's or `kill`'s) reaches the run it started: the run
    checkpoints, its folder is free again, the sweep says how to resume and starts nothing more."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from gankd.files import owned_folder

    spec = {**json.loads(json.dumps(TINY)), "teacher": {"checkpoint": str(mnist_teacher)}, "seeds": [0], "depths": [2],
            "methods": {"mse": {"steps": 100_000, "patience": None}, "regular": {"loss": "dcgan", "steps": 5}}}
    out = tmp_path / "out"
    sweep = subprocess.Popen([sys.executable, "-m", "gankd.cli", "sweep", str(write(tmp_path / "long.json", spec)), "--out", str(out)],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "runs" / "mse" / "s0" / "d2" / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 2) and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.5)
    assert sweep.poll() is None, sweep.stderr.read() if sweep.stderr else ""
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 1 and "sweep stopped by SIGTERM" in stderr and "run the same command again to resume" in stderr
    assert "sweep jobs: 0/2 jobs" in stderr  # the stopped job is not counted as done
    assert "stopped by SIGTERM" in (out / "runs" / "mse" / "s0" / "train.log").read_text()
    assert (metrics.parent / "checkpoints" / "last.safetensors").exists()
    with owned_folder(metrics.parent):  # no orphaned run still holds it
        pass
    assert not (out / "runs" / "regular").exists()  # nothing started after the stop


@pytest.mark.parametrize("held", ["stopped", "busy"])
def test_a_stopped_first_seed_recipe_holds_back_the_recipe_choice(mnist_teacher: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, held: str) -> None:  # fmt: skip
    """A first-seed regular job stopped by a signal (exit 130), or whose folder another gankd
    process holds (exit 75), is not a failed recipe: the other seeds wait for it instead of being
    trained with the recipe chosen without it."""
    import gankd.experiments.sweep as sweep

    spec = {**json.loads(json.dumps(TINY)), "teacher": {"checkpoint": str(mnist_teacher)}}
    plan = Plan(spec, tmp_path, "tiny")
    started: list[str] = []

    def run_job(job, threads: int, children) -> None:
        started.append(job.name)
        job.status = held if job.name == "regular/dcgan-c4/s0" else "done"
        for model in job.models:
            model.status = job.status

    monkeypatch.setattr(sweep, "run_job", run_job)
    monkeypatch.setattr(sweep, "evaluate_model", lambda model, *a, **k: {"metrics": {"is": {"mean": float(model.depth)}}})
    sweep.train_all(plan, sweep.evaluation_settings(spec), parallel=1)
    assert "regular/dcgan-c4/s0" in started and not any(name.endswith("/s1") and name.startswith("regular") for name in started)


def test_a_folder_held_by_another_run_is_busy_and_waited_for(mnist_teacher: Path, tmp_path: Path) -> None:
    """A run started by hand in a sweep's folder (the lock held): the sweep's own job for it ends
    "busy" with the holder's message, the jobs that start from it wait, and the same command after
    the holder has gone trains it."""
    from gankd.experiments.sweep import run_sweep
    from gankd.files import owned_folder

    spec = {**json.loads(json.dumps(TINY)), "teacher": {"checkpoint": str(mnist_teacher)}, "seeds": [0], "depths": [2],
            "methods": {"mse": {"steps": 4}, "joint": {"alpha": 0.3, "loss": "dcgan", "steps": 2, "init": "mse"}},
            "evaluation": {"metrics": ["fidelity", "is"], "samples": 100}}
    config, out = write(tmp_path / "busy.json", spec), tmp_path / "out"
    with owned_folder(out / "runs" / "mse" / "s0" / "d2"):
        jobs = {job.name: job for job in run_sweep(config, out).jobs}
    assert jobs["mse/s0"].status == "busy" and f"in use by another gankd run (pid {os.getpid()})" in jobs["mse/s0"].error
    assert jobs["joint/s0"].status == "pending" and not (out / "runs" / "joint").exists()
    assert json.loads((out / "status.json").read_text())["mse/s0"]["status"] == "busy"
    jobs = {job.name: job for job in run_sweep(config, out).jobs}
    assert jobs["mse/s0"].status == jobs["joint/s0"].status == "done"


@pytest.mark.parametrize("exit_code, status", [(130, "stopped"), (-9, "stopped"), (75, "busy"), (1, "failed")])
def test_a_run_stopped_by_a_signal_is_stopped_not_failed(mnist_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         exit_code: int, status: str) -> None:  # fmt: skip
    import gankd.experiments.jobs as jobs

    spec = {**json.loads(json.dumps(TINY)), "teacher": {"checkpoint": str(mnist_teacher)}}
    job = next(j for j in Plan(spec, tmp_path, "tiny").regular if j.name == "regular/dcgan-c4/s0")
    monkeypatch.setattr(jobs.Children, "run", lambda self, args, **options: exit_code)
    jobs.run_job(job, threads=1)
    assert job.status == status and all(m.status == status for m in job.models)


def test_a_gan_run_is_the_same_run_whatever_the_distillation_options_say() -> None:
    """A finished teacher stays finished when a later gankd changes a distillation default."""
    from gankd.config import RunConfig
    from gankd.experiments.jobs import differences

    saved = RunConfig(out="a", depth=8, terms={"mse": 1.0})
    assert differences(saved, RunConfig(out="b", depth=8, terms={"relation": 2.0})) == []
    assert differences(saved, RunConfig(out="b", depth=16)) == ["depth"]
    student = RunConfig(method="mse", teacher="t", depth=2)
    assert differences(student, RunConfig(method="mse", teacher="t", depth=2, terms={"relation": 2.0})) == ["terms"]
