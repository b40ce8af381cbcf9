"""`gankd sweep`: the paper's Table 1 protocol for one dataset, resumable, in parallel processes.

A sweep config (JSON) names the data, a teacher (trained here, or an existing checkpoint), the
student depths, and the settings of the three ways of getting a small generator:

    mse      student distilled by pixel MSE            (gankd distill --method mse)
    joint    student distilled by (1-a) MSE + a adv    (gankd distill --method joint)
    regular  GAN of the student's size from scratch    (gankd train)

Every run is an ordinary gankd run folder under ``OUT/runs/<name>``, launched as a ``gankd``
subprocess with ``--resume``: finished runs are skipped, interrupted ones continue from their
last checkpoint, failed ones are reported and tried again on the next call. Then every model,
the teacher included, is evaluated with the same metrics and sample counts (cached per run in
``eval.json``) and the report is written (see :mod:`gankd.experiments.report`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gankd.checkpoint import load_generator, read_checkpoint
from gankd.config import RunConfig
from gankd.errors import GankdError
from gankd.files import atomic_write_bytes
from gankd.progress import progress, track

METHODS = ("mse", "joint", "regular")
SPEC_KEYS = {"name", "description", "data", "common", "teacher", "depths", "methods", "evaluation"}
EVALUATION_DEFAULTS = {"metrics": ["is", "cfid", "fidelity", "cost"], "samples": 5000, "seed": 0, "device": "auto"}


@dataclass
class Job:
    name: str  # run folder name, e.g. "mse-d4"
    method: str  # teacher | mse | joint | regular
    depth: int
    config: RunConfig | None  # None: an existing teacher checkpoint, nothing to train
    checkpoint: Path  # the generator this job delivers
    status: str = "pending"
    error: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)


def load_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GankdError(f"{path}: no such sweep config") from None
    except json.JSONDecodeError as exc:
        raise GankdError(f"{path}: not valid JSON ({exc})") from None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise GankdError(f"{path}: unknown key(s) {unknown}; a sweep config has {sorted(SPEC_KEYS)}")
    for key in ("data", "teacher", "depths", "methods"):
        if key not in spec:
            raise GankdError(f"{path}: missing key {key!r}")
    bad_methods = sorted(set(spec["methods"]) - set(METHODS))
    if bad_methods:
        raise GankdError(f"{path}: unknown method(s) {bad_methods}; choose from {list(METHODS)}")
    if not spec["depths"] or not all(isinstance(d, int) and d >= 1 for d in spec["depths"]):
        raise GankdError(f"{path}: depths must be a non-empty list of positive integers")
    unknown_eval = sorted(set(spec.get("evaluation", {})) - set(EVALUATION_DEFAULTS))
    if unknown_eval:
        raise GankdError(f"{path}: unknown evaluation key(s) {unknown_eval}; known: {sorted(EVALUATION_DEFAULTS)}")
    return spec


def plan(spec: dict[str, Any], out: Path, source: str = "sweep config") -> list[Job]:
    """The teacher job first, then one job per (depth, method); RunConfigs validated up front."""
    runs = out / "runs"
    base = {**spec["data"], **spec.get("common", {})}

    def config(name: str, overrides: dict[str, Any]) -> RunConfig:
        return RunConfig.from_dict({**base, **overrides, "out": str(runs / name)}, f"{source} ({name})")

    teacher_spec = dict(spec["teacher"])
    if "checkpoint" in teacher_spec:
        path = Path(teacher_spec.pop("checkpoint"))
        if teacher_spec:
            raise GankdError(f"{source}: a teacher given by 'checkpoint' takes no other keys, got {sorted(teacher_spec)}")
        _, meta = load_generator(path)
        teacher = Job("teacher", "teacher", meta["arch"]["depth"] or 0, None, path, status="done")
    else:
        cfg = config("teacher", {**teacher_spec, "method": "gan"})
        teacher = Job("teacher", "teacher", cfg.depth, cfg, runs / "teacher" / "generator.safetensors")
    jobs = [teacher]
    for depth in spec["depths"]:
        for method, settings in spec["methods"].items():
            name = f"{method}-d{depth}"
            if method == "regular":
                overrides = {**settings, "method": "gan", "depth": depth}
            else:
                overrides = {**settings, "method": method, "depth": depth, "teacher": str(teacher.checkpoint)}
            jobs.append(Job(name, method, depth, config(name, overrides), runs / name / "generator.safetensors"))
    return jobs


def is_finished(job: Job) -> bool:
    if job.config is None:
        return True
    if not job.checkpoint.exists():
        return False
    try:
        return read_checkpoint(job.checkpoint)[1].get("step") == job.config.steps
    except GankdError:
        return False


def run_job(job: Job, threads: int) -> None:
    """Train (or resume) one run in a gankd subprocess; its output goes to <run>/train.log."""
    assert job.config is not None
    run_dir = Path(job.config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir.parent / f"{job.name}.json"
    job.config.save(config_path)
    command = "train" if job.method in ("teacher", "regular") else "distill"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (run_dir / "train.log").open("a") as log:
        result = subprocess.run([sys.executable, "-m", "gankd.cli", command, "--config", str(config_path), "--out", str(run_dir), "--resume"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode == 0 and is_finished(job):
        job.status = "done"
    else:
        lines = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()
        job.status, job.error = "failed", (lines[-1] if lines else f"exit code {result.returncode}")


def train_all(jobs: list[Job], parallel: int) -> None:
    for job in jobs:
        if is_finished(job):
            job.status = "done"
    todo = [j for j in jobs if j.status != "done"]
    teacher, students = jobs[0], jobs[1:]
    bar = progress(len(todo), "sweep runs", "run")
    threads = max(1, (os.cpu_count() or 1) // parallel)

    def run(job: Job) -> None:
        bar.set_postfix_str(job.name)
        run_job(job, threads)
        bar.update(1)

    if teacher.status != "done":
        run(teacher)  # everything else depends on it
    if teacher.status != "done":
        for job in students:
            if job.method != "regular" and job.status != "done":
                job.status, job.error = "skipped", "the teacher did not finish"
    pending = [j for j in students if j.status == "pending"]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run, pending))
    bar.close()


def evaluate_all(jobs: list[Job], settings: dict[str, Any], data_root: str | None) -> None:
    """Same metrics, samples and seed for every finished model; cached in <run>/eval.json."""
    from gankd.metrics.evaluate import evaluate, json_ready
    from gankd.runtime import resolve_device

    device = resolve_device(settings["device"])
    teacher_job = jobs[0]
    teacher, teacher_meta = load_generator(teacher_job.checkpoint, device) if teacher_job.status == "done" else (None, None)
    for job in track([j for j in jobs if j.status == "done"], "evaluating", "model"):
        metrics = [m for m in settings["metrics"] if m != "fidelity" or job.method in ("mse", "joint")]
        key = {"metrics": metrics, "samples": settings["samples"], "seed": settings["seed"],
               "checkpoint_mtime": job.checkpoint.stat().st_mtime}
        cache = job.checkpoint.parent / "eval.json"
        if cache.exists():
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                job.evaluation = cached["results"]
                continue
        generator, meta = load_generator(job.checkpoint, device)
        results = evaluate(generator, meta, metrics, settings["samples"], device, teacher=teacher, teacher_meta=teacher_meta,
                           data_root=data_root, seed=settings["seed"])
        results = json_ready(results)
        atomic_write_bytes(cache, (json.dumps({"key": key, "results": results}, indent=2) + "\n").encode())
        job.evaluation = results


def run_sweep(config_path: Path, out: Path, parallel: int = 1) -> list[Job]:
    from gankd.experiments.report import write_report

    spec = load_spec(config_path)
    jobs = plan(spec, out, str(config_path))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(spec, indent=2) + "\n")
    train_all(jobs, parallel)
    settings = {**EVALUATION_DEFAULTS, **spec.get("evaluation", {})}
    evaluate_all(jobs, settings, spec["data"].get("data"))
    status = {j.name: {"status": j.status, **({"error": j.error} if j.error else {})} for j in jobs}
    atomic_write_bytes(out / "status.json", (json.dumps(status, indent=2) + "\n").encode())
    write_report(spec, jobs, out, settings)
    return jobs
