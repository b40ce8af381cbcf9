"""The bookkeeping of every generator a run trains: its networks and optimisers, its streams of
random numbers, its log, its stopping rule, its checkpoints and the files it delivers.

A run trains one generator (a teacher, a regular GAN) or several students of one teacher at once;
each is a :class:`Member` with an ordinary run folder. :mod:`gankd.training` has the loop that
steps them; everything about one member between steps lives here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gankd import checkpoint as ckpt
from gankd.config import RunConfig
from gankd.convergence import Plateau
from gankd.ema import WeightAverage
from gankd.errors import GankdError, RunDiverged
from gankd.imaging import save_comparison, save_grid
from gankd.models import Architecture, BlockTap, Critic, Generator, count_parameters
from gankd.runtime import Runtime, gather_rng

SAMPLE_LATENT_SEED = 2_718_281  # fixed latents for the periodic sample grids


# --------------------------------------------------------------------------- the teacher and the random streams


@dataclass
class Teacher:
    module: nn.Module
    meta: dict[str, Any]


def load_teacher(cfg: RunConfig, device: torch.device) -> Teacher:
    module, meta = ckpt.load_generator(cfg.teacher, device, latent_dim=cfg.latent_dim)
    for p in module.parameters():  # ScriptModules have no requires_grad_()
        p.requires_grad_(False)
    return Teacher(module.eval(), meta)




class Streams:
    """The random streams a run's members share: ``noise`` (latents, WGAN-GP interpolation weights)
    on the device, ``index`` (which real images) on the CPU. Seeded from the run's seed and the
    process's rank, so ranks draw different numbers and a run draws the same ones every time."""

    def __init__(self, device: torch.device, seed: int, rank: int):
        self.noise, self.index = torch.Generator(device), torch.Generator()
        self.reseed(stream_seed(seed, rank))

    def reseed(self, base: int) -> None:
        self.noise.manual_seed(base + 1)
        self.index.manual_seed(base + 2)

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.noise.get_state(), self.index.get_state()

    def set_state(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.noise.set_state(state[0])
        self.index.set_state(state[1])


def stream_seed(seed: int, rank: int, step: int = 0) -> int:
    """The base of a process's streams (``+1`` noise, ``+2`` index); ``step`` > 0 derives fresh
    streams for a run resumed on another number of processes, which cannot continue the old ones."""
    return seed * 1_000_003 + 2 * rank + step * 7919


# --------------------------------------------------------------------------- one model of a run


def data_description(cfg: RunConfig) -> dict[str, Any] | None:
    if not cfg.adversarial:
        return None
    return {"kind": cfg.dataset, "root": cfg.data, "image_size": cfg.image_size, "channels": cfg.channels, "split": "train"}


def architectures(cfg: RunConfig) -> tuple[Architecture, Architecture]:
    """The generator's and the critic's; a critic started by --critic-init has the file's depth
    unless --critic-depth says otherwise (then the two must agree)."""
    arch = Architecture(cfg.depth, cfg.image_size, cfg.channels, cfg.latent_dim)
    if cfg.critic_depth is None and cfg.critic_init is not None:
        return arch, replace(arch, depth=ckpt.load_critic(cfg.critic_init, cfg.image_size, cfg.channels)[0].arch.depth)
    return arch, replace(arch, depth=cfg.resolved_critic_depth)


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
    projections: nn.ModuleList | None = None  # the feature term's 1x1 convolutions to the teacher's block widths
    tap: BlockTap | None = None  # the generator's block activations, for the feature term

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


def build_member(cfg: RunConfig, rt: Runtime, memory_format: torch.memory_format, higher_is_better: bool | None,
                 teacher_widths: list[int] | None = None) -> Member:
    """A member's networks, optimisers, log and stopping rule, initialised from ``cfg.seed`` alone
    (students trained together start as they would alone). ``teacher_widths``: the teacher's block
    widths, when the feature term needs projections to them."""
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
    if critic is not None and cfg.critic_init:
        load_critic_init(critic, cfg)
    frozen_critic = critic is not None and cfg.critic_steps == 0
    if frozen_critic:
        freeze(critic)
    projections = (nn.ModuleList([nn.Conv2d(s, t, 1) for s, t in zip(generator.block_widths, teacher_widths)]).to(device)
                   if teacher_widths is not None else None)
    trained = generator.parameters() if projections is None else [{"params": generator.parameters()}, {"params": projections.parameters()}]
    opt_g = torch.optim.Adam(trained, lr=cfg.resolved("lr"), betas=cfg.resolved("betas"))
    opt_d = (torch.optim.Adam(critic.parameters(), lr=cfg.resolved("lr", "critic"), betas=cfg.resolved("betas", "critic"))
             if critic is not None else None)
    g_train: nn.Module = DistributedDataParallel(generator) if rt.world_size > 1 else generator
    d_train: nn.Module | None = DistributedDataParallel(critic) if critic is not None and not frozen_critic and rt.world_size > 1 else critic
    if cfg.compile:
        # inductor's layout optimisation is off on CUDA in the default memory format, per compiled
        # module (docs/incidents.md, "compile and channels-last").
        options = {"layout_optimization": False} if device.type == "cuda" and memory_format == torch.contiguous_format else None
        g_train = torch.compile(g_train, options=options)
        # Not a WGAN-GP critic: its gradient penalty differentiates it twice (create_graph), which
        # compiled (AOTAutograd) graphs do not support.
        d_train = torch.compile(d_train, options=options) if d_train is not None and cfg.loss != "wgan-gp" else d_train
    plateau = Plateau(cfg.patience, cfg.min_delta, higher_is_better) if cfg.patience and higher_is_better is not None else None
    average = WeightAverage(generator, cfg.ema_kimg, cfg.batch_size) if cfg.ema_kimg else None
    return Member(cfg, generator, critic, opt_g, opt_d, g_train, d_train, MetricsLog(Path(cfg.out) / "metrics.csv", enabled=rt.is_main),
                  plateau, average=average, projections=projections, tap=BlockTap(generator) if projections is not None else None)


def initialise(generator: Generator, path: str) -> None:
    """Copy the weights and BatchNorm statistics of the gankd generator in ``path`` (same architecture)."""
    tensors, meta = ckpt.read_checkpoint(path)
    if meta.get("arch") != generator.arch.to_dict():
        raise GankdError(f"{path}: --init needs a generator of the run's architecture {generator.arch.to_dict()}, this one is {meta.get('arch')}")
    ckpt.load_state(generator, ckpt.unprefixed("generator", tensors), path)


def load_critic_init(critic: Critic, cfg: RunConfig) -> None:
    """Start ``critic`` from ``cfg.critic_init`` (e.g. the teacher's critic); refused in one line
    when the file's critic is not the one this run builds."""
    saved, meta = ckpt.load_critic(cfg.critic_init, cfg.image_size, cfg.channels)
    if saved.arch != critic.arch or saved.batch_norm != critic.batch_norm:
        raise GankdError(f"{cfg.critic_init}: a critic of depth {saved.arch.depth} ({'with' if saved.batch_norm else 'without'} BatchNorm, "
                         f"{meta.get('loss')} loss) cannot start this run's, of depth {critic.arch.depth} with the {cfg.loss} loss; "
                         f"pass --critic-depth {saved.arch.depth} --loss {meta.get('loss')}")
    critic.load_state_dict(saved.state_dict())


def freeze(critic: Critic) -> None:
    """Keep a critic as it was loaded (``--critic-steps 0``): no gradient reaches its weights, and its
    BatchNorm layers still normalise each batch by its own statistics, as in training, without
    moving the running statistics saved with it (momentum 0)."""
    critic.requires_grad_(False)
    for module in critic.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0


def record(history: dict[str, list[torch.Tensor]], stats: dict[str, torch.Tensor]) -> None:
    for name, value in stats.items():
        history.setdefault(name, []).append(value.detach().float())


def start_step(members: list[Member], streams: Streams) -> int:
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
        streams.reseed(first.saved_rng)
    elif first.saved_rng is not None:
        streams.set_state(first.saved_rng)
    return step


def join(m: Member, streams: Streams) -> None:
    """A student that was ahead rejoins: the shared draws must now be where its checkpoint left them."""
    if isinstance(m.saved_rng, tuple) and not all(torch.equal(a, b) for a, b in zip(m.saved_rng, streams.state())):
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


def save_training_checkpoint(m: Member, rt: Runtime, step: int, elapsed: float, streams: Streams, teacher: Teacher | None) -> None:
    noise_states, index_states = gather_rng(streams.noise, rt), gather_rng(streams.index, rt)  # collective: every rank
    if not rt.is_main:
        return
    tensors = ckpt.prefixed("generator", m.generator.state_dict())
    opt_tensors, g_groups = ckpt.optimizer_to_tensors(m.opt_g, "opt_g")
    tensors.update(opt_tensors)
    meta = run_metadata(m, step, elapsed, teacher)
    meta.update(opt_g_groups=g_groups, world_size=rt.world_size)
    if m.average is not None:
        tensors.update(ckpt.prefixed("ema", m.average.state_dict()))
    if m.projections is not None:
        tensors.update(ckpt.prefixed("projection", m.projections.state_dict()))
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
    if m.projections is not None:
        ckpt.load_state(m.projections, ckpt.unprefixed("projection", tensors), str(path))
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
        m.saved_rng = stream_seed(m.cfg.seed, rt.rank, m.step)
    return float(meta.get("elapsed_s", 0.0))


def write_generator(m: Member, step: int, elapsed: float, teacher: Teacher | None) -> None:
    """The shippable artefact: generator weights and metadata only (no critic, no optimiser); the
    weight average when the run keeps one."""
    ckpt.save_checkpoint(m.run_dir / "generator.safetensors", ckpt.prefixed("generator", m.delivered.state_dict()),
                         run_metadata(m, step, elapsed, teacher))
