"""The one training loop: GANs from scratch, MSE distillation and joint distillation.

Every scheme is the same loop with different terms in the generator's objective
(:mod:`gankd.losses` has them all):

    gan    L_G = adv(D(G(z)))                        critic trained on real data
    mse    L_G = KD(G(z), G_T(z))                    no critic, no data; KD = pixel MSE by default
    joint  L_G = (1 - alpha) KD + alpha w adv(D(G(z)))

z ~ N(0, I) is drawn fresh every step; the critic takes ``critic_steps`` steps per generator step.

One run can train several students of one teacher at once (``train_many``: the same options but
the depth): every step draws one latent batch (and one real batch), runs the teacher once, and
updates each student with its own optimiser (and critic). All random draws are shared, so each
student is bit-identical to the one a run of its own would give, and each keeps an ordinary run
folder (config.json, metrics.csv, checkpoints, generator.safetensors) that can be resumed,
evaluated or shipped alone. A student that diverges or converges stops alone. What each student
carries between steps (networks, optimisers, log, stopping rule, checkpoints) is in
:mod:`gankd.members`; this module is the set-up and the loop.

The loop runs unchanged on CPU, one GPU, or several processes under ``torchrun``
(DistributedDataParallel; gloo on CPU, NCCL on GPU). Losses stay on the device and are read back
once per ``log_every`` steps, so the hot path has no host synchronisation.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch

from gankd import checkpoint as ckpt
from gankd.config import DEFAULT_IMAGE_SIZE, DEFAULT_LATENT_DIM, RunConfig
from gankd.convergence import Monitor, build_monitor, resolve_monitor
from gankd.data import ImageData, load_dataset, natural_image_size, to_unit_range
from gankd.errors import GankdError, RunDiverged, RunInterrupted
from gankd.losses import GeneratorObjective, TermInputs, critic_loss
from gankd.members import (SAMPLE_LATENT_SEED, Member, Streams, Teacher, build_member, check_and_summarise, join, load_teacher, record,
                           restore, run_metadata, save_training_checkpoint, start_step, write_generator, write_samples)
from gankd.models import BlockTap, Generator
from gankd.progress import progress
from gankd.runtime import Runtime, check_precision, distributed_runtime, owned_run_folders, stop_flag, stop_requests
from gankd.schedule import lr_factor, set_learning_rate

PER_MEMBER = ("out", "depth", "critic_depth", "init", "critic_init")  # what may differ between the students of one run
FILLED_AT_START = ("dataset", "data", "image_size", "channels", "latent_dim")  # None: from the teacher or data (resolve_data, resolve_shapes)


# --------------------------------------------------------------------------- set-up


def resolve_data(cfg: RunConfig, teacher: Teacher | None) -> RunConfig:
    """The data a run reads and records: its own, else its teacher's (a joint student of a
    folder-trained teacher trains its critic on that folder, and its config.json says so), else MNIST."""
    if cfg.dataset is not None:
        return cfg
    source = (teacher.meta.get("dataset") or {}) if teacher is not None else {}
    kind = source.get("kind") or "mnist"
    return replace(cfg, dataset=kind, data=cfg.data if cfg.data is not None or kind != source.get("kind") else source.get("root"))


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
        updates = {"image_size": cfg.image_size or DEFAULT_IMAGE_SIZE, "latent_dim": cfg.latent_dim or DEFAULT_LATENT_DIM}
    if data is not None:
        channels = updates.get("channels", cfg.channels)
        if channels is not None and data.channels != channels:
            raise GankdError(f"the data ({data.name}) has {data.channels} channel(s) but the teacher makes {channels}")
        if data.image_size != updates["image_size"]:
            raise GankdError(f"the data ({data.name}) is {data.image_size}x{data.image_size} but the teacher makes {updates['image_size']}x{updates['image_size']}")
        updates["channels"] = data.channels
    updates.setdefault("channels", cfg.channels or 1)
    return replace(cfg, **updates)


def objective(cfg: RunConfig) -> GeneratorObjective:
    return GeneratorObjective(adversarial=cfg.loss if cfg.adversarial else None, terms=cfg.active_terms,
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


@dataclass
class Run:
    """What the members of one run share: the teacher, the data, the monitor, the random streams,
    the objective and the fixed sample latents; and the clock of the current log interval."""

    rt: Runtime
    base: RunConfig
    members: list[Member]
    teacher: Teacher | None
    data: ImageData | None
    monitor: Monitor | None
    streams: Streams
    objective: GeneratorObjective
    memory_format: torch.memory_format
    teacher_tap: BlockTap | None = None  # the teacher's block activations (the feature term)
    critic_features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None  # the teacher's critic (perceptual term)
    sample_z: torch.Tensor | None = None
    sample_teacher: torch.Tensor | None = None
    elapsed: float = 0.0  # run seconds at the start of the current log interval
    interval_start: float = field(default_factory=time.perf_counter)
    interval_step: int = 0

    def latents(self) -> torch.Tensor:
        return torch.randn(self.base.batch_size, self.base.latent_dim, device=self.rt.device, generator=self.streams.noise)

    def real_batch(self) -> torch.Tensor:
        images = self.data.images
        index = torch.randint(len(images), (self.base.batch_size,), generator=self.streams.index)
        return to_unit_range(images[index].to(device=self.rt.device, non_blocking=True)).contiguous(memory_format=self.memory_format)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.rt.device.type, dtype=torch.bfloat16, enabled=self.base.precision == "bf16")


def set_up(cfgs: list[RunConfig], resume: bool, rt: Runtime) -> Run:
    """Teacher, data, monitor and members; each member resumed from its checkpoint or started
    (config.json written)."""
    device = rt.device
    for cfg in cfgs:
        if not resume and (Path(cfg.out) / "checkpoints" / "last.safetensors").exists():
            raise GankdError(f"{cfg.out} already holds a run; pass --resume to continue it, or choose another --out")
    base = cfgs[0]
    check_precision(base.precision, device)
    teacher = load_teacher(base, device) if base.method != "gan" else None
    cfgs = [resolve_data(cfg, teacher) for cfg in cfgs]
    base = cfgs[0]
    if teacher is None and base.image_size is None:  # a GAN from scratch: the data's own size, said (natural_image_size)
        size = natural_image_size(base.dataset, base.data)
        cfgs = [replace(cfg, image_size=size) for cfg in cfgs]
        base = cfgs[0]
    # Data at the run's image size but in its own channels (unless --channels asks otherwise), so
    # that a teacher and data of different channels are reported, not silently converted.
    image_size = resolve_shapes(base, teacher, None).image_size
    data = load_dataset(base.dataset, base.data, image_size, "train", base.channels) if base.adversarial else None
    cfgs = [resolve_shapes(cfg, teacher, data) for cfg in cfgs]
    check_same_run(cfgs)
    base = cfgs[0]
    monitor_name = resolve_monitor(base.monitor, base.method, base.dataset, base.channels)
    monitor = (build_monitor(monitor_name, base.latent_dim, device, teacher.module if teacher else None, data)
               if base.patience or base.monitor != "auto" else None)
    goal = objective(base)
    teacher_tap = teacher_blocks(teacher, base) if "blocks" in goal.needs else None
    if data is not None and device.type == "cuda":
        data = replace(data, images=data.images.pin_memory())
    # Channels-last is an option on CUDA; on the CPU it is always used: oneDNN's native layout,
    # it saves the layout conversions around every convolution (about 10% of a training step).
    memory_format = torch.channels_last if base.channels_last or device.type == "cpu" else torch.contiguous_format
    widths = teacher.module.block_widths if teacher_tap is not None else None
    members = [build_member(cfg, rt, memory_format, monitor.higher_is_better if monitor else None, widths) for cfg in cfgs]
    run = Run(rt, base, members, teacher, data, monitor, Streams(device, base.seed, rt.rank), goal, memory_format, teacher_tap,
              frozen_critic_features(base, device, memory_format) if "critic" in goal.needs else None)
    for m in members:
        if resume and m.last_path.exists():
            run.elapsed = max(run.elapsed, restore(m, rt))
        elif rt.is_main:
            m.run_dir.mkdir(parents=True, exist_ok=True)
            m.cfg.save(m.run_dir / "config.json")
    for m in members:  # resumed students that had already run all their steps
        if m.status == "active" and m.step >= m.cfg.steps:
            m.status = "done"
    run.sample_z = torch.randn(64, base.latent_dim, generator=torch.Generator().manual_seed(SAMPLE_LATENT_SEED)).to(device)
    with torch.no_grad():
        run.sample_teacher = teacher.module(run.sample_z).float() if teacher is not None else None
    if teacher_tap is not None:
        teacher_tap.take()
    return run


def teacher_blocks(teacher: Teacher, cfg: RunConfig) -> BlockTap:
    """A tap on the teacher's block activations; refused for teachers that give images only."""
    if not isinstance(teacher.module, Generator):
        raise GankdError(f"{cfg.teacher}: the feature term needs the teacher's block activations, which only a gankd checkpoint "
                         "gives (ONNX and TorchScript teachers give images); drop --feature-weight")
    return BlockTap(teacher.module)


def frozen_critic_features(cfg: RunConfig, device: torch.device, memory_format: torch.memory_format) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The teacher's critic (``--teacher-critic``), frozen in eval mode: the perceptual term's network."""
    critic, _ = ckpt.load_critic(cfg.teacher_critic, cfg.image_size, cfg.channels)
    critic = critic.to(device, memory_format=memory_format).eval().requires_grad_(False)
    return critic.features


def catch_up(run: Run) -> None:
    """Before training goes on: the generator file of a finished member a crash kept from being
    written, and the evaluations a stop deferred (see ``evaluate``)."""
    for m in run.members:
        if m.status == "done" and run.rt.is_main and not (m.run_dir / "generator.safetensors").exists():
            write_generator(m, m.step, run.elapsed, run.teacher)
    for m in run.members:
        if m.eval_pending and m.status != "done":
            m.eval_pending = False
            if run.monitor is not None:
                value = run.monitor(m.delivered)
                m.logger.fill(m.step, value)
                judge(run, m, value, m.step, run.elapsed)


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
    run = set_up(cfgs, resume, rt)
    members = run.members
    step = start_step(members, run.streams)
    for m in members:
        m.logger.start(m.step, run.monitor.name if run.monitor else None)
    catch_up(run)
    bar = progress(max(m.cfg.steps for m in members), f"{run.base.method} {', '.join(m.label for m in members)}", "step",
                   initial=step, enabled=rt.is_main)
    run.interval_start, run.interval_step = time.perf_counter(), step
    while any(m.status in ("active", "waiting") for m in members):
        active = [m for m in members if m.status == "active"]
        schedule_learning_rates(run, active, step)
        critic_stats = train_critics(run, active)
        train_generators(run, active, step, critic_stats)
        step += 1
        bar.update(1)
        for m in members:
            if m.status == "waiting" and m.step == step:
                join(m, run.streams)
        interrupted, values, summaries = evaluate(run, active, step, stop)
        log_sample_stop(run, active, step, values, summaries, interrupted, bar if len(members) == 1 else None)
        if interrupted:
            bar.close()
            saved = ", ".join(str(m.last_path) for m in members if m.status == "active")
            raise RunInterrupted(f"stopped by {signal.Signals(interrupted).name} at step {step}; checkpoint saved to "
                                 f"{saved or 'the run folders'}; continue with --resume")
    bar.close()
    diverged = [m for m in members if m.status == "diverged"]
    if diverged:
        raise RunDiverged("; ".join(f"{m.run_dir}: {m.error}" if len(members) > 1 else m.error for m in diverged))
    return [m.run_dir for m in members]


def schedule_learning_rates(run: Run, active: list[Member], step: int) -> None:
    """Every optimiser's rate for this step: its base rate times the schedule's factor."""
    base = run.base
    if base.lr_schedule == "constant":
        return
    factor = lr_factor(base.lr_schedule, step, base.steps)
    for m in active:
        set_learning_rate(m.opt_g, base.resolved("lr") * factor)
        if m.opt_d is not None:
            set_learning_rate(m.opt_d, base.resolved("lr", "critic") * factor)


def train_critics(run: Run, active: list[Member]) -> dict[int, dict[str, torch.Tensor]]:
    """The critics' steps: real data against each generator's current images (shared draws);
    returns each member's last critic statistics."""
    base = run.base
    stats: dict[int, dict[str, torch.Tensor]] = {id(m): {} for m in active}
    for _ in range(base.resolved("critic_steps", "critic") if base.adversarial else 0):
        z_critic = run.latents()
        real = run.real_batch()
        eps = torch.rand(base.batch_size, device=run.rt.device, generator=run.streams.noise) if base.loss == "wgan-gp" else None
        for m in active:
            with torch.no_grad(), run.autocast():
                fake = m.g_train(z_critic)
            with run.autocast():
                loss_d, stats[id(m)] = critic_loss(m.d_train, real, fake.float(), base.loss, base.gp_lambda, eps, base.resolved_r1_gamma)
            m.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            m.opt_d.step()
    return stats


def train_generators(run: Run, active: list[Member], step: int, critic_stats: dict[int, dict[str, torch.Tensor]]) -> None:
    """One step of every generator on one latent batch (and one teacher pass)."""
    z = run.latents()
    target, target_blocks = None, []
    if run.teacher is not None and active:
        with torch.no_grad(), run.autocast():
            target = run.teacher.module(z)
        if run.teacher_tap is not None:
            target_blocks = [b.float() for b in run.teacher_tap.take()]
    for m in active:
        with run.autocast():
            fake = m.g_train(z)
            inputs = TermInputs(fake, target, m.tap.take() if m.tap else [], target_blocks, m.projections, run.critic_features)
            grad, block_loss, stats = run.objective.images_gradient(fake, target, m.critic, inputs)
        m.opt_g.zero_grad(set_to_none=True)
        # Back-propagate the objective's gradient at the images through the generator alone (the
        # critic's weights get none and, under DDP, trigger no all-reduce), with the block terms' loss.
        if block_loss is None:
            fake.backward(grad.to(fake.dtype))
        else:
            torch.autograd.backward([fake, block_loss], [grad.to(fake.dtype), None])
        m.opt_g.step()
        if m.average is not None:
            m.average.update(m.generator, step, run.base.batch_size * run.rt.world_size)
        record(m.history, {**critic_stats[id(m)], **stats})
        m.step = step + 1


def evaluate(run: Run, active: list[Member], step: int, stop: dict[str, int]
             ) -> tuple[int, dict[int, float], dict[int, dict[str, float] | None]]:
    """The monitor's evaluations due at ``step``; returns the stop signal asked for (0: none), the
    values and the interval summaries made first. One evaluation takes a while (the FID monitor:
    ~50 s on a CPU core), so a stop asked before or during them leaves the rest to the resumed run:
    a stop is answered after one evaluation at most, and the resumed run is the run that was not
    stopped."""
    interrupted = stop_flag(stop, run.rt)
    summaries: dict[int, dict[str, float] | None] = {}
    values: dict[int, float] = {}
    for m in active:
        if run.monitor is None or step % m.cfg.eval_every:
            continue
        summaries[id(m)] = summarise(m, step)  # first: a generator that went bad is not evaluated
        if m.status != "active":
            continue
        at_end = step >= m.cfg.steps
        interrupted = interrupted or (0 if at_end else stop_flag(stop, run.rt))  # collective: all ranks agree
        if interrupted and not at_end:
            m.eval_pending = True
        else:
            values[id(m)] = run.monitor(m.delivered)
    return interrupted, values, summaries


def log_sample_stop(run: Run, active: list[Member], step: int, values: dict[int, float], summaries: dict[int, dict[str, float] | None],
                    interrupted: int, bar: Any) -> None:
    """Each member's log row, sample grid, stopping rule and checkpoint due at ``step``."""
    now = time.perf_counter()
    run_elapsed = run.elapsed + now - run.interval_start
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
            rate = (step - run.interval_step) * run.base.batch_size * run.rt.world_size / max(now - run.interval_start, 1e-9)
            m.logger.write(step, run_elapsed, rate, means, value)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k in ("d_loss", "g_loss", "mse_pixel")})
        if run.rt.is_main and step % m.cfg.sample_every == 0:
            write_samples(m.run_dir / "samples" / f"step_{step:07d}.png", m.delivered, run.teacher, run.sample_z, run.sample_teacher)
        if value is not None:
            judge(run, m, value, step, run_elapsed)
        if m.status == "done":  # the plateau ended it
            continue
        if at_end:
            finish(run, m, "steps", step, run_elapsed)
        elif at_checkpoint:
            save_training_checkpoint(m, run.rt, step, run_elapsed, run.streams, run.teacher)
    if step % run.base.log_every == 0 or interrupted:
        run.elapsed, run.interval_start, run.interval_step = run_elapsed, now, step


# --------------------------------------------------------------------------- the end of a member


def finish(run: Run, m: Member, reason: str, at: int, seconds: float) -> None:
    """The end of one member: its generator (and critic) files first, then the checkpoint that says
    it is done (a crash in between leaves it resumable from its previous checkpoint)."""
    m.status, m.stop_reason = "done", reason
    if run.rt.is_main:
        write_generator(m, at, seconds, run.teacher)
        if m.critic is not None:
            ckpt.save_critic(m.run_dir / "critic.safetensors", m.critic, run_metadata(m, at, seconds, run.teacher))
        write_samples(m.run_dir / "samples.png", m.delivered, run.teacher, run.sample_z, run.sample_teacher)
    save_training_checkpoint(m, run.rt, at, seconds, run.streams, run.teacher)


def judge(run: Run, m: Member, value: float, at: int, seconds: float) -> None:
    """Feed an evaluation to the member's stopping rule; a plateau finishes it."""
    if m.plateau is not None and m.plateau.update(at, value):
        finish(run, m, f"plateau: {run.monitor.name} gained less than {m.cfg.min_delta:g} (relative) in {m.cfg.patience} evaluations",
               at, seconds)


def summarise(m: Member, at: int) -> dict[str, float] | None:
    """The interval's means (its history restarts); None, and the member stops, if it went bad."""
    try:
        means = check_and_summarise(m.history, at, m.cfg.divergence_threshold, m.last_path)
    except RunDiverged as exc:
        m.status, m.error = "diverged", str(exc)
        return None
    m.history = {}
    return means
