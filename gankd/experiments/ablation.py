"""`gankd ablation`: which distillation recipe to ship, measured -- students of one teacher
distilled by several named variants (distillation terms, joint settings, weight average, ...) at
a few depths and seeds, every one scored the same way, in one table.

An ablation config (JSON) names the data, the teacher (a checkpoint), the depths, the seeds and
the variants, each a set of run options over ``common`` (``"method"`` defaults to ``mse``):

    "variants": {"mse": {}, "relation": {"terms": {"relation": 500}},
                 "joint-teacher-critic": {"method": "joint", "init": "mse", "critic_init": "...", "alpha": 0.2}}

``"init"`` naming an earlier variant starts each student from that variant's student of the same
seed and depth (a warm start), and its job runs once that one has finished.

Each variant and seed is one job (its depths in one teacher pass), in ``OUT/runs/<variant>/s<seed>/
d<depth>`` (``--jobs N`` trains N of them at once); finished students are skipped on the next
call, interrupted ones resumed from their checkpoint. Each student is scored with the config's
metrics (cached per model, as in a sweep), and the table ``OUT/ablation.md`` (and ``ablation.json``) gives each variant's metrics -- the mean
and 95% interval over seeds -- beside the first variant (the baseline), the training speed of its
pass relative to the baseline's, and a picture of the same latents through the teacher and every
variant's students (``ablation.png``).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from gankd.checkpoint import load_generator
from gankd.errors import GankdError
from gankd.experiments.jobs import (EVALUATION_DEFAULTS, HEARTBEAT_S, Children, Job, Model, evaluate_model, latest_progress, make_job,
                                   read_experiment_config, refresh, run_job)
from gankd.experiments.stats import Estimate, estimate
from gankd.files import atomic_write_bytes
from gankd.imaging import save_comparison
from gankd.metrics.registry import QUALITY, columns_of, metric_value
from gankd.progress import note, track
from gankd.runtime import resolve_device, stop_requests
from gankd.sampling import images_from

SPEC_KEYS = {"name", "description", "data", "common", "teacher", "depths", "seeds", "variants", "evaluation"}
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9+._-]*$")  # a folder name
PICTURE_LATENTS, PICTURE_SEED = 12, 11


def load_ablation(path: Path) -> dict[str, Any]:
    """The ablation config, checked for what every job needs (the jobs validate their options)."""
    spec = read_experiment_config(path, "ablation", SPEC_KEYS, ("data", "teacher", "depths", "variants"))
    if set(spec["teacher"]) != {"checkpoint"}:
        raise GankdError(f"{path}: the teacher is {{\"checkpoint\": PATH}} (a trained generator)")
    if not isinstance(spec["variants"], dict) or not spec["variants"]:
        raise GankdError(f"{path}: variants must be a non-empty object, name -> run options")
    for name, options in spec["variants"].items():
        if not VARIANT_NAME.match(name):
            raise GankdError(f"{path}: variant name {name!r} must be lower-case letters, digits and + . _ - (it names a folder)")
        if not isinstance(options, dict):
            raise GankdError(f"{path}: variant {name!r} must be an object of run options")
    unknown_eval = sorted(set(spec.get("evaluation", {})) - set(EVALUATION_DEFAULTS))
    if unknown_eval:
        raise GankdError(f"{path}: unknown evaluation key(s) {unknown_eval}; known: {sorted(EVALUATION_DEFAULTS)}")
    return spec


def ablation_jobs(spec: dict[str, Any], out: Path, source: str) -> tuple[Model, list[Job]]:
    """The teacher and one job per (variant, seed), in the config's order."""
    teacher_path = Path(spec["teacher"]["checkpoint"])
    _, meta = load_generator(teacher_path)
    teacher = Model("teacher", meta["arch"]["depth"] or 0, meta.get("seed", 0), teacher_path, status="done")
    base = {**spec["data"], **spec.get("common", {}), "teacher": str(teacher_path)}
    jobs = []
    for name, own in spec["variants"].items():
        options = {**base, **own}
        options.setdefault("method", "mse")
        first = own.get("init") if own.get("init") in spec["variants"] else None
        if first is not None and list(spec["variants"]).index(first) >= list(spec["variants"]).index(name):
            raise GankdError(f"{source}: variant {name!r} starts from variant {first!r}, which must come before it")
        for seed in spec.get("seeds", [0]):
            if first is not None:  # warm start from that variant's students of the same seed and depth
                options["init"] = str(out / "runs" / first / f"s{seed}" / "d{depth}" / "generator.safetensors")
            job = make_job(f"{name}/s{seed}", options["method"], seed, out / "runs" / name / f"s{seed}", spec["depths"],
                           options, recipe=name, source=source)
            job.after = f"{first}/s{seed}" if first is not None else ""
            jobs.append(job)
    return teacher, jobs


def images_per_second(run_dir: Path) -> float | None:
    """The median training speed of a run's logged intervals (those with an evaluation in them
    are the slow tail the median ignores): the cost of its objective per step."""
    try:
        with (run_dir / "metrics.csv").open() as f:
            speeds = [float(row["images_per_s"]) for row in csv.DictReader(f) if row.get("images_per_s")]
    except FileNotFoundError:
        return None
    return statistics.median(speeds) if speeds else None


def run_ablation(config_path: Path, out: Path, train: bool = True, threads: int = 1, parallel: int = 1) -> dict[str, Any]:
    """Train the unfinished jobs (unless ``train`` is false; ``parallel`` processes at a time), score
    every finished student, write the table and the picture; returns the table's data."""
    spec = load_ablation(config_path)
    teacher, jobs = ablation_jobs(spec, out, str(config_path))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "ablation-config.json", (json.dumps(spec, indent=2) + "\n").encode())
    for job in jobs:
        refresh(job)
    if train:
        train_jobs(jobs, threads, parallel)
    settings = {**EVALUATION_DEFAULTS, **spec.get("evaluation", {})}
    device = resolve_device(settings["device"])
    models = [m for job in jobs for m in job.models if m.status == "done"]
    for model in track(models, "evaluating", "model"):
        model.evaluation = evaluate_model(model, settings["metrics"], settings["samples"], settings["seed"], device, teacher,
                                          spec["data"].get("data"))
    table = summarise(spec, jobs, settings)
    atomic_write_bytes(out / "ablation.json", (json.dumps(table, indent=2) + "\n").encode())
    drew = draw(teacher, jobs, spec["depths"], out / "ablation.png")
    atomic_write_bytes(out / "ablation.md", write_table(spec, table, settings, config_path, out, drew).encode())
    return table


def train_jobs(jobs: list[Job], threads: int, parallel: int) -> None:
    """Train the unfinished jobs in the config's order, ``parallel`` processes at a time (the
    variants are independent, but a warm start waits for the job it starts from). A stop request
    reaches every running process, which checkpoints, and starts no other; a job held by another
    gankd process is left to it while the rest go on."""
    children = Children()

    def train(job: Job) -> None:
        note(f"{job.name}: started ({jobs.index(job) + 1} of {len(jobs)}; d = {', '.join(str(m.depth) for m in job.models)}; "
             f"log {job.folder / 'train.log'})")
        run_job(job, threads, children)
        note(f"{job.name}: {job.status}" + (f" ({job.error})" if job.error else ""))

    by_name = {job.name: job for job in jobs}
    waiting = [job for job in jobs if job.status != "done"]
    with stop_requests(children.stop) as stop, ThreadPoolExecutor(max_workers=parallel) as pool:
        running: dict[Future, Job] = {}
        while True:
            for job in list(waiting):  # a warm start whose first job ended unfinished cannot run
                first = by_name.get(job.after)
                if first is not None and first.status in ("failed", "skipped", "stopped", "busy") and first not in running.values():
                    waiting.remove(job)
                    job.status, job.error = "skipped", f"{first.name} did not finish"
                    note(f"{job.name}: skipped ({job.error})")
            ready = [job for job in waiting if not job.after or by_name[job.after].status == "done"]
            while ready and len(running) < parallel and not stop:
                job = ready.pop(0)
                waiting.remove(job)
                running[pool.submit(train, job)] = job
            if not running:
                break
            done, _ = wait(list(running), timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                future.result()
            if not done:  # only started jobs are handed to the pool, never more than it runs at once
                for job in running.values():
                    note(f"{job.name}: {latest_progress(job)}")
    if any(job.status in ("pending", "stopped", "busy") for job in jobs):
        unfinished = [job.name for job in jobs if job.status not in ("done", "failed")]
        raise GankdError(f"ablation stopped with {', '.join(unfinished)} unfinished: finished students are kept and running ones "
                         "checkpointed (a busy one is held by another gankd process); run the same command again to resume")


def summarise(spec: dict[str, Any], jobs: list[Job], settings: dict[str, Any]) -> dict[str, Any]:
    """Per (variant, depth): each metric column over the finished seeds, and the pass's speed."""
    columns = columns_of(settings["metrics"])
    rows = []
    baseline_speed: dict[int, float] = {}
    for variant in spec["variants"]:
        for depth in spec["depths"]:
            models = [m for job in jobs if job.recipe == variant for m in job.models if m.depth == depth and m.status == "done"]
            row: dict[str, Any] = {"variant": variant, "depth": depth, "seeds": len(models)}
            for column in columns:
                values = [v for m in models if (v := metric_value(m.evaluation, column)) is not None]
                if values:
                    e = estimate(values)
                    row[column] = {"mean": e.mean, "ci95": e.ci95, "n": e.n}
            speeds = [s for m in models if (s := images_per_second(m.run_dir)) is not None]
            if speeds:
                row["images_per_s"] = statistics.mean(speeds)
                baseline_speed.setdefault(depth, row["images_per_s"])
                row["time_per_step_vs_first"] = baseline_speed[depth] / row["images_per_s"]
            if models:
                row["steps"] = [load_generator(m.checkpoint)[1]["step"] for m in models]
            rows.append(row)
    return {"columns": columns, "rows": rows, "unfinished": [j.name for j in jobs if j.status != "done"]}


def draw(teacher: Model, jobs: list[Job], depths: list[int], path: Path) -> bool:
    """The same latents through the teacher and each variant's first-seed students, smallest depth first."""
    generator, meta = load_generator(teacher.checkpoint)
    latent_dim = meta["arch"]["latent_dim"]
    panels = [("teacher", images_from(generator, PICTURE_LATENTS, latent_dim, PICTURE_SEED, "cpu"))]
    seen = set()
    for job in jobs:
        if job.recipe in seen:
            continue
        seen.add(job.recipe)
        for model in sorted(job.models, key=lambda m: m.depth):
            if model.status == "done" and model.depth in depths:
                student, _ = load_generator(model.checkpoint)
                panels.append((f"{job.recipe} d={model.depth}", images_from(student, PICTURE_LATENTS, latent_dim, PICTURE_SEED, "cpu")))
    if len(panels) == 1:
        return False
    save_comparison(panels, path, nrow=2, scale=max(1, 64 // meta["arch"]["image_size"]))
    return True


def _cell(value: dict[str, float] | None, column: str) -> str:
    if value is None:
        return "—"
    scale = 1000 if column == "kid" else 1
    return str(Estimate(value["mean"] * scale, value["ci95"] * scale, value["n"]))


def write_table(spec: dict[str, Any], table: dict[str, Any], settings: dict[str, Any], config_path: Path, out: Path, drew: bool) -> str:
    columns = table["columns"]
    labels = [QUALITY[c].label + (" × 1000" if c == "kid" else "") + (" ↑" if QUALITY[c].higher_is_better else " ↓") for c in columns]
    lines = [f"# Ablation: {spec.get('name', config_path.stem)}", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    lines += [f"Made by `gankd ablation {config_path} --out {out}`; teacher `{spec['teacher']['checkpoint']}`; "
              f"seeds {spec.get('seeds', [0])}; {settings['samples']:,} samples per metric (evaluation seed {settings['seed']}). "
              "Mean ± 95% interval over seeds (one seed: the value alone). Time per step is the median of the logged "
              "intervals of the variant's pass (all its depths together), relative to the first variant's at the same depths: "
              "a cost only where the variants trained under the same load (`python -m benchmarks.distillation --only terms` "
              "measures it alternated in one process).", ""]
    lines += ["| variant | d | " + " | ".join(labels) + " | time/step | steps |", "|---|---|" + "---|" * (len(columns) + 2)]
    for row in table["rows"]:
        speed = f"{row['time_per_step_vs_first']:.2f}x" if "time_per_step_vs_first" in row else "—"
        steps = ", ".join(f"{s:,}" for s in row.get("steps", [])) or "not trained"
        lines.append(f"| {row['variant']} | {row['depth']} | " + " | ".join(_cell(row.get(c), c) for c in columns) + f" | {speed} | {steps} |")
    lines += ["", "Variants (run options over the config's `common`):", ""]
    lines += [f"- `{name}`: `{json.dumps(options)}`" for name, options in spec["variants"].items()]
    if table["unfinished"]:
        lines += ["", f"Not finished yet: {', '.join(table['unfinished'])}."]
    if drew:
        lines += ["", "Same latents through the teacher and each variant's first-seed students:", "", "![ablation](ablation.png)"]
    return "\n".join(lines) + "\n"
