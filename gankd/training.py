"""The one training loop: GANs from scratch, MSE distillation and joint distillation.

Every scheme is the same loop with different terms in the generator's objective
(:mod:`gankd.losses` has them all):

    gan    L_G = adv(D(G(z)))                                         critic trained on real data
    mse    L_G = ||G_T(z) - G(z)||^2                                  no critic, no data
    joint  L_G = (1 - alpha) ||G_T(z) - G(z)||^2 + alpha w adv(D(G(z)))

z ~ N(0, I) is drawn fresh every step; the critic takes ``critic_steps`` steps per generator step.

One run can train several students of one teacher at once (``train_many``: the same options but
the depth): every step draws one latent batch (and one real batch), runs the teacher once, and
updates each student with its own optimiser (and critic). All random draws are shared, so each
student is bit-identical to the one a run of its own would give, and each keeps an ordinary run
folder (config.json, metrics.csv, checkpoints, generator.safetensors) that can be resumed,
evaluated or shipped alone. A student that diverges or converges stops alone.

The loop runs unchanged on CPU, one GPU, or several processes under ``torchrun``
(DistributedDataParallel; gloo on CPU, NCCL on GPU). Losses stay on the device and are read back
once per ``log_every`` steps, so the hot path has no host synchronisation.
"""

from __future__ import annotations

import csv
import signal
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gankd import checkpoint as ckpt
from gankd.config import RunConfig
from gankd.convergence import Plateau, build_monitor, resolve_monitor
from gankd.data import ImageData, load_dataset, to_unit_range
from gankd.ema import WeightAverage
from gankd.errors import GankdError, RunDiverged, RunInterrupted
from gankd.imaging import save_comparison, save_grid
from gankd.losses import GeneratorObjective, critic_loss
from gankd.models import Architecture, Critic, Generator, count_parameters
from gankd.progress import progress
from gankd.runtime import Runtime, check_precision, distributed_runtime, gather_rng, owned_run_folders, stop_flag, stop_requests

SAMPLE_LATENT_SEED = 2_718_281  # fixed latents for the periodic sample grids
PER_MEMBER = ("out", "depth", "critic_depth", "init")  # what may differ between the students of one run
FILLED_AT_START = ("image_size", "channels", "latent_dim")  # None: taken from the teacher or data (resolve_shapes)


# --------------------------------------------------------------------------- set-up


@dataclass
class Teacher:
    module: nn.Module
    meta: dict[str, Any]


def load_teacher(cfg: RunConfig, device: torch.device) -> Teacher:
    module, meta = ckpt.load_generator(cfg.teacher, device, latent_dim=cfg.latent_dim)
    for p in module.parameters():  # ScriptModules have no requires_grad_()
        p.requires_grad_(False)
    return Teacher(module.eval(), meta)


def resolve_shapes(cfg: RunConfig, teacher: Teacher | None, data: ImageData | None) -> RunConfig:
    """Fill image size, channels and latent size from the teacher or data; refuse mismatches."""
    updates: dict[str, Any] = {}
    if teacher is not None:
        t = teacher.meta["arch"]
        for key, label in (("image_size", "image size"), ("channels", "channels"), ("latent_dim", "latent size")):
            given = getattr(cfg, key)
            if given is not None and given != t[key]:
                raise GankdError(f"--{key.replace('_', '-')} {given} does not match the teacher's {label} {t[key]} ({cfg.teacher})")
            updates[key] = t[key]
    else:
        updates = {"image_size": cfg.image_size or 32, "latent_dim": cfg.latent_dim or 100}
    if data is not None:
        channels = updates.get("channels", cfg.channels)
        if channels is not None and data.channels != channels:
            raise GankdError(f"the data ({data.name}) has {data.channels} channel(s) but the teacher makes {channels}")
        if data.image_size != updates["image_size"]:
            raise GankdError(f"the data ({data.name}) is {data.image_size}x{data.image_size} but the teacher makes {updates['image_size']}x{updates['image_size']}")
        updates["channels"] = data.channels
    updates.setdefault("channels", cfg.channels or 1)
    return replace(cfg, **updates)


def data_description(cfg: RunConfig) -> dict[str, Any] | None:
    if not cfg.adversarial:
        return None
    return {"kind": cfg.dataset, "root": cfg.data, "image_size": cfg.image_size, "channels": cfg.channels, "split": "train"}


def architectures(cfg: RunConfig) -> tuple[Architecture, Architecture]:
    arch = Architecture(cfg.depth, cfg.image_size, cfg.channels, cfg.latent_dim)
    return arch, replace(arch, depth=cfg.resolved_critic_depth)


def objective(cfg: RunConfig) -> GeneratorObjective:
    return GeneratorObjective(adversarial=cfg.loss if cfg.adversarial else None, distill=cfg.method != "gan",
                              alpha=cfg.alpha, balance=cfg.balance, mse_reduction=cfg.mse_reduction)


def check_same_run(cfgs: list[RunConfig]) -> None:
    """The students of one run share every option but their depth, critic depth and folder. A shape
    left to the start (None) matches any: a resumed student's saved config has it filled, a new
    one's not yet (a depth added to a run whose other students finished); checked again once filled."""
    first = cfgs[0]
    for cfg in cfgs[1:]:
        differ = [f.name for f in fields(RunConfig) if f.name not in PER_MEMBER and getattr(cfg, f.name) != getattr(first, f.name)
                  and not (f.name in FILLED_AT_START and None in (getattr(cfg, f.name), getattr(first, f.name)))]
        if differ:
            raise GankdError(f"students trained together must share all options but depth; {cfg.out} differs in {differ}")
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) != len(outs):
        raise GankdError("students trained together need a run folder each")


# --------------------------------------------------------------------------- one model of a run


@dataclass
class Member:
    """One generator being trained (with its critic, optimisers, log and stopping rule)."""

    cfg: RunConfig
    generator: Generator
    critic: Critic | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    g_train: nn.Module  # the generator as trained: maybe DDP-wrapped or compiled
    d_train: nn.Module | None
    logger: "MetricsLog"
    plateau: Plateau | None
    step: int = 0
    status: str = "active"  # active | waiting (resumed ahead of the others) | done | diverged
    stop_reason: str = ""
    error: str = ""
    eval_pending: bool = False  # a stop came when an evaluation was due: the resumed run makes it first
    history: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    saved_rng: tuple[torch.Tensor, torch.Tensor] | int | None = None  # shared streams' states, or a seed for fresh ones
    average: WeightAverage | None = None  # the generator's weight average (--ema-kimg), which is what the run delivers

    @property
    def delivered(self) -> Generator:
        """The generator the run is judged by and ships: the weight average when there is one."""
        return self.average.averaged() if self.average is not None else self.generator

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.safetensors"

    @property
    def label(self) -> str:
        return f"d={self.cfg.depth}"


def build_member(cfg: RunConfig, rt: Runtime, memory_format: torch.memory_format, higher_is_better: bool | None) -> Member:
    arch, critic_arch = architectures(cfg)
    device = rt.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank, and whichever students run together
    generator = Generator(arch).to(device)
    critic = Critic(critic_arch, batch_norm=cfg.loss == "dcgan").to(device) if cfg.adversarial else None
    if cfg.init:
        initialise(generator, cfg.init)
    generator.to(memory_format=memory_format)
    if critic is not None:
        critic.to(memory_format=memory_format)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.resolved("lr"), betas=cfg.resolved("betas"))
    opt_d = (torch.optim.Adam(critic.parameters(), lr=cfg.resolved("lr", "critic"), betas=cfg.resolved("betas", "critic"))
             if critic is not None else None)
    g_train: nn.Module = DistributedDataParallel(generator) if rt.world_size > 1 else generator
    d_train: nn.Module | None = DistributedDataParallel(critic) if critic is not None and rt.world_size > 1 else critic
    if cfg.compile:
        # On CUDA in the default memory format, inductor's layout optimisation makes convolutions
        # channels-last inside the compiled graph and then expects channels-last strides for a
        # contiguous buffer in a transposed convolution's backward (assert_size_stride in
        # convolution_backward; torch 2.11, H100), so it is off there. It is an option of this
        # compiled module, not a global setting: set globally, it leaked into a later channels-last
        # run in the same process, which then failed the same assertion (H100, 2026-11-27).
        options = {"layout_optimization": False} if device.type == "cuda" and memory_format == torch.contiguous_format else None
        g_train = torch.compile(g_train, options=options)
        # Not a WGAN-GP critic: its gradient penalty differentiates it twice (create_graph), which
        # compiled (AOTAutograd) graphs do not support.
        d_train = torch.compile(d_train, options=options) if d_train is not None and cfg.loss != "wgan-gp" else d_train
    plateau = Plateau(cfg.patience, cfg.min_delta, higher_is_better) if cfg.patience and higher_is_better is not None else None
    average = WeightAverage(generator, cfg.ema_kimg, cfg.batch_size) if cfg.ema_kimg else None
    return Member(cfg, generator, critic, opt_g, opt_d, g_train, d_train, MetricsLog(Path(cfg.out) / "metrics.csv", enabled=rt.is_main),
                  plateau, average=average)


def initialise(generator: Generator, path: str) -> None:
    """Copy the weights and BatchNorm statistics of the gankd generator in ``path`` (same architecture)."""
    tensors, meta = ckpt.read_checkpoint(path)
    if meta.get("arch") != generator.arch.to_dict():
        raise GankdError(f"{path}: --init needs a generator of the run's architecture {generator.arch.to_dict()}, this one is {meta.get('arch')}")
    ckpt.load_state(generator, ckpt.unprefixed("generator", tensors), path)


# --------------------------------------------------------------------------- the loop


def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Run (or continue) one training run; returns its run folder."""
    return train_many([cfg], resume)[0]


def train_many(cfgs: list[RunConfig], resume: bool = False) -> list[Path]:
    """Train several students of one teacher in one pass (see the module docstring); returns their
    run folders. Raises RunDiverged at the end if any student diverged (the others finish).
    Every run folder is locked before anything is written in it (one owner per folder)."""
    if not cfgs:
        raise GankdError("nothing to train")
    check_same_run(cfgs)
    with distributed_runtime(cfgs[0].device) as runtime, owned_run_folders([Path(c.out) for c in cfgs], runtime), \
            stop_requests() as stop:
        return _train(cfgs, resume, runtime, stop)


def _train(cfgs: list[RunConfig], resume: bool, rt: Runtime, stop: dict[str, int]) -> list[Path]:
    device = rt.device
    for cfg in cfgs:
        if not resume and (Path(cfg.out) / "checkpoints" / "last.safetensors").exists():
            raise GankdError(f"{cfg.out} already holds a run; pass --resume to continue it, or choose another --out")
    base = cfgs[0]
    check_precision(base.precision, device)
    teacher = load_teacher(base, device) if base.method != "gan" else None
    # Data at the run's image size but in its own channels (unless --channels asks otherwise), so
    # that a teacher and data of different channels are reported, not silently converted.
    image_size = resolve_shapes(base, teacher, None).image_size
    data = load_dataset(base.dataset, base.data, image_size, "train", base.channels) if base.adversarial else None
    cfgs = [resolve_shapes(cfg, teacher, data) for cfg in cfgs]
    check_same_run(cfgs)
    base = cfgs[0]
    monitor_name = resolve_monitor(base.monitor, base.method, base.dataset if base.method == "gan" else (teacher.meta.get("dataset") or {}).get("kind"), base.channels)
    monitor = (build_monitor(monitor_name, base.latent_dim, device, teacher.module if teacher else None, data)
               if base.patience or base.monitor != "auto" else None)

    # Channels-last is an option on CUDA; on the CPU it is always used: oneDNN's native layout,
    # it saves the layout conversions around every convolution (about 10% of a training step).
    memory_format = torch.channels_last if base.channels_last or device.type == "cpu" else torch.contiguous_format
    members = [build_member(cfg, rt, memory_format, monitor.higher_is_better if monitor else None) for cfg in cfgs]
    noise_rng = torch.Generator(device).manual_seed(base.seed * 1_000_003 + 2 * rt.rank + 1)
    index_rng = torch.Generator().manual_seed(base.seed * 1_000_003 + 2 * rt.rank + 2)

    elapsed = 0.0
    for m in members:
        if resume and m.last_path.exists():
            elapsed = max(elapsed, restore(m, rt))
        elif rt.is_main:
            m.run_dir.mkdir(parents=True, exist_ok=True)
            m.cfg.save(m.run_dir / "config.json")
    for m in members:  # resumed students that had already run all their steps
        if m.status == "active" and m.step >= m.cfg.steps:
            m.status = "done"
    step = start_step(members, noise_rng, index_rng, rt)
    for m in members:
        m.logger.start(m.step, monitor.name if monitor else None)

    def finish(m: Member, reason: str, at: int, seconds: float) -> None:
        """The end of one student: its generator file first, then the checkpoint that says it is done
        (a crash in between leaves the student resumable from its previous checkpoint)."""
        m.status, m.stop_reason = "done", reason
        if rt.is_main:
            export_generator(m, at, seconds, teacher)
            if m.critic is not None:
                ckpt.save_critic(m.run_dir / "critic.safetensors", m.critic, run_metadata(m, at, seconds, teacher))
            write_samples(m.run_dir / "samples.png", m.delivered, teacher, sample_z, sample_teacher)
        save_training_checkpoint(m, rt, at, seconds, noise_rng, index_rng, teacher)

    def judge(m: Member, value: float, at: int, seconds: float) -> None:
        """Feed an evaluation to the student's stopping rule; a plateau finishes it."""
        if m.plateau is not None and m.plateau.update(at, value):
            finish(m, f"plateau: {monitor.name} gained less than {m.cfg.min_delta:g} (relative) in {m.cfg.patience} evaluations",
                   at, seconds)

    def summarise(m: Member, at: int) -> dict[str, float] | None:
        """The interval's means (its history restarts); None, and the student stops, if it went bad."""
        try:
            means = check_and_summarise(m.history, at, m.cfg.divergence_threshold, m.last_path)
        except RunDiverged as exc:
            m.status, m.error = "diverged", str(exc)
            return None
        m.history = {}
        return means

    objective_of = objective(base)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=base.precision == "bf16")
    critic_steps = base.resolved("critic_steps", "critic") if base.adversarial else 0
    images = data.images.pin_memory() if data is not None and device.type == "cuda" else (data.images if data else None)
    to_dev = dict(device=device, non_blocking=True)
    latent_dim, batch = base.latent_dim, base.batch_size

    def latents() -> torch.Tensor:
        return torch.randn(batch, latent_dim, device=device, generator=noise_rng)

    def real_batch() -> torch.Tensor:
        index = torch.randint(len(images), (batch,), generator=index_rng)
        return to_unit_range(images[index].to(**to_dev)).contiguous(memory_format=memory_format)

    sample_z = torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(SAMPLE_LATENT_SEED)).to(device)
    with torch.no_grad():
        sample_teacher = teacher.module(sample_z).float() if teacher is not None else None
    for m in members:  # finished students whose generator file a crash kept from being written
        if m.status == "done" and rt.is_main and not (m.run_dir / "generator.safetensors").exists():
            export_generator(m, m.step, elapsed, teacher)
    for m in members:  # evaluations a stop deferred (see below), made before training goes on
        if m.eval_pending and m.status != "done":
            m.eval_pending = False
            if monitor is not None:
                value = monitor(m.delivered)
                m.logger.fill(m.step, value)
                judge(m, value, m.step, elapsed)
    cap = max(m.cfg.steps for m in members)
    names = ", ".join(m.label for m in members)
    bar = progress(cap, f"{base.method} {names}", "step", initial=step, enabled=rt.is_main)
    interval_start, interval_step = time.perf_counter(), step

    while any(m.status in ("active", "waiting") for m in members):
        active = [m for m in members if m.status == "active"]
        step_stats: dict[int, dict[str, torch.Tensor]] = {id(m): {} for m in active}
        # ---- critics: real data against each generator's current images (shared draws)
        for _ in range(critic_steps):
            z_critic = latents()
            real = real_batch()
            eps = torch.rand(batch, device=device, generator=noise_rng) if base.loss == "wgan-gp" else None
            for m in active:
                with torch.no_grad(), autocast:
                    fake = m.g_train(z_critic)
                with autocast:
                    loss_d, step_stats[id(m)] = critic_loss(m.d_train, real, fake.float(), base.loss, base.gp_lambda, eps,
                                                                base.resolved_r1_gamma)
                m.opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                m.opt_d.step()
        # ---- generators / students: one latent batch, one teacher pass
        z = latents()
        target = None
        if teacher is not None and active:
            with torch.no_grad(), autocast:
                target = teacher.module(z)
        for m in active:
            with autocast:
                fake = m.g_train(z)
                grad, stats = objective_of.images_gradient(fake, target, m.critic)
            m.opt_g.zero_grad(set_to_none=True)
            # Back-propagate the objective's gradient at the images through the generator alone:
            # the critic's weights get none (and, under DDP, trigger no all-reduce).
            fake.backward(grad.to(fake.dtype))
            m.opt_g.step()
            if m.average is not None:
                m.average.update(m.generator, step, batch * rt.world_size)
            record(m.history, {**step_stats[id(m)], **stats})
            m.step = step + 1
        step += 1
        bar.update(1)
        for m in members:
            if m.status == "waiting" and m.step == step:
                join(m, noise_rng, index_rng)

        # ---- evaluations. One takes a while (the FID monitor: ~50 s on a CPU core), so a stop asked
        # before or during them leaves the rest to the resumed run: a stop is answered after one
        # evaluation at most, and the resumed run is the run that was not stopped.
        interrupted = stop_flag(stop, rt)
        summaries: dict[int, dict[str, float] | None] = {}
        values: dict[int, float] = {}
        for m in active:
            if monitor is None or step % m.cfg.eval_every:
                continue
            summaries[id(m)] = summarise(m, step)  # first: a generator that went bad is not evaluated
            if m.status != "active":
                continue
            at_end = step >= m.cfg.steps
            interrupted = interrupted or (0 if at_end else stop_flag(stop, rt))  # collective: all ranks agree
            if interrupted and not at_end:
                m.eval_pending = True
            else:
                values[id(m)] = monitor(m.delivered)
        # ---- logs, samples, stopping rules, checkpoints
        now = time.perf_counter()
        run_elapsed = elapsed + now - interval_start
        for m in active:
            if m.status != "active":  # diverged
                continue
            value = values.get(id(m))
            at_end = step >= m.cfg.steps
            at_checkpoint = step % m.cfg.checkpoint_every == 0 or interrupted
            if id(m) in summaries or step % m.cfg.log_every == 0 or at_end or at_checkpoint:
                means = summaries[id(m)] if id(m) in summaries else summarise(m, step)
                if means is None:
                    continue
                rate = (step - interval_step) * batch * rt.world_size / max(now - interval_start, 1e-9)
                m.logger.write(step, run_elapsed, rate, means, value)
                if len(members) == 1:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k in ("d_loss", "g_loss", "mse_pixel")})
            if rt.is_main and step % m.cfg.sample_every == 0:
                write_samples(m.run_dir / "samples" / f"step_{step:07d}.png", m.delivered, teacher, sample_z, sample_teacher)
            if value is not None:
                judge(m, value, step, run_elapsed)
            if m.status == "done":  # the plateau ended it
                continue
            if at_end:
                finish(m, "steps", step, run_elapsed)
            elif at_checkpoint:
                save_training_checkpoint(m, rt, step, run_elapsed, noise_rng, index_rng, teacher)
        if step % base.log_every == 0 or interrupted:
            elapsed, interval_start, interval_step = run_elapsed, now, step
        if interrupted:
            bar.close()
            name = signal.Signals(interrupted).name
            saved = ", ".join(str(m.last_path) for m in members if m.status == "active")
            raise RunInterrupted(f"stopped by {name} at step {step}; checkpoint saved to {saved or 'the run folders'}; continue with --resume")
    bar.close()
    diverged = [m for m in members if m.status == "diverged"]
    if diverged:
        raise RunDiverged("; ".join(f"{m.run_dir}: {m.error}" if len(members) > 1 else m.error for m in diverged))
    return [m.run_dir for m in members]


def record(history: dict[str, list[torch.Tensor]], stats: dict[str, torch.Tensor]) -> None:
    for name, value in stats.items():
        history.setdefault(name, []).append(value.detach().float())


def start_step(members: list[Member], noise_rng: torch.Generator, index_rng: torch.Generator, rt: Runtime) -> int:
    """The step the run continues from: the earliest among the resumed students that still train.
    Students ahead of it (a crash between two students' checkpoints) wait until the shared draws
    reach their step, then join; students that had finished stay finished."""
    training = [m for m in members if m.status == "active"]
    if not training:
        return max((m.step for m in members), default=0)
    step = min(m.step for m in training)
    for m in training:
        if m.step > step:
            m.status = "waiting"
    first = next(m for m in training if m.step == step)
    if isinstance(first.saved_rng, int):
        noise_rng.manual_seed(first.saved_rng + 1)
        index_rng.manual_seed(first.saved_rng + 2)
    elif first.saved_rng is not None:
        noise_rng.set_state(first.saved_rng[0])
        index_rng.set_state(first.saved_rng[1])
    return step


def join(m: Member, noise_rng: torch.Generator, index_rng: torch.Generator) -> None:
    """A student that was ahead rejoins: the shared draws must now be where its checkpoint left them."""
    if isinstance(m.saved_rng, tuple) and not (torch.equal(m.saved_rng[0], noise_rng.get_state()) and torch.equal(m.saved_rng[1], index_rng.get_state())):
        raise GankdError(f"{m.last_path}: its random state does not match the other students' at step {m.step}; resume it alone")
    m.status = "active"


def check_and_summarise(history: dict[str, list[torch.Tensor]], step: int, threshold: float, last_path: Path) -> dict[str, float]:
    """Interval means of every logged value; stop with the exact step if one went bad."""
    if not history:
        return {}
    names = list(history)
    values = torch.stack([torch.stack(history[n]) for n in names]).cpu()  # one host sync
    first_step = step - values.shape[1] + 1
    for row, name in enumerate(names):
        series = values[row]
        exploded = name in ("d_real", "d_fake") and bool((series.abs() > threshold).any())
        bad = ~torch.isfinite(series) | (series.abs() > threshold if exploded else torch.zeros_like(series, dtype=torch.bool))
        if bad.any():
            at = first_step + int(bad.nonzero()[0])
            what = f"reached {series[bad][0].item():.3g} (limit {threshold:g})" if exploded else f"became {series[bad][0].item()}"
            kept = f"the last good checkpoint is {last_path}" if last_path.exists() else "no checkpoint had been written yet"
            raise RunDiverged(f"training diverged at step {at}: {name} {what}; {kept}")
    return {n: float(values[i].mean()) for i, n in enumerate(names)}


class MetricsLog:
    """metrics.csv: one row per log interval, a ``val_<monitor>`` column when a monitor is watched.
    On resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.columns = path, enabled, None
        self.monitor: str | None = None

    def start(self, step: int, monitor: str | None) -> None:
        self.monitor = monitor
        if self.enabled and self.path.exists():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            self.columns = list(rows[0]) if rows else None
            self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        with self.path.open("w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def write(self, step: int, elapsed: float, rate: float, values: dict[str, float], monitored: float | None = None) -> None:
        if not self.enabled:
            return
        row = {"step": step, "elapsed_s": f"{elapsed:.2f}", "images_per_s": f"{rate:.1f}", **{k: f"{v:.6g}" for k, v in values.items()}}
        if self.monitor:
            row[f"val_{self.monitor}"] = "" if monitored is None else f"{monitored:.6g}"
        if self.columns is None:
            self.columns = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)

    def fill(self, step: int, monitored: float) -> None:
        """Put the monitor's value into the row of ``step``: an evaluation a stop deferred to the resumed run."""
        column = f"val_{self.monitor}"
        if not (self.enabled and self.columns and column in self.columns):
            return
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if int(row["step"]) == step:
                row[column] = f"{monitored:.6g}"
        self._rewrite(rows)


@torch.no_grad()
def write_samples(path: Path, generator: Generator, teacher: Teacher | None, z: torch.Tensor, teacher_images: torch.Tensor | None) -> None:
    was_training = generator.training
    generator.eval()
    student = generator(z)
    generator.train(was_training)
    scale = max(1, 128 // generator.arch.image_size)
    if teacher is None:
        save_grid(student, path, nrow=8, scale=scale)
    else:
        save_comparison([("teacher", teacher_images), (f"student d={generator.arch.depth}", student)], path, nrow=8, scale=scale)


# --------------------------------------------------------------------------- checkpoints


def run_metadata(m: Member, step: int, elapsed: float, teacher: Teacher | None) -> dict[str, Any]:
    cfg = m.cfg
    meta: dict[str, Any] = {
        "method": cfg.method,
        "arch": m.generator.arch.to_dict(),
        "parameters": count_parameters(m.generator),
        "step": step,
        "elapsed_s": elapsed,
        # The distribution the generator is judged against: its own training data, or, for a
        # student, its teacher's (an MSE student never sees data: "uses_data" says so).
        "dataset": data_description(cfg) or (teacher.meta.get("dataset") if teacher is not None else None),
        "uses_data": cfg.adversarial,
        "loss": cfg.loss if cfg.adversarial else "mse",
        "seed": cfg.seed,
        "ema_kimg": cfg.ema_kimg,
        "config": cfg.to_dict(),
    }
    if m.plateau is not None:
        meta["plateau"] = m.plateau.state()
    if m.status == "done":
        meta["stopped"] = m.stop_reason
    if m.eval_pending:
        meta["eval_pending"] = True
    if teacher is not None:
        meta["teacher"] = {"path": str(teacher.meta["path"]), "parameters": teacher.meta["parameters"], "arch": teacher.meta["arch"],
                           "dataset": teacher.meta.get("dataset")}
    return meta


def save_training_checkpoint(m: Member, rt: Runtime, step: int, elapsed: float, noise_rng: torch.Generator,
                             index_rng: torch.Generator, teacher: Teacher | None) -> None:
    noise_states, index_states = gather_rng(noise_rng, rt), gather_rng(index_rng, rt)  # collective: every rank
    if not rt.is_main:
        return
    tensors = ckpt.prefixed("generator", m.generator.state_dict())
    opt_tensors, g_groups = ckpt.optimizer_to_tensors(m.opt_g, "opt_g")
    tensors.update(opt_tensors)
    meta = run_metadata(m, step, elapsed, teacher)
    meta.update(opt_g_groups=g_groups, world_size=rt.world_size)
    if m.average is not None:
        tensors.update(ckpt.prefixed("ema", m.average.state_dict()))
    if m.critic is not None:
        tensors.update(ckpt.prefixed("critic", m.critic.state_dict()))
        opt_tensors, d_groups = ckpt.optimizer_to_tensors(m.opt_d, "opt_d")
        tensors.update(opt_tensors)
        meta.update(critic_arch=m.critic.arch.to_dict(), opt_d_groups=d_groups)
    for rank, (noise, index) in enumerate(zip(noise_states, index_states)):
        tensors[f"rng.noise.{rank}"], tensors[f"rng.index.{rank}"] = noise, index
    ckpt.save_checkpoint(m.last_path, tensors, meta)


def restore(m: Member, rt: Runtime) -> float:
    """Load a student's checkpoint into ``m``; returns the run's elapsed seconds. The shared random
    streams are set later (``start_step``), from the student the run continues with."""
    path = m.last_path
    tensors, meta = ckpt.read_checkpoint(path)
    if meta.get("arch") != m.generator.arch.to_dict():
        raise GankdError(f"{path}: its architecture {meta.get('arch')} is not the run's {m.generator.arch.to_dict()}")
    ckpt.load_state(m.generator, ckpt.unprefixed("generator", tensors), str(path))
    ckpt.optimizer_from_tensors(m.opt_g, tensors, meta["opt_g_groups"], "opt_g")
    if m.average is not None:
        m.average.load_parameters(ckpt.unprefixed("ema", tensors), str(path))
    if m.critic is not None:
        ckpt.load_state(m.critic, ckpt.unprefixed("critic", tensors), str(path))
        ckpt.optimizer_from_tensors(m.opt_d, tensors, meta["opt_d_groups"], "opt_d")
    m.step = int(meta["step"])
    m.eval_pending = bool(meta.get("eval_pending", False))
    if m.plateau is not None and "plateau" in meta:
        m.plateau.load(meta["plateau"])
    if str(meta.get("stopped", "")).startswith("plateau"):  # converged: done whatever --steps now says
        m.status, m.stop_reason = "done", meta["stopped"]
    if meta.get("world_size") == rt.world_size:
        m.saved_rng = (tensors[f"rng.noise.{rt.rank}"], tensors[f"rng.index.{rt.rank}"])
    else:  # a different process count cannot continue the same streams; fresh ones are derived
        m.saved_rng = m.cfg.seed * 1_000_003 + 2 * rt.rank + m.step * 7919
    return float(meta.get("elapsed_s", 0.0))


def export_generator(m: Member, step: int, elapsed: float, teacher: Teacher | None) -> None:
    """The shippable artefact: generator weights and metadata only (no critic, no optimiser); the
    weight average when the run keeps one."""
    ckpt.save_checkpoint(m.run_dir / "generator.safetensors", ckpt.prefixed("generator", m.delivered.state_dict()),
                         run_metadata(m, step, elapsed, teacher))


def finished(path: Path, steps: int) -> bool:
    """Whether ``path`` (a generator.safetensors) is the end of a run of at most ``steps`` steps."""
    try:
        meta = ckpt.read_checkpoint(path)[1]
    except GankdError:
        return False
    return meta.get("step") == steps or (bool(meta.get("stopped")) and meta.get("step", 0) <= steps)
