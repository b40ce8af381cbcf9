"""Training jobs and model evaluations shared by ``gankd sweep`` and ``gankd limit``.

A job is one ``gankd train``/``gankd distill`` process: a teacher, or the models of one method
(and regular-GAN recipe) and one seed at several depths, trained together in one pass. Every
model keeps an ordinary run folder ``<job folder>/d<depth>``; the layout is
``runs/teacher``, ``runs/<method>/s<seed>/d<depth>`` and ``runs/regular/<recipe>/s<seed>/d<depth>``,
so a student is found in the same place whichever command trained it (students trained together
are bit-identical to students trained alone). Jobs run as subprocesses with ``--resume``: finished
models are skipped, interrupted ones continue from their checkpoint, failed ones are reported and
retried on the next call.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gankd.checkpoint import finished, load_generator
from gankd.config import DISTILL_ONLY, RunConfig
from gankd.data import SPLITS
from gankd.errors import EXIT_BUSY, EXIT_INTERRUPTED, GankdError
from gankd.files import atomic_write_bytes, file_sha256
from gankd.metrics.registry import columns_of, metric_value

STUDENT_METHODS = ("mse", "joint", "mse-continued")  # distilled from the teacher (the rest are GANs trained on data)
GAN_METHODS = ("teacher", "regular")  # trained on data; every other method (a named student variant too) is distilled


def is_student(method: str) -> bool:
    """A method whose models are distilled from the teacher: a built-in one or a named variant."""
    return method not in GAN_METHODS


def student_methods(spec: dict[str, Any]) -> list[str]:
    """The distilled methods of a sweep config: the built-in ones it names, then its named
    variants, in the config's order."""
    return [m for m in STUDENT_METHODS if m in spec["methods"]] + [m for m in spec["methods"] if m not in STUDENT_METHODS and is_student(m)]
EVALUATION_DEFAULTS = {"metrics": ["is", "cfid", "fidelity", "cost"], "samples": 10000, "seed": 0, "device": "auto"}


@dataclass
class Model:
    """One trained generator, as the report sees it."""

    method: str  # teacher | mse | joint | mse-continued | regular | a named student variant
    depth: int
    seed: int
    checkpoint: Path
    recipe: str = ""  # regular GANs: the recipe's name
    status: str = "pending"
    error: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.parent


@dataclass
class Job:
    """One process training ``configs`` (one per depth) together; none for an existing teacher."""

    name: str
    method: str
    seed: int
    configs: list[RunConfig]
    models: list[Model]
    recipe: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # shared by its models; "{depth}" in init stands for each one's
    status: str = "pending"
    error: str = ""
    after: str = ""  # the job whose students this one starts from ("init"), trained first (gankd ablation)

    @property
    def folder(self) -> Path:
        return self.models[0].run_dir if len(self.models) == 1 and self.method == "teacher" else self.models[0].run_dir.parent


@dataclass
class SweepResult:
    """What a sweep's report is written from: the spec, the jobs as they ended and the choices the
    sweep made. Plain data, below both ``sweep`` (which makes it) and ``report`` (which reads it)."""

    spec: dict[str, Any]
    out: Path
    seeds: list[int]
    depths: list[int]
    teacher: Job
    jobs: list[Job]
    recipes: dict[str, dict[str, Any]]  # regular-GAN recipe name -> its options
    choice: dict[int, str]  # depth -> the regular recipe trained at every seed
    after: dict[str, str]  # job name -> the job it starts from (joint students warm-started from MSE ones)
    floor: dict[str, float]  # report column -> real test images' score


def read_experiment_config(path: Path, what: str, keys: set[str], required: tuple[str, ...]) -> dict[str, Any]:
    """A sweep or ablation config: a JSON object with only ``keys``, the ``required`` ones present,
    and valid depths and seeds; every error one line naming the file."""
    try:
        spec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GankdError(f"{path}: no such {what} config") from None
    except json.JSONDecodeError as exc:
        raise GankdError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise GankdError(f"{path}: a {what} config is a JSON object")
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise GankdError(f"{path}: unknown key(s) {unknown}; a {what} config has {sorted(keys)}")
    for key in required:
        if key not in spec:
            raise GankdError(f"{path}: missing key {key!r}")
    if not spec["depths"] or not all(isinstance(d, int) and d >= 1 for d in spec["depths"]):
        raise GankdError(f"{path}: depths must be a non-empty list of positive integers")
    seeds = spec.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise GankdError(f"{path}: seeds must be a non-empty list of distinct non-negative integers")
    return spec


def make_job(name: str, method: str, seed: int, folder: Path, depths: list[int], options: dict[str, Any], recipe: str = "",
             source: str = "config") -> Job:
    """A job training ``depths`` with ``options`` (RunConfig keys), validated now. ``{depth}`` in
    ``options["init"]`` stands for each model's depth (e.g. joint students from MSE ones)."""
    options = {**options, "seed": seed}
    configs = []
    for depth in depths:
        out = folder if method == "teacher" else folder / f"d{depth}"
        init = options.get("init")
        own = {**options, "depth": depth, "out": str(out), **({"init": init.format(depth=depth)} if init else {})}
        configs.append(RunConfig.from_dict(own, f"{source} ({name})"))
    models = [Model(method, c.depth, seed, Path(c.out) / "generator.safetensors", recipe) for c in configs]
    return Job(name, method, seed, configs, models, recipe, options)


def model_finished(model: Model, cfg: RunConfig | None) -> bool:
    """Whether the model is trained; a folder that holds a run with other options is an error."""
    if cfg is None:
        return model.checkpoint.exists()
    saved_path = model.run_dir / "config.json"
    if saved_path.exists():
        differ = differences(RunConfig.load(saved_path), cfg)
        if differ:
            raise GankdError(f"{model.run_dir} holds a run with other options ({', '.join(differ)}); choose another folder")
    return finished(model.checkpoint, cfg.steps)


def differences(saved: RunConfig, wanted: RunConfig) -> list[str]:
    """The options in which two runs differ, ignoring where they run, how long they may run (a run
    can be continued on another device or with a larger --steps) and what ``wanted`` leaves to the
    run to fill in (None: image size, channels and latent size come from the teacher or data). A
    GAN's distillation options (DISTILL_ONLY) do not count: a new distillation default must not
    make a finished teacher "another run"."""
    a, b = saved.to_dict(), wanted.to_dict()
    for d in (a, b):
        d.pop("out"), d.pop("device"), d.pop("steps")
        if saved.method == wanted.method == "gan":
            for name in DISTILL_ONLY:
                d.pop(name)
        if d.get("teacher"):
            d["teacher"] = str(Path(d["teacher"]).resolve())
    return sorted(k for k in a if b[k] is not None and a[k] != b[k])


def refresh(job: Job) -> None:
    """Mark the job's models (and the job) done where their generator file says they finished."""
    for model, cfg in zip(job.models, job.configs or [None] * len(job.models)):
        if model_finished(model, cfg):
            model.status = "done"
    if all(m.status == "done" for m in job.models):
        job.status = "done"


class Children:
    """The gankd subprocesses a sweep has running, so that a stop request reaches each of them (they
    checkpoint and exit) and none starts after it."""

    def __init__(self) -> None:
        self.processes: set[subprocess.Popen] = set()
        self.stopped = 0
        self.lock = threading.Lock()

    def run(self, args: list[str], **options: Any) -> int:
        """Run ``args`` to the end and return its exit code (-signal if stopped before it started)."""
        with self.lock:
            if self.stopped:
                return -self.stopped
            process = subprocess.Popen(args, **options)
            self.processes.add(process)
        try:
            return process.wait()
        finally:
            with self.lock:
                self.processes.discard(process)

    def stop(self, signum: int) -> None:
        with self.lock:
            self.stopped = signum
            for process in self.processes:
                process.send_signal(signum)


def run_job(job: Job, threads: int, children: Children | None = None) -> None:
    """Train (or resume) the job's models in one gankd subprocess; its output goes to train.log."""
    refresh(job)
    if job.status == "done":
        return
    folder = job.folder
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "job.json"
    atomic_write_bytes(config_path, (json.dumps(job.options, indent=2) + "\n").encode())
    command = "distill" if is_student(job.method) else "train"
    depths = ",".join(str(c.depth) for c in job.configs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = folder if len(job.configs) > 1 else Path(job.configs[0].out)  # one depth: the CLI writes straight to --out
    with (folder / "train.log").open("a") as log:
        returncode = (children or Children()).run([sys.executable, "-m", "gankd.cli", command, "--config", str(config_path), "--out", str(out),
                                                   "--depth", depths, "--resume"], stdout=log, stderr=subprocess.STDOUT, env=env)
    refresh(job)
    if job.status != "done":
        lines = (folder / "train.log").read_text(errors="replace").strip().splitlines()
        job.error = lines[-1] if lines else f"exit code {returncode}"
        # Stopped by a signal (after its checkpoint, or killed), or its folder held by another gankd
        # process (a run started by hand): not a failure of its recipe or data, so nothing that
        # waits for it (a recipe choice, a warm start) goes on without it.
        job.status = {EXIT_INTERRUPTED: "stopped", EXIT_BUSY: "busy"}.get(returncode, "stopped" if returncode < 0 else "failed")
        for model in job.models:
            if model.status != "done":
                model.status, model.error = job.status, job.error


HEARTBEAT_S = 300.0  # how often a sweep or an ablation prints where each running job is (its log's newest progress line)


def latest_progress(job: Job) -> str:
    """The newest progress line of a running job's train.log (its steps, rate and ETA), so a sweep's
    own output says where each job is without anyone opening the logs."""
    try:
        with (job.folder / "train.log").open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 8192))
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no output yet"
    steps = [line for line in lines if " steps (" in line]
    return (steps or lines or ["no output yet"])[-1]


def evaluation_key(metrics: list[str], samples: int, seed: int) -> str:
    return f"{','.join(sorted(metrics))}|n={samples}|seed={seed}"


@functools.lru_cache(maxsize=1)
def loaded_teacher(path: Path, mtime_ns: int, device: str) -> tuple[Any, dict[str, Any]]:
    """The teacher, loaded once for all the models scored against it (so its fidelity images are
    computed once too: gankd.metrics.fidelity keeps them per module)."""
    return load_generator(path, device)


def evaluate_model(model: Model, metrics: list[str], samples: int, seed: int, device: Any, teacher: Model | None,
                   data_root: str | None = None) -> dict[str, Any]:
    """``metrics`` of one model, cached in its run folder's eval.json (keyed by the metrics, sample
    count and seed; valid while the generator file, and the teacher's for a student, have the
    contents they were scored with, so a fresh clone re-evaluates nothing)."""
    from gankd.metrics.evaluate import evaluate, json_ready

    if not is_student(model.method):
        metrics = [m for m in metrics if m != "fidelity"]
    cache = model.run_dir / "eval.json"
    key = evaluation_key(metrics, samples, seed)
    stamp = {"checkpoint_sha256": file_sha256(model.checkpoint), **({"teacher_sha256": file_sha256(teacher.checkpoint)} if teacher else {})}
    cached: dict[str, Any] = {}
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
        except json.JSONDecodeError:
            cached = {}
        entry = cached.get(key)
        if isinstance(entry, dict) and all(entry.get(name) == value for name, value in stamp.items()):
            return entry["results"]
    generator, meta = load_generator(model.checkpoint, device)
    teacher_net, teacher_meta = loaded_teacher(teacher.checkpoint, teacher.checkpoint.stat().st_mtime_ns, str(device)) if teacher else (None, None)
    results = json_ready(evaluate(generator, meta, metrics, samples, device, teacher=teacher_net, teacher_meta=teacher_meta,
                                  data_root=data_root, seed=seed))
    cached[key] = {**stamp, "results": results}
    atomic_write_bytes(cache, (json.dumps(cached, indent=2) + "\n").encode())
    return results


def evaluate_floor(teacher: Model, metrics: list[str], samples: int, seed: int, device: Any, out: Path,
                   data_root: str | None = None) -> dict[str, float]:
    """The scores of real test images in a generator's place (``real_floor``), as report columns;
    cached in ``out/floor.json`` by evaluation key. Empty where the data has no test split."""
    from gankd.metrics.evaluate import FLOOR_METRICS, json_ready, real_floor

    metrics = [m for m in metrics if m in FLOOR_METRICS]
    cache, key = out / "floor.json", evaluation_key(metrics, samples, seed)
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in cached:
        meta = load_generator(teacher.checkpoint, "cpu")[1]
        if "test" not in SPLITS.get((meta.get("dataset") or {}).get("kind"), ()):
            return {}
        cached[key] = json_ready(real_floor(meta, metrics, samples, device, data_root=data_root, seed=seed))
        atomic_write_bytes(cache, (json.dumps(cached, indent=2) + "\n").encode())
    values = {column: metric_value(cached[key], column) for column in columns_of(metrics)}
    return {column: value for column, value in values.items() if value is not None}
