"""`gankd sweep`: the paper's Table 1 protocol for one dataset, over seeds, resumable, in parallel.

A sweep config (JSON) names the data, a teacher (trained here, or an existing checkpoint), the
depths, the seeds, and the settings of the three ways of getting a small generator:

    mse            students distilled by pixel MSE              (gankd distill --method mse)
    joint          students distilled by MSE + adversarial      (gankd distill --method joint)
    mse-continued  the control of a warm-started joint method: the same MSE students continued
                   by MSE alone with the joint students' steps, seeds and settings, no critic
    regular        GANs of the students' sizes from scratch     (gankd train)
    NAME           a named student variant: any other name whose settings say which distillation
                   it runs, e.g. "kd": {"method": "mse", "terms": {"relation": 300}, "ema_kimg": 10},
                   so that a new recipe is reported beside the paper's MSE and joint students

The students of one method and seed train together in one teacher pass. ``"init": "mse"`` in the
joint method's settings starts each joint student from the MSE student of its seed and depth
(an MSE warm start; the joint job then runs after that MSE job); ``"mse-continued": {}`` then
says whether the adversarial term or the extra steps made the difference. ``regular`` may list
several recipes (critic size and loss, ...): each is trained at the first seed, the best one at
each depth (by the primary metric) is trained at the other seeds, and the report says which was
chosen and why, so "the student beats the regular GAN" is won against the best recipe tried.
Then every model is evaluated with the same metrics, samples and seed (cached per model) and the
report is written (:mod:`gankd.experiments.report`). Running the same command again resumes.
The sweep's own output says when each job starts and ends and, every ``HEARTBEAT_S`` seconds,
where each running job is (steps, rate, ETA from its train.log).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from gankd.checkpoint import load_generator
from gankd.errors import GankdError
from gankd.config import CRITIC_OPTIONS, DISTILL_METHODS
from gankd.experiments.jobs import (EVALUATION_DEFAULTS, HEARTBEAT_S, STUDENT_METHODS, Children, Job, Model, SweepResult, evaluate_floor,
                                    evaluate_model, is_student, latest_progress, student_methods, make_job, read_experiment_config, refresh, run_job)
from gankd.experiments.report import write_report
from gankd.files import atomic_write_bytes
from gankd.metrics.registry import QUALITY, columns_of, metric_value
from gankd.progress import note, progress, track
from gankd.runtime import resolve_device, stop_requests

METHODS = (*STUDENT_METHODS, "regular")
VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9+._-]*")  # a named student variant: also its folder under runs/
SPEC_KEYS = {"name", "description", "data", "common", "seeds", "teacher", "depths", "methods", "evaluation", "keep"}
EVALUATION_KEYS = set(EVALUATION_DEFAULTS) | {"primary"}


def load_spec(path: Path) -> dict[str, Any]:
    spec = read_experiment_config(path, "sweep", SPEC_KEYS, ("data", "teacher", "depths", "methods"))
    for name, settings in spec["methods"].items():
        if name in METHODS:
            continue
        if not (VARIANT_NAME.fullmatch(name) and isinstance(settings, dict) and settings.get("method") in DISTILL_METHODS):
            raise GankdError(f"{path}: unknown method {name!r}: choose from {list(METHODS)}, or name a student variant "
                             f"(lower case, digits, + . _ -) whose settings give \"method\": one of {list(DISTILL_METHODS)}")
    unknown_eval = sorted(set(spec.get("evaluation", {})) - EVALUATION_KEYS)
    if unknown_eval:
        raise GankdError(f"{path}: unknown evaluation key(s) {unknown_eval}; known: {sorted(EVALUATION_KEYS)}")
    return spec


def evaluation_settings(spec: dict[str, Any]) -> dict[str, Any]:
    settings = {**EVALUATION_DEFAULTS, **spec.get("evaluation", {})}
    quality = [c for c in columns_of(settings["metrics"]) if c != "fidelity_mse"]
    if not quality:
        raise GankdError(f"evaluation metrics {settings['metrics']} hold no quality metric (is, fid, kid, cfid)")
    settings.setdefault("primary", quality[0])
    if settings["primary"] not in quality:
        raise GankdError(f"evaluation: primary metric {settings['primary']!r} is not among those evaluated: {quality}")
    settings["keep"] = spec.get("keep", 0.9)
    return settings


def recipes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The regular-GAN recipes by name: ``{"recipes": {name: settings}}``, or one unnamed recipe."""
    regular = spec["methods"].get("regular")
    if regular is None:
        return {}
    if "recipes" in regular:
        if set(regular) != {"recipes"} or not regular["recipes"]:
            raise GankdError("methods.regular: give either one recipe's settings or {\"recipes\": {name: settings, ...}}")
        return dict(regular["recipes"])
    return {"default": regular}


class Plan:
    """The sweep's jobs: the teacher, one job per (method, seed), and the regular GANs' jobs."""

    def __init__(self, spec: dict[str, Any], out: Path, source: str = "sweep config"):
        self.spec, self.out, self.source = spec, out, source
        self.runs = out / "runs"
        self.base = {**spec["data"], **spec.get("common", {})}
        self.seeds: list[int] = spec.get("seeds", [0])
        self.depths: list[int] = spec["depths"]
        self.teacher = self._teacher_job()
        self.after: dict[str, str] = {}  # job name -> the job it starts from (joint students warm-started from MSE ones)
        self.students = [self._job(method, seed, self.depths) for method in student_methods(spec) for seed in self.seeds]
        self.recipes = recipes(spec)
        # the first seed of every recipe; the other seeds follow the choice (choose_recipes)
        self.regular = [self._job("regular", self.seeds[0], self.depths, name) for name in self.recipes]
        self.first_seed_regular = list(self.regular) if len(self.recipes) > 1 else []  # the jobs a recipe is chosen from
        self.floor: dict[str, float] = {}  # report column -> real test images' score (evaluate_all)
        self.choice: dict[int, str] = {d: next(iter(self.recipes)) for d in self.depths} if len(self.recipes) == 1 else {}
        if len(self.recipes) == 1:
            self.regular += [self._job("regular", seed, self.depths, next(iter(self.recipes))) for seed in self.seeds[1:]]

    def _teacher_job(self) -> Job:
        teacher_spec = dict(self.spec["teacher"])
        if "checkpoint" in teacher_spec:
            path = Path(teacher_spec.pop("checkpoint"))
            if teacher_spec:
                raise GankdError(f"{self.source}: a teacher given by 'checkpoint' takes no other keys, got {sorted(teacher_spec)}")
            _, meta = load_generator(path)
            model = Model("teacher", meta["arch"]["depth"] or 0, meta.get("seed", 0), path, status="done")
            return Job("teacher", "teacher", model.seed, [], [model], status="done")
        seed = teacher_spec.pop("seed", self.base.get("seed", 0))
        options = {**self.base, **teacher_spec, "method": "gan"}
        depth = options.pop("depth", None)
        if depth is None:
            raise GankdError(f"{self.source}: the teacher needs a depth")
        return make_job("teacher", "teacher", seed, self.runs / "teacher", [depth], options, source=self.source)

    def _job(self, method: str, seed: int, depths: list[int], recipe: str = "") -> Job:
        if method == "regular":
            options = {**self.base, **self.recipes[recipe], "method": "gan"}
            folder, name = self.runs / "regular" / recipe / f"s{seed}", f"regular/{recipe}/s{seed}"
        else:
            own = self.spec["methods"][method]
            if method == "mse-continued":
                joint = self.spec["methods"].get("joint", {})
                if joint.get("init") != "mse":
                    raise GankdError(f"{self.source}: \"mse-continued\" is the control of joint students warm-started from MSE (\"init\": \"mse\")")
                own = {**{k: v for k, v in joint.items() if k not in CRITIC_OPTIONS}, **own}  # the control has no critic
            runs = own.get("method", method)  # a named variant says which distillation it runs
            options = {**self.base, **own, "method": "mse" if runs == "mse-continued" else runs,
                       "teacher": str(self.teacher.models[0].checkpoint)}
            folder, name = self.runs / method / f"s{seed}", f"{method}/s{seed}"
            if options.get("init") == "mse":
                if method == "mse" or "mse" not in self.spec["methods"]:
                    raise GankdError(f"{self.source}: \"init\": \"mse\" starts joint students from the sweep's MSE students")
                options["init"] = str(self.runs / "mse" / f"s{seed}" / "d{depth}" / "generator.safetensors")
                self.after[name] = f"mse/s{seed}"
        return make_job(name, method, seed, folder, depths, options, recipe, self.source)

    def choose_recipes(self, score: dict[tuple[str, int], float | None], higher_is_better: bool) -> list[Job]:
        """Pick the best recipe at each depth from the first seed's ``score`` ((recipe, depth) ->
        value) and return the jobs that train it at the other seeds."""
        for depth in self.depths:
            scored = [(value, name) for name in self.recipes if (value := score.get((name, depth))) is not None]
            if scored:
                best = max(scored) if higher_is_better else min(scored)
                self.choice[depth] = best[1]
        jobs = []
        for name in self.recipes:
            depths = [d for d in self.depths if self.choice.get(d) == name]
            if depths:
                jobs += [self._job("regular", seed, depths, name) for seed in self.seeds[1:]]
        self.regular += jobs
        return jobs

    @property
    def jobs(self) -> list[Job]:
        return [self.teacher, *self.students, *self.regular]

    def result(self) -> SweepResult:
        return SweepResult(self.spec, self.out, self.seeds, self.depths, self.teacher, self.jobs, self.recipes, self.choice,
                           self.after, self.floor)


def run_sweep(config_path: Path, out: Path, parallel: int = 1, train: bool = True, threads: int | None = None) -> Plan:
    """Train what is not finished (unless ``train`` is false: then only the finished models are
    evaluated and reported, the rest listed as not finished), evaluate, write the report."""
    spec = load_spec(config_path)
    plan = Plan(spec, out, str(config_path))
    settings = evaluation_settings(spec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "sweep.json", (json.dumps(spec, indent=2) + "\n").encode())
    if train:
        train_all(plan, settings, parallel, threads)
    else:
        for job in plan.jobs:
            refresh(job)
        if plan.first_seed_regular:
            choose_regular(plan, settings)  # among the models finished so far
    evaluate_all(plan, settings)
    status = {job.name: {"status": job.status, **({"error": job.error} if job.error else {})} for job in plan.jobs}
    atomic_write_bytes(out / "status.json", (json.dumps(status, indent=2) + "\n").encode())
    write_report(plan.result(), settings)
    return plan


def train_all(plan: Plan, settings: dict[str, Any], parallel: int, threads: int | None = None) -> None:
    """Run every job, ``parallel`` at a time. Students come first (the heart of the result): the
    MSE ones when the teacher is done, each joint one as soon as the MSE job it starts from is
    done; regular GANs fill the free slots, their other seeds once the first seed has chosen
    their recipe."""
    for job in plan.jobs:
        refresh(job)
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    bar = progress(sum(j.status != "done" for j in plan.jobs), "sweep jobs", "job")
    ready: list[Job] = [plan.teacher]  # jobs whose inputs exist; started in the order of plan.jobs
    children = Children()
    scoring = {"now": False}  # the recipe choice's evaluations (minutes each) end at once on a stop

    def on_signal(signum: int) -> None:
        children.stop(signum)
        if scoring["now"]:
            raise StopScoring

    with contextlib.suppress(StopScoring), stop_requests(on_signal) as stop, ThreadPoolExecutor(max_workers=parallel) as pool:
        running: dict[Future, Job] = {}

        def add(jobs: list[Job]) -> None:
            ready.extend(job for job in jobs if job.status != "done" and job not in ready)

        def skip(job: Job, why: str) -> None:
            """A job that cannot run because what it starts from did not finish: over, for the bar too."""
            job.status, job.error = "skipped", why
            bar.update(1)

        students_queued = regular_chosen = False
        add(plan.regular)
        while True:
            if not students_queued and plan.teacher.status in ("done", "failed"):
                students_queued = True
                if plan.teacher.status == "done":
                    add([job for job in plan.students if job.name not in plan.after])
                else:
                    for job in plan.students:
                        skip(job, "the teacher did not finish")
            for job in plan.students:  # warm-started jobs, once the job they start from has finished
                if job.name in plan.after and job.status == "pending" and job not in ready and job not in running.values():
                    first = next(j for j in plan.students if j.name == plan.after[job.name])
                    if first.status == "done":
                        add([job])
                    elif first.status in ("failed", "skipped"):
                        skip(job, f"{first.name} did not finish")
            if plan.first_seed_regular and not regular_chosen and all(j.status in ("done", "failed") for j in plan.first_seed_regular):
                regular_chosen = True
                scoring["now"] = True
                try:
                    new = choose_regular(plan, settings)
                finally:
                    scoring["now"] = False
                bar.total += sum(job.status != "done" for job in new)
                add(new)
            while ready and len(running) < parallel and not stop:
                job = min(ready, key=plan.jobs.index)
                ready.remove(job)
                if job.status != "done":
                    note(f"{job.name}: started (d = {', '.join(str(m.depth) for m in job.models)}; log {job.folder / 'train.log'})")
                    running[pool.submit(run_job, job, threads, children)] = job
            if not running:
                break
            done, _ = wait(list(running), timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
            if not done:
                for job in sorted(running.values(), key=plan.jobs.index):
                    note(f"{job.name}: {latest_progress(job)}")
            for future in done:
                job = running.pop(future)
                future.result()
                note(f"{job.name}: {job.status}" + (f" ({job.error})" if job.error else ""))
                bar.set_postfix_str(f"{job.name}: {job.status}")
                if job.status in ("done", "failed"):  # a stopped or busy job is still to do
                    bar.update(1)
    bar.close()
    if stop:
        raise GankdError(f"sweep stopped by {signal.Signals(stop['signal']).name}: finished models are kept and running ones "
                         "checkpointed; run the same command again to resume")


class StopScoring(Exception):
    """Raised by the stop handler inside the recipe choice's evaluations: a model's scores are
    written only when complete, so dropping one loses nothing but its minutes."""


def choose_regular(plan: Plan, settings: dict[str, Any]) -> list[Job]:
    """Score the first seed's regular GANs on the primary metric and return the jobs that train
    the recipe chosen at each depth at the other seeds, refreshed (done where an earlier call
    finished them)."""
    score = {}
    for job in plan.first_seed_regular:
        for model in job.models:
            if model.status == "done":
                model.evaluation = evaluate_model(model, settings["metrics"], settings["samples"], settings["seed"],
                                                  resolve_device(settings["device"]), None)
                score[(job.recipe, model.depth)] = metric_value(model.evaluation, settings["primary"])
    jobs = plan.choose_recipes(score, QUALITY[settings["primary"]].higher_is_better)
    for job in jobs:  # the other seeds may have finished in an earlier call
        refresh(job)
    return jobs


def evaluate_all(plan: Plan, settings: dict[str, Any]) -> None:
    """Same metrics, samples and seed for every finished model; cached in each run folder."""
    device = resolve_device(settings["device"])
    teacher = plan.teacher.models[0] if plan.teacher.status == "done" else None
    models = [m for job in plan.jobs for m in job.models if m.status == "done"]
    data_root = plan.spec["data"].get("data")
    for model in track(models, "evaluating", "model"):
        model.evaluation = evaluate_model(model, settings["metrics"], settings["samples"], settings["seed"], device,
                                          teacher if is_student(model.method) else None, data_root)
    if teacher is not None:
        plan.floor = evaluate_floor(teacher, settings["metrics"], settings["samples"], settings["seed"], device, plan.out, data_root)
