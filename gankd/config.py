"""Run configuration: plain data with every default in one place.

A run (``gankd train`` or ``gankd distill``) is fully described by one :class:`RunConfig`, which
is written to ``<run>/config.json`` and into every checkpoint. Options left at ``None`` are
filled from :data:`OPTIMIZER_DEFAULTS` for the chosen loss, so the paper's settings are the
defaults while every one stays overridable.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from gankd.errors import GankdError, UsageError
from gankd.files import atomic_write_bytes
from gankd.losses import DEFAULT_TERMS, DISTILLATION_TERMS
from gankd.schedule import LR_SCHEDULES

LOSSES = ("wgan-gp", "dcgan")
METHODS = ("gan", "mse", "joint")  # gan: from scratch (teacher or regular baseline)
DISTILL_METHODS = ("mse", "joint")  # the students' methods: they need a teacher
DISTILL_ONLY = ("teacher", "terms", "teacher_critic", "alpha", "balance", "mse_reduction")  # options a GAN ignores
IMAGE_SIZES = (32, 64, 128)  # the DCGAN family's sizes (gankd/models.py)
CHANNELS = (1, 3)
DEFAULT_IMAGE_SIZE, DEFAULT_LATENT_DIM = 32, 100  # a network's size when neither a teacher nor an option sets it
MSE_REDUCTIONS = ("sum", "mean")
PRECISIONS = ("fp32", "bf16")
BALANCES = ("gradient", "none")  # joint: how the adversarial term is scaled (gankd/losses.py)
MONITORS = ("auto", "fidelity", "is", "fid", "none")  # what a run watches to stop (gankd/convergence.py)

# The default critic width of the dcgan loss, by image size: a dcgan critic as wide as a large
# generator wins outright (64x64, d=64 generator and critic: critic loss 5e-6 within 200 steps,
# every sample one texture, IS 1.00), while these widths trained (README, "Defaults that train").
# WGAN-GP's penalty keeps a critic of the generator's own width in check.
DCGAN_CRITIC_DEPTH = {32: 32, 64: 16, 128: 8}
# The dcgan critic's default R1 penalty weight (gankd/losses.py), by image size. At 128x128 even a
# d=4 critic wins outright without it (IS 1.00 after 1,500 steps); with gamma = 1 a d=8 generator
# and critic reach IS 5.5 by step 1,500, critic loss ~0.7 (README, "Defaults that train").
DCGAN_R1_GAMMA = {32: 0.0, 64: 0.0, 128: 1.0}

# `gankd distill --method mse-then-joint`: the best recipe measured so far on Fashion-MNIST (README, "Towards
# students worth shipping on clothing"): MSE students to their plateau, then a joint phase from them with the
# teacher's own critic fine-tuned on real data, alpha 0.8 (the critic's share of the pull on the images), the
# student's weight average and the FID monitor. Each phase's options; the command's flags override them.
MSE_THEN_JOINT = "mse-then-joint"
RECIPE_PHASES: dict[str, dict[str, Any]] = {
    "mse": {"ema_kimg": 10.0, "steps": 25000, "patience": 4, "eval_every": 1000},
    "joint": {"alpha": 0.8, "loss": "dcgan", "ema_kimg": 10.0, "monitor": "fid", "steps": 15000, "patience": 4, "eval_every": 1000},
}
# The options of a joint student's critic: what the recipe's MSE phase and a sweep's MSE-continued control leave out.
CRITIC_OPTIONS = ("alpha", "balance", "loss", "gp_lambda", "r1_gamma", "critic_depth", "critic_init", "critic_steps")

# Limits: larger values are refused up front (one line, exit 2) instead of failing deep inside
# torch or allocating without bound. models.Architecture checks the network's, checkpoints included.
MAX_DEPTH = 512  # d; the paper's largest teacher is d=256; d=512 at 128x128 is 0.73 G parameters
MAX_LATENT_DIM = 1024  # DCGAN uses 100, StyleGAN 512
MAX_BATCH_SIZE = 65536  # per process
MAX_SEED = 2**32 - 1  # seeds are 32-bit: every process's random streams are derived from the seed


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer option in ``low``..``high`` (the limits above): one-line errors."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high} (gankd's limit), got {value}")
        return value

    return parse

# Per-objective optimiser settings. wgan-gp: Gulrajani et al. (2017), as the paper's W-DCGAN
# teachers; dcgan: Radford et al. (2016); mse: a pure regression, which tolerates a larger step.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "wgan-gp": {"lr": 1e-4, "betas": (0.5, 0.9), "critic_steps": 5},
    "dcgan": {"lr": 2e-4, "betas": (0.5, 0.999), "critic_steps": 1},
    "mse": {"lr": 1e-3, "betas": (0.5, 0.999), "critic_steps": 0},
}


@dataclass
class RunConfig:
    out: str = "runs/default"
    method: str = "gan"
    # data (needed by gan and joint; mse distillation uses no training data)
    dataset: str | None = None  # None = a student's teacher's (as its checkpoint records it), else "mnist"
    data: str | None = None  # dataset root; None = the teacher's with its dataset, or the vendored MNIST for "mnist"
    image_size: int | None = None  # None = the teacher's (distillation), the data's (data.natural_image_size), else DEFAULT_IMAGE_SIZE
    channels: int | None = None  # None = the teacher's, else the dataset's own
    # networks
    depth: int = 64
    critic_depth: int | None = None  # None = the generator's depth, capped by DCGAN_CRITIC_DEPTH for the dcgan loss
    init: str | None = None  # start from this gankd generator's weights (same architecture), e.g. an MSE student
    critic_init: str | None = None  # start the critic from this critic.safetensors (e.g. the teacher's); its depth is the file's
    latent_dim: int | None = None  # None = the teacher's (distillation), else 100
    # objective
    loss: str = "wgan-gp"  # adversarial loss of gan and joint
    gp_lambda: float = 10.0
    r1_gamma: float | None = None  # dcgan: R1 penalty on the critic's slope at real images; None = DCGAN_R1_GAMMA
    teacher: str | None = None  # gankd checkpoint or TorchScript file (distillation)
    terms: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TERMS))  # distillation terms -> weights (losses.DISTILLATION_TERMS); a term left out keeps its default, 0 = off
    teacher_critic: str | None = None  # the teacher's critic.safetensors, for the terms that need it ("perceptual")
    alpha: float = 0.0  # joint: (1 - alpha) * KD + alpha * w * adversarial (gankd/losses.py)
    balance: str = "gradient"  # w: "gradient" (alpha = the critic's share of the pull) or "none" (w = 1, the paper)
    mse_reduction: str = "sum"  # paper: squared L2 norm = sum over pixels, mean over the batch
    # optimisation (None = OPTIMIZER_DEFAULTS of the objective)
    steps: int = 2000  # with patience set, the cap
    batch_size: int = 64  # per process
    lr: float | None = None
    lr_schedule: str = "constant"  # or "cosine": decay over `steps` (gankd/schedule.py), for every optimiser of the run
    betas: tuple[float, float] | None = None
    critic_steps: int | None = None
    ema_kimg: float = 0.0  # half-life of the generator's weight average in thousands of images (gankd/ema.py); 0 = none
    # convergence (gankd/convergence.py): stop on a plateau of a held-out monitor
    patience: int | None = None  # evaluations without improvement before stopping; None = run all steps
    eval_every: int = 500  # steps between monitor evaluations
    monitor: str = "auto"  # one of MONITORS; auto: fidelity (students), is (MNIST GANs), fid (other GANs)
    min_delta: float = 0.01  # relative improvement that counts as progress
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500
    divergence_threshold: float = 1e6  # |critic output| above this stops the run
    # speed options (for CUDA; on the CPU channels-last is always used, as oneDNN prefers it)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        check_types(self)
        if self.betas is not None:
            self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.terms = {**DEFAULT_TERMS, **self.terms}
        self.validate()

    # -- derived settings ---------------------------------------------------------------
    @property
    def adversarial(self) -> bool:
        """Whether a critic is trained (and therefore real data is needed)."""
        return self.method == "gan" or (self.method == "joint" and self.alpha > 0)

    @property
    def resolved_critic_depth(self) -> int:
        if self.critic_depth is not None:
            return self.critic_depth
        return min(self.depth, DCGAN_CRITIC_DEPTH[self.image_size or DEFAULT_IMAGE_SIZE]) if self.loss == "dcgan" else self.depth

    @property
    def resolved_r1_gamma(self) -> float:
        if self.r1_gamma is not None:
            return self.r1_gamma
        return DCGAN_R1_GAMMA[self.image_size or DEFAULT_IMAGE_SIZE] if self.loss == "dcgan" else 0.0

    def resolved(self, name: str, network: str = "generator") -> Any:
        """An optimiser setting of the generator's or the critic's Adam: the explicit value, else
        the default of its objective. A student's generator follows the MSE defaults whether or not
        a critic joins in (so that joint and MSE students differ by the adversarial term alone,
        not by their step size); critics follow their adversarial loss's."""
        value = getattr(self, name)
        if value is not None:
            return value
        key = "mse" if self.method != "gan" and network == "generator" else self.loss
        return OPTIMIZER_DEFAULTS[key][name]

    @property
    def active_terms(self) -> tuple[tuple[str, float], ...]:
        """The distillation terms with a weight, in registry order; none for a GAN."""
        if self.method not in DISTILL_METHODS:
            return ()
        return tuple((name, float(self.terms[name])) for name in DISTILLATION_TERMS if self.terms.get(name, 0) > 0)

    # -- validation and (de)serialisation -----------------------------------------------
    def validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        check(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        check(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        check(self.mse_reduction in MSE_REDUCTIONS, f"mse reduction must be one of {MSE_REDUCTIONS}")
        check(self.balance in BALANCES, f"balance must be one of {BALANCES}, got {self.balance!r}")
        check(self.lr_schedule in LR_SCHEDULES, f"lr schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        check(self.monitor in MONITORS, f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        check(self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        check(self.min_delta >= 0, f"min delta must be >= 0, got {self.min_delta}")
        check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}")
        check(1 <= self.depth <= MAX_DEPTH, f"depth must be in 1..{MAX_DEPTH}, got {self.depth}")
        check(self.critic_depth is None or 1 <= self.critic_depth <= MAX_DEPTH,
              f"critic depth must be in 1..{MAX_DEPTH}, got {self.critic_depth}")
        check(self.image_size in (None, *IMAGE_SIZES), f"image size must be one of {IMAGE_SIZES}, got {self.image_size}")
        check(self.channels in (None, *CHANNELS), f"channels must be one of {CHANNELS}, got {self.channels}")
        check(self.latent_dim is None or 1 <= self.latent_dim <= MAX_LATENT_DIM,
              f"latent size must be in 1..{MAX_LATENT_DIM}, got {self.latent_dim}")
        check(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        check(1 <= self.batch_size <= MAX_BATCH_SIZE, f"batch size must be in 1..{MAX_BATCH_SIZE}, got {self.batch_size}")
        check(0 <= self.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED} (2^32 - 1), got {self.seed}")
        check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        check(self.gp_lambda >= 0, f"gp lambda must be >= 0, got {self.gp_lambda}")
        check(self.r1_gamma is None or self.r1_gamma >= 0, f"r1 gamma must be >= 0, got {self.r1_gamma}")
        check(not self.r1_gamma or self.loss == "dcgan", "--r1-gamma is a penalty of the dcgan loss; WGAN-GP has its gradient penalty (--gp-lambda)")
        check(self.lr is None or self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        check(self.ema_kimg >= 0, f"ema kimg must be >= 0, got {self.ema_kimg}")
        check(self.critic_steps is None or self.critic_steps >= 1 or (self.critic_steps == 0 and self.critic_init is not None),
              f"critic steps must be >= 1 (0 freezes a critic started by --critic-init), got {self.critic_steps}")
        check(self.betas is None or (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)),
              f"betas must be two numbers in [0, 1), got {self.betas}")
        for name in ("log_every", "sample_every", "checkpoint_every", "eval_every"):
            check(getattr(self, name) >= 1, f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        check(self.divergence_threshold > 0, "divergence threshold must be > 0")
        for name, weight in self.terms.items():
            check(name in DISTILLATION_TERMS, f"unknown distillation term {name!r}"
                  + (f" (did you mean {_closest(name, set(DISTILLATION_TERMS))!r}?)" if _closest(name, set(DISTILLATION_TERMS)) else "")
                  + f"; the terms are {', '.join(DISTILLATION_TERMS)}")
            check(weight >= 0, f"the {name} term's weight must be >= 0, got {weight}")
        if self.method in DISTILL_METHODS:
            check(self.teacher is not None, f"method {self.method!r} needs a teacher (--teacher CKPT)")
            terms = [DISTILLATION_TERMS[name] for name, _ in self.active_terms]
            check(bool(terms), "a student needs at least one distillation term with a weight > 0 (e.g. --mse-weight 1)")
            check(self.teacher_critic is not None or not any("critic" in t.needs for t in terms),
                  f"the {', '.join(t.name for t in terms if 'critic' in t.needs)} term needs the teacher's critic (--teacher-critic "
                  "TEACHER_RUN/critic.safetensors)")
            check(not self.compile or not any("blocks" in t.needs for t in terms),
                  "the feature term reads block activations through forward hooks, which torch.compile does not keep; drop --compile")
            check(not (self.adversarial and self.balance == "gradient") or any(t.on_images for t in terms),
                  "the joint objective's gradient balance needs an image-space term (mse, perceptual, relation or mmd) beside feature")
        if self.method == "gan":
            check(self.teacher is None, "a teacher is only used by distillation (method mse or joint)")
        check(self.critic_init is None or self.adversarial, "--critic-init starts a critic, and this run trains none (gan, or joint with alpha > 0)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas) if self.betas is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = "config") -> "RunConfig":
        """A config from JSON-like data; every problem is a :class:`UsageError` naming the key
        (prefixed by ``source``, the file the data came from, when given)."""
        prefix = f"{source}: " if source else ""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hints = [f"{k!r} (did you mean {_closest(k, known)!r}?)" if _closest(k, known) else repr(k) for k in unknown]
            raise UsageError(f"{prefix}unknown key(s) {', '.join(hints)}")
        try:
            return cls(**data)
        except UsageError as exc:
            raise UsageError(f"{prefix}{exc}") from None

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        return cls.from_dict(read_options(path), source=str(path))


def read_options(path: Path) -> dict[str, Any]:
    """The options a JSON config file sets (only those: a key it leaves out keeps its default)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GankdError(f"{path}: no such file") from None
    except OSError as exc:
        raise GankdError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GankdError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise GankdError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise GankdError(f"{path}: expected a JSON object")
    return data


def check_types(cfg: RunConfig) -> None:
    """Each field's value has its annotated type (JSON gives any type anywhere); raises a
    :class:`UsageError` naming the key. An int is accepted for a float, never a bool for a number."""
    for name, hint in typing.get_type_hints(RunConfig).items():
        problem = _type_problem(getattr(cfg, name), hint)
        if problem:
            raise UsageError(f"{name} must be {problem}, got {_shown(getattr(cfg, name))}")


def _type_problem(value: Any, hint: Any) -> str | None:
    """None when ``value`` fits ``hint``, else what was expected."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    nullable = type(None) in options
    base = next(option for option in options if option is not type(None))
    or_null = " or null" if nullable else ""
    if value is None:
        return None if nullable else _expected(base)
    if typing.get_origin(base) is dict:
        fits = isinstance(value, dict) and all(isinstance(k, str) and _is_a(v, float) for k, v in value.items())
    elif typing.get_origin(base) is tuple:
        items = typing.get_args(base)
        fits = isinstance(value, (list, tuple)) and len(value) == len(items) and all(_is_a(v, item) for v, item in zip(value, items))
    else:
        fits = _is_a(value, base)
    return None if fits else _expected(base) + or_null


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _expected(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return f"a list of {len(typing.get_args(kind))} numbers"
    if typing.get_origin(kind) is dict:
        return "an object of names to numbers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _closest(name: str, candidates: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return match[0] if match else None
