"""The one training loop: GANs from scratch, MSE distillation and joint distillation.

Every scheme is the same loop with different terms in the generator's objective:

    gan    L_G = adv(D(G(z)))                                    critic trained on real data
    mse    L_G = ||G_T(z) - G(z)||^2                             no critic, no data
    joint  L_G = (1 - alpha) * ||G_T(z) - G(z)||^2 + alpha * adv(D(G(z)))

with ``adv`` the generator side of the adversarial loss (WGAN-GP: -D(x); dcgan: the
non-saturating -log sigmoid D(x)) and z ~ N(0, I) drawn fresh every step. The critic takes
``critic_steps`` steps per generator step. The loop runs unchanged on CPU, one GPU, or several
processes under ``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on GPU).

Losses stay on the device as tensors and are read back once per ``log_every`` steps, so the
hot path has no host synchronisation.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gankd import checkpoint as ckpt
from gankd.config import RunConfig
from gankd.data import ImageData, load_dataset, to_unit_range
from gankd.errors import GankdError
from gankd.imaging import save_comparison, save_grid
from gankd.metrics.features import sample_latents
from gankd.models import Architecture, Critic, Generator, count_parameters

SAMPLE_LATENT_SEED = 2_718_281  # fixed latents for the periodic sample grids


class RunInterrupted(GankdError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first."""


class RunDiverged(GankdError):
    """A loss became NaN/Inf or the critic exploded; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GankdError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GankdError("--device cuda was asked for, but CUDA is not available on this machine")
    return device


@contextlib.contextmanager
def distributed_runtime(device_name: str) -> Iterator[Runtime]:
    """Single process, or one process of a ``torchrun`` group (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Runtime(resolve_device(device_name))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Runtime(device, dist.get_rank(), world_size)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks, so it can checkpoint before exiting."""
    received: dict[str, int] = {}
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        received["signal"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------- losses


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, loss: str, gp_lambda: float,
                rng: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critic's objective on one real and one fake batch, and its diagnostics."""
    n = real.shape[0]
    if loss == "wgan-gp":
        # One forward over [real; fake] (the critic has no BatchNorm, so rows are independent and
        # this equals two passes at half the launch overhead), and one over the interpolates alone:
        # the gradient penalty differentiates twice through its pass, and a pass shared with the
        # real and fake rows would carry them, as zeros, through both (about 1.8x the work).
        eps = torch.rand(n, 1, 1, 1, device=real.device, generator=rng, dtype=real.dtype)
        interp = (eps * real + (1 - eps) * fake).requires_grad_(True)
        scores = critic(torch.cat([real, fake]))
        d_real, d_fake = scores[:n], scores[n:]
        d_interp = critic(interp)
        (grad,) = torch.autograd.grad(d_interp.sum(), interp, create_graph=True)
        gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        value = d_fake.mean() - d_real.mean() + gp_lambda * gp
        stats = {"d_loss": value, "wasserstein": d_real.mean() - d_fake.mean(), "gp": gp}
    else:  # dcgan: separate passes so BatchNorm sees pure real and pure fake batches
        d_real, d_fake = critic(real), critic(fake)
        value = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        stats = {"d_loss": value}
    stats.update(d_real=d_real.mean(), d_fake=d_fake.mean())
    return value, {k: v.detach() for k, v in stats.items()}


def generator_adversarial_loss(scores: torch.Tensor, loss: str) -> torch.Tensor:
    return -scores.mean() if loss == "wgan-gp" else F.softplus(-scores).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str) -> torch.Tensor:
    """||G_T(z) - G_S(z)||^2: summed over pixels (the paper's squared L2 norm) or averaged."""
    squared = (student.float() - teacher.float()).pow(2)
    return squared.flatten(1).sum(1).mean() if reduction == "sum" else squared.mean()


# --------------------------------------------------------------------------- set-up


@dataclass
class Teacher:
    module: nn.Module
    meta: dict[str, Any]


def load_teacher(cfg: RunConfig, device: torch.device) -> Teacher:
    module, meta = ckpt.load_generator(cfg.teacher, device, latent_dim=cfg.latent_dim)
    module.requires_grad_(False)
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
    return arch, replace(arch, depth=cfg.critic_depth or cfg.depth)


# --------------------------------------------------------------------------- the loop


def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Run (or continue) one training run; returns its run folder."""
    with distributed_runtime(cfg.device) as runtime, stop_requests() as stop:
        return _train(cfg, resume, runtime, stop)


def _train(cfg: RunConfig, resume: bool, rt: Runtime, stop: dict[str, int]) -> Path:
    run_dir = Path(cfg.out)
    last_path = run_dir / "checkpoints" / "last.safetensors"
    resuming = resume and last_path.exists()
    if not resume and last_path.exists():
        raise GankdError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    device = rt.device

    teacher = load_teacher(cfg, device) if cfg.method != "gan" else None
    # Data at the run's image size but in its own channels (unless --channels asks otherwise), so
    # that a teacher and data of different channels are reported, not silently converted.
    image_size = resolve_shapes(cfg, teacher, None).image_size
    data = load_dataset(cfg.dataset, cfg.data, image_size, "train", cfg.channels) if cfg.adversarial else None
    cfg = resolve_shapes(cfg, teacher, data)
    arch, critic_arch = architectures(cfg)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    generator = Generator(arch).to(device)
    critic = Critic(critic_arch, batch_norm=cfg.loss == "dcgan").to(device) if cfg.adversarial else None
    # Channels-last is an option on CUDA; on the CPU it is always used: oneDNN's native layout,
    # it saves the layout conversions around every convolution (about 10% of a training step).
    memory_format = torch.channels_last if cfg.channels_last or device.type == "cpu" else torch.contiguous_format
    generator.to(memory_format=memory_format)
    if critic is not None:
        critic.to(memory_format=memory_format)
    lr, betas = cfg.resolved("lr"), cfg.resolved("betas")
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas) if critic is not None else None
    noise_rng = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + 2 * rt.rank + 1)
    index_rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 2 * rt.rank + 2)

    step, elapsed = 0, 0.0
    if resuming:
        step, elapsed = restore(last_path, cfg, rt, generator, critic, opt_g, opt_d, noise_rng, index_rng)
    elif rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")

    g_train: nn.Module = DistributedDataParallel(generator) if rt.world_size > 1 else generator
    d_train: nn.Module | None = critic
    if critic is not None and rt.world_size > 1:
        d_train = DistributedDataParallel(critic)
    if cfg.compile:
        g_train = torch.compile(g_train)
        # Not a WGAN-GP critic: its gradient penalty differentiates it twice (create_graph), which
        # compiled (AOTAutograd) graphs do not support.
        d_train = torch.compile(d_train) if d_train is not None and cfg.loss != "wgan-gp" else d_train

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    critic_steps = cfg.resolved("critic_steps")
    images = data.images.pin_memory() if data is not None and device.type == "cuda" else (data.images if data else None)
    to_dev = dict(device=device, non_blocking=True)

    def latents(n: int) -> torch.Tensor:
        return torch.randn(n, arch.latent_dim, device=device, generator=noise_rng)

    def real_batch() -> torch.Tensor:
        index = torch.randint(len(images), (cfg.batch_size,), generator=index_rng)
        return to_unit_range(images[index].to(**to_dev)).contiguous(memory_format=memory_format)

    logger = MetricsLog(run_dir / "metrics.csv", step, enabled=rt.is_main)
    sample_z = torch.randn(64, arch.latent_dim, generator=torch.Generator().manual_seed(SAMPLE_LATENT_SEED)).to(device)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.method} d={cfg.depth}", unit="step",
               disable=not rt.is_main or None, dynamic_ncols=True, mininterval=1.0)
    history: dict[str, list[torch.Tensor]] = {}
    interval_start, interval_step = time.perf_counter(), step

    while step < cfg.steps:
        stats: dict[str, torch.Tensor] = {}
        # ---- critic: real data against the current generator's images
        if d_train is not None:
            for _ in range(critic_steps):
                with torch.no_grad(), autocast:
                    fake = g_train(latents(cfg.batch_size))
                with autocast:
                    loss_d, stats = critic_loss(d_train, real_batch(), fake.float(), cfg.loss, cfg.gp_lambda, noise_rng)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
        # ---- generator / student
        z = latents(cfg.batch_size)
        with autocast:
            fake = g_train(z)
            loss_g = torch.zeros((), device=device)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher.module(z)
                mse = distillation_loss(fake, target, cfg.mse_reduction)
                loss_g = loss_g + (1 - cfg.alpha) * mse
                stats["mse_pixel"] = (fake.detach().float() - target.float()).pow(2).mean()
            if critic is not None:
                adv = generator_adversarial_loss(critic(fake), cfg.loss)
                loss_g = loss_g + (cfg.alpha if teacher is not None else 1.0) * adv
                stats["g_adv"] = adv.detach()
        opt_g.zero_grad(set_to_none=True)
        # Gradients for the generator only: the critic's weights get none (and, under DDP,
        # trigger no all-reduce) although its forward pass is part of the graph.
        loss_g.backward(inputs=list(generator.parameters()))
        opt_g.step()
        stats["g_loss"] = loss_g.detach()
        step += 1
        bar.update(1)
        for name, value in stats.items():
            history.setdefault(name, []).append(value.float())

        interrupted = stop_flag(stop, rt)
        at_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps or interrupted
        if step % cfg.log_every == 0 or at_checkpoint:
            now = time.perf_counter()
            means = check_and_summarise(history, step, cfg.divergence_threshold, last_path)
            elapsed += now - interval_start
            rate = (step - interval_step) * cfg.batch_size * rt.world_size / max(now - interval_start, 1e-9)
            logger.write(step, elapsed, rate, means)
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k in ("d_loss", "g_loss", "mse_pixel")})
            history, interval_start, interval_step = {}, now, step
        if rt.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
            write_samples(run_dir / "samples" / f"step_{step:07d}.png", generator, teacher, sample_z)
        if at_checkpoint:
            save_training_checkpoint(last_path, cfg, rt, step, elapsed, generator, critic, opt_g, opt_d, noise_rng, index_rng, teacher)
        if interrupted:
            bar.close()
            name = signal.Signals(interrupted).name
            raise RunInterrupted(f"stopped by {name} at step {step}; checkpoint saved to {last_path}; continue with --resume")
    bar.close()
    if rt.is_main:
        export_generator(run_dir / "generator.safetensors", cfg, step, elapsed, generator, teacher)
        write_samples(run_dir / "samples.png", generator, teacher, sample_z)
    return run_dir


def stop_flag(stop: dict[str, int], rt: Runtime) -> int:
    """The signal number if any process of the group was asked to stop (all agree), else 0."""
    local = stop.get("signal", 0)
    if rt.world_size == 1:
        return local
    flag = torch.tensor([local], device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


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
    """metrics.csv: one row per log interval. On resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, start_step: int, enabled: bool):
        self.path, self.enabled, self.columns = path, enabled, None
        if enabled and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
            self.columns = list(rows[0]) if rows else None
            self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        with self.path.open("w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def write(self, step: int, elapsed: float, rate: float, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "elapsed_s": f"{elapsed:.2f}", "images_per_s": f"{rate:.1f}", **{k: f"{v:.6g}" for k, v in values.items()}}
        if self.columns is None:
            self.columns = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)


@torch.no_grad()
def write_samples(path: Path, generator: Generator, teacher: Teacher | None, z: torch.Tensor) -> None:
    was_training = generator.training
    generator.eval()
    student = generator(z)
    generator.train(was_training)
    scale = max(1, 128 // generator.arch.image_size)
    if teacher is None:
        save_grid(student, path, nrow=8, scale=scale)
    else:
        save_comparison([("teacher", teacher.module(z)), (f"student d={generator.arch.depth}", student)], path, nrow=8, scale=scale)


# --------------------------------------------------------------------------- checkpoints


def run_metadata(cfg: RunConfig, step: int, elapsed: float, generator: Generator, teacher: Teacher | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "method": cfg.method,
        "arch": generator.arch.to_dict(),
        "parameters": count_parameters(generator),
        "step": step,
        "elapsed_s": elapsed,
        # The distribution the generator is judged against: its own training data, or, for a
        # student, its teacher's (an MSE student never sees data: "uses_data" says so).
        "dataset": data_description(cfg) or (teacher.meta.get("dataset") if teacher is not None else None),
        "uses_data": cfg.adversarial,
        "loss": cfg.loss if cfg.adversarial else "mse",
        "seed": cfg.seed,
        "config": cfg.to_dict(),
    }
    if teacher is not None:
        meta["teacher"] = {"path": str(teacher.meta["path"]), "parameters": teacher.meta["parameters"], "arch": teacher.meta["arch"],
                           "dataset": teacher.meta.get("dataset")}
    return meta


def gather_rng(rng: torch.Generator, rt: Runtime) -> list[torch.Tensor]:
    state = rng.get_state()
    if rt.world_size == 1:
        return [state]
    comm_device = rt.device if rt.device.type == "cuda" else torch.device("cpu")
    parts = [torch.empty_like(state, device=comm_device) for _ in range(rt.world_size)]
    dist.all_gather(parts, state.to(comm_device))
    return [p.cpu() for p in parts]


def save_training_checkpoint(path: Path, cfg: RunConfig, rt: Runtime, step: int, elapsed: float, generator: Generator,
                             critic: Critic | None, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer | None,
                             noise_rng: torch.Generator, index_rng: torch.Generator, teacher: Teacher | None) -> None:
    noise_states, index_states = gather_rng(noise_rng, rt), gather_rng(index_rng, rt)  # collective: every rank
    if not rt.is_main:
        return
    tensors = ckpt.prefixed("generator", generator.state_dict())
    opt_tensors, g_groups = ckpt.optimizer_to_tensors(opt_g, "opt_g")
    tensors.update(opt_tensors)
    meta = run_metadata(cfg, step, elapsed, generator, teacher)
    meta.update(opt_g_groups=g_groups, world_size=rt.world_size)
    if critic is not None:
        tensors.update(ckpt.prefixed("critic", critic.state_dict()))
        opt_tensors, d_groups = ckpt.optimizer_to_tensors(opt_d, "opt_d")
        tensors.update(opt_tensors)
        meta.update(critic_arch=critic.arch.to_dict(), opt_d_groups=d_groups)
    for rank, (noise, index) in enumerate(zip(noise_states, index_states)):
        tensors[f"rng.noise.{rank}"], tensors[f"rng.index.{rank}"] = noise, index
    ckpt.save_checkpoint(path, tensors, meta)


def restore(path: Path, cfg: RunConfig, rt: Runtime, generator: Generator, critic: Critic | None,
            opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer | None,
            noise_rng: torch.Generator, index_rng: torch.Generator) -> tuple[int, float]:
    tensors, meta = ckpt.read_checkpoint(path)
    if meta.get("arch") != generator.arch.to_dict():
        raise GankdError(f"{path}: its architecture {meta.get('arch')} is not the run's {generator.arch.to_dict()}")
    ckpt.load_state(generator, ckpt.unprefixed("generator", tensors), str(path))
    ckpt.optimizer_from_tensors(opt_g, tensors, meta["opt_g_groups"], "opt_g")
    if critic is not None:
        ckpt.load_state(critic, ckpt.unprefixed("critic", tensors), str(path))
        ckpt.optimizer_from_tensors(opt_d, tensors, meta["opt_d_groups"], "opt_d")
    if meta.get("world_size") == rt.world_size:
        noise_rng.set_state(tensors[f"rng.noise.{rt.rank}"])
        index_rng.set_state(tensors[f"rng.index.{rt.rank}"])
    else:  # a different process count cannot continue the same streams; derive fresh ones
        noise_rng.manual_seed(cfg.seed * 1_000_003 + 2 * rt.rank + 1 + meta["step"] * 7919)
        index_rng.manual_seed(cfg.seed * 1_000_003 + 2 * rt.rank + 2 + meta["step"] * 7919)
    return int(meta["step"]), float(meta.get("elapsed_s", 0.0))


def export_generator(path: Path, cfg: RunConfig, step: int, elapsed: float, generator: Generator, teacher: Teacher | None) -> None:
    """The shippable artefact: generator weights and metadata only (no critic, no optimiser)."""
    ckpt.save_checkpoint(path, ckpt.prefixed("generator", generator.state_dict()), run_metadata(cfg, step, elapsed, generator, teacher))


def images_from(generator: nn.Module, n: int, latent_dim: int, seed: int, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """n images from seeded latents (same seed, same images), on the CPU."""
    z = sample_latents(n, latent_dim, seed)
    with torch.no_grad():
        return torch.cat([generator(z[i : i + batch_size].to(device)).float().cpu() for i in range(0, n, batch_size)])

