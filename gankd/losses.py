"""The objectives: what the critic and the generator (teacher, regular GAN or student) minimise.

With x real images, z ~ N(0, I), D the critic, G the network being trained, G_T the teacher:

    critic  wgan-gp  mean D(G(z)) - mean D(x) + lambda mean (||grad D(x_hat)|| - 1)^2
            dcgan    mean softplus(-D(x)) + mean softplus(D(G(z)))  [+ gamma/2 mean ||grad D(x)||^2, R1]
    gan     L_G = adv(G(z))           adv = -mean D (wgan-gp), mean softplus(-D) (dcgan, non-saturating)
    mse     L_G = KD                  KD = sum_t lambda_t term_t(G(z), G_T(z)), the distillation terms
    joint   L_G = (1 - alpha) KD + alpha * w * adv

The distillation terms are a registry (``DISTILLATION_TERMS``, filled by ``@distillation_term``):
each entry is one function of a :class:`TermInputs` with its name, help and what it needs; its
weight lambda_t is the run option ``terms[name]`` (``--<name>-weight`` on the command line,
``"terms": {name: weight}`` in a config or sweep file), declared by the entry alone. The default
is the paper's: pixel MSE alone, summed over pixels and averaged over the batch.

In the joint objective ``w`` sets the scale of the adversarial term (``balance``):

* ``gradient`` (default): w = ||dKD/dG(z)|| / ||d adv/dG(z)||, measured on every batch at the
  student's images and held constant. Both terms then pull the images equally hard before the
  weights, so alpha is the share of that pull that comes from the critic: alpha = 0.2 means the
  critic contributes a fifth, whatever the image size, the MSE reduction or the critic's scale.
* ``none``: w = 1, the paper's formula. Its summed MSE is ~10^2 per image while adv is ~1, so
  the paper's alpha = 1e-4 gives the critic a very small share; ``grad_ratio`` in metrics.csv
  shows how small.

Every generator objective is applied the same way: its gradient at the generated images is
formed here from the gradients of the terms (which are logged), then back-propagated through G.
Terms on the student's block activations (``needs`` "blocks") have no gradient at the images:
they come back as a loss on those activations, back-propagated in the same backward pass, and
the gradient balance of the joint objective compares the critic with the image-space terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

_TINY = 1e-12


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, loss: str, gp_lambda: float,
                eps: torch.Tensor | None = None, r1_gamma: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critic's objective on one real and one fake batch, and its diagnostics. ``eps`` (N,)
    are the WGAN-GP interpolation weights, drawn by the caller so that every student of a run
    sees the same numbers. ``r1_gamma`` adds the dcgan critic's R1 penalty, gamma/2 E||grad D(x)||^2
    on real images (Mescheder et al. 2018): a critic that may not sharpen its slope at the data
    cannot win outright."""
    n = real.shape[0]
    if loss == "wgan-gp":
        # One forward over [real; fake] (the critic has no BatchNorm, so rows are independent and
        # this equals two passes at half the launch overhead), and one over the interpolates alone:
        # the gradient penalty differentiates twice through its pass, and a pass shared with the
        # real and fake rows would carry them, as zeros, through both (about 1.8x the work).
        eps = eps.view(n, 1, 1, 1).to(real.dtype)
        interp = (eps * real + (1 - eps) * fake).requires_grad_(True)
        scores = critic(torch.cat([real, fake]))
        d_real, d_fake = scores[:n], scores[n:]
        d_interp = critic(interp)
        (grad,) = torch.autograd.grad(d_interp.sum(), interp, create_graph=True)
        gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        value = d_fake.mean() - d_real.mean() + gp_lambda * gp
        stats = {"d_loss": value, "wasserstein": d_real.mean() - d_fake.mean(), "gp": gp}
    else:  # dcgan: separate passes so BatchNorm sees pure real and pure fake batches
        if r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        d_real, d_fake = critic(real), critic(fake)
        value = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        stats = {"d_loss": value}
        if r1_gamma > 0:
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            r1 = grad.float().pow(2).flatten(1).sum(1).mean()
            value = value + r1_gamma / 2 * r1
            stats["r1"] = r1
    stats.update(d_real=d_real.mean(), d_fake=d_fake.mean())
    return value, {k: v.detach() for k, v in stats.items()}


def generator_adversarial_loss(scores: torch.Tensor, loss: str) -> torch.Tensor:
    return -scores.mean() if loss == "wgan-gp" else F.softplus(-scores).mean()


# --------------------------------------------------------------------------- distillation terms


@dataclass
class TermInputs:
    """What a distillation term sees for one batch of latents z (all float32)."""

    images: torch.Tensor  # G_S(z): a leaf that requires grad (image-space terms are differentiated here)
    target: torch.Tensor  # G_T(z)
    blocks: list[torch.Tensor] = field(default_factory=list)  # G_S's block activations, in its graph ("blocks")
    target_blocks: list[torch.Tensor] = field(default_factory=list)  # G_T's, same resolutions
    projections: nn.ModuleList | None = None  # 1x1 convolutions from the student's block widths to the teacher's ("blocks")
    critic_features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None  # the teacher's frozen critic ("critic")
    mse_reduction: str = "sum"


@dataclass(frozen=True)
class DistillationTerm:
    name: str
    help: str  # one line: what it compares and why
    needs: frozenset[str]  # beyond the images: "blocks" (block activations), "critic" (the teacher's critic)
    value: Callable[[TermInputs], tuple[torch.Tensor, dict[str, torch.Tensor]]]  # (the term, what it logs)

    @property
    def on_images(self) -> bool:
        """Whether the term is a function of the student's images alone (its gradient is formed there)."""
        return "blocks" not in self.needs


DISTILLATION_TERMS: dict[str, DistillationTerm] = {}
DEFAULT_TERMS: dict[str, float] = {"mse": 1.0}  # the paper's objective


def distillation_term(name: str, help: str, needs: tuple[str, ...] = ()) -> Callable:
    """Register a distillation term: the decorated function maps :class:`TermInputs` to (value, logged)."""
    def register(value: Callable[[TermInputs], tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> Callable:
        DISTILLATION_TERMS[name] = DistillationTerm(name, help, frozenset(needs), value)
        return value
    return register


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str) -> torch.Tensor:
    """||G_T(z) - G_S(z)||^2: summed over pixels (the paper's squared L2 norm) or averaged."""
    squared = (student.float() - teacher.float()).pow(2)
    return squared.flatten(1).sum(1).mean() if reduction == "sum" else squared.mean()


@distillation_term("mse", "pixel MSE to the teacher's images (the paper's term; --mse-reduction sets sum or mean over pixels)")
def _pixel_mse(t: TermInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    mse = distillation_loss(t.images, t.target, t.mse_reduction)
    return mse, {"mse": mse.detach(), "mse_pixel": (t.images.detach() - t.target).pow(2).mean()}


@distillation_term("feature", "feature distillation (FitNets): MSE between the teacher's block activations and the student's, "
                   "mapped to the teacher's widths by learned 1x1 convolutions; mean over blocks", needs=("blocks",))
def _block_features(t: TermInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    value = torch.stack([(project(s.float()) - target).pow(2).mean()
                         for project, s, target in zip(t.projections, t.blocks, t.target_blocks)]).mean()
    return value, {"feature": value.detach()}


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    """Each position's feature vector scaled to unit length (LPIPS's normalisation)."""
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)


@distillation_term("perceptual", "perceptual distance in the teacher's critic (--teacher-critic): squared distance of the "
                   "unit-normalised activations of each critic layer, as LPIPS does with a fixed network", needs=("critic",))
def _critic_perceptual(t: TermInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.no_grad():
        wanted = t.critic_features(t.target)
    got = t.critic_features(t.images)
    value = torch.stack([(_unit_channels(a) - _unit_channels(b)).pow(2).sum(1).mean() for a, b in zip(got, wanted)]).mean()
    return value, {"perceptual": value.detach()}


def _similarities(x: torch.Tensor) -> torch.Tensor:
    flat = F.normalize(x.flatten(1), dim=1)
    return flat @ flat.T


@distillation_term("relation", "relation distillation (similarity-preserving KD, as StyleKD's): MSE between the batch's "
                   "cosine-similarity matrices of student and teacher images, which keeps how samples differ from each other")
def _relation(t: TermInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    value = (_similarities(t.images) - _similarities(t.target)).pow(2).mean()
    return value, {"relation": value.detach()}


MMD_SCALES = (0.05, 0.2, 0.8)  # Gaussian kernel widths in per-pixel mean squared distance ([-1, 1] images)


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased squared maximum mean discrepancy (Gretton et al. 2012) between two batches of images,
    a sum of Gaussian kernels exp(-||a - b||^2 / (P s)) over ``MMD_SCALES``, P the pixel count;
    zero when the batches are the same set."""
    both = torch.cat([x.flatten(1), y.flatten(1)])
    distances = torch.cdist(both, both).pow(2) / both.shape[1]
    kernel = sum(torch.exp(-distances / s) for s in MMD_SCALES)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


@distillation_term("mmd", "MMD between the student's batch and the teacher's (Gaussian kernels on pixels): matches the "
                   "spread of the samples, not only each one, against the loss of diversity")
def _mmd(t: TermInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    value = mmd(t.images, t.target)
    return value, {"mmd": value.detach()}


# --------------------------------------------------------------------------- the generator's objective


@dataclass(frozen=True)
class GeneratorObjective:
    """Which terms the generator's loss has and how they are weighted (see the module docstring)."""

    adversarial: str | None = None  # the critic's loss ("wgan-gp" or "dcgan"), None without a critic
    terms: tuple[tuple[str, float], ...] = ()  # distillation terms with a weight > 0, in registry order; () for a GAN
    alpha: float = 0.0  # weight of the adversarial term when both are present
    balance: str = "gradient"
    mse_reduction: str = "sum"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(DISTILLATION_TERMS[name].needs for name, _ in self.terms))

    def images_gradient(self, fake: torch.Tensor, target: torch.Tensor | None, critic: nn.Module | None,
                        inputs: TermInputs | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """d L_G / d G(z) at the generated images ``fake`` (detached); the loss of the block terms
        (in the student's graph; None without them); and the logged values: each term's, ``g_loss``
        (the value of L_G), ``g_adv``, ``adv_weight`` (w) and ``grad_ratio`` (the critic's pull
        over the distillation terms', after weighting). ``inputs`` carries what terms other than
        the images need (blocks, projections, the teacher's critic)."""
        x = fake.detach().float().requires_grad_(True)
        stats: dict[str, torch.Tensor] = {}
        grad_kd = grad_adv = block_loss = value_kd = None
        if self.terms:
            seen = inputs if inputs is not None else TermInputs(x, target)
            seen.images, seen.target, seen.mse_reduction = x, target.float(), self.mse_reduction
            for name, weight in self.terms:
                term = DISTILLATION_TERMS[name]
                value, logged = term.value(seen)
                stats.update(logged)
                weighted = value.detach() if weight == 1 else weight * value.detach()
                value_kd = weighted if value_kd is None else value_kd + weighted
                if term.on_images:
                    (grad,) = torch.autograd.grad(value, x)
                    grad = grad if weight == 1 else weight * grad
                    grad_kd = grad if grad_kd is None else grad_kd + grad
                else:
                    block_loss = weight * value if block_loss is None else block_loss + weight * value
        if self.adversarial is not None:
            adv = generator_adversarial_loss(critic(x), self.adversarial)
            (grad_adv,) = torch.autograd.grad(adv, x)  # to the images only: the critic's weights get none
            stats["g_adv"] = adv.detach()
        if value_kd is None:
            return grad_adv, None, {**stats, "g_loss": stats["g_adv"]}
        if grad_kd is None:
            grad_kd = torch.zeros_like(x)
        if grad_adv is None:
            return grad_kd, block_loss, {**stats, "g_loss": value_kd}
        weight = grad_kd.norm() / (grad_adv.norm() + _TINY) if self.balance == "gradient" else torch.ones((), device=x.device)
        pull_kd, pull_adv = (1 - self.alpha) * grad_kd, (self.alpha * weight) * grad_adv
        stats.update(
            g_loss=(1 - self.alpha) * value_kd + self.alpha * weight * stats["g_adv"],
            adv_weight=weight,
            grad_ratio=pull_adv.norm() / (pull_kd.norm() + _TINY),
        )
        return pull_kd + pull_adv, None if block_loss is None else (1 - self.alpha) * block_loss, stats
