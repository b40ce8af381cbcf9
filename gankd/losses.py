"""The objectives: what the critic and the generator (teacher, regular GAN or student) minimise.

With x real images, z ~ N(0, I), D the critic, G the network being trained, G_T the teacher:

    critic  wgan-gp  mean D(G(z)) - mean D(x) + lambda mean (||grad D(x_hat)|| - 1)^2
            dcgan    mean softplus(-D(x)) + mean softplus(D(G(z)))  [+ gamma/2 mean ||grad D(x)||^2, R1]
    gan     L_G = adv(G(z))           adv = -mean D (wgan-gp), mean softplus(-D) (dcgan, non-saturating)
    mse     L_G = MSE(G(z), G_T(z))   summed over pixels, averaged over the batch (the paper), or mean
    joint   L_G = (1 - alpha) MSE + alpha * w * adv

In the joint objective ``w`` sets the scale of the adversarial term (``balance``):

* ``gradient`` (default): w = ||dMSE/dG(z)|| / ||d adv/dG(z)||, measured on every batch at the
  student's images and held constant. Both terms then pull the images equally hard before the
  weights, so alpha is the share of that pull that comes from the critic: alpha = 0.2 means the
  critic contributes a fifth, whatever the image size, the MSE reduction or the critic's scale.
* ``none``: w = 1, the paper's formula. Its summed MSE is ~10^2 per image while adv is ~1, so
  the paper's alpha = 1e-4 gives the critic a very small share; ``grad_ratio`` in metrics.csv
  shows how small.

Every generator objective is applied the same way: its gradient at the generated images is
formed here from the gradients of the terms (which are logged), then back-propagated through G.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str) -> torch.Tensor:
    """||G_T(z) - G_S(z)||^2: summed over pixels (the paper's squared L2 norm) or averaged."""
    squared = (student.float() - teacher.float()).pow(2)
    return squared.flatten(1).sum(1).mean() if reduction == "sum" else squared.mean()


@dataclass(frozen=True)
class GeneratorObjective:
    """Which terms the generator's loss has and how they are weighted (see the module docstring)."""

    adversarial: str | None = None  # the critic's loss ("wgan-gp" or "dcgan"), None without a critic
    distill: bool = False  # an MSE term to the teacher's images
    alpha: float = 0.0  # weight of the adversarial term when both are present
    balance: str = "gradient"
    mse_reduction: str = "sum"

    def images_gradient(self, fake: torch.Tensor, target: torch.Tensor | None, critic: nn.Module | None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """d L_G / d G(z) at the generated images ``fake`` (detached), and the logged terms:
        ``g_loss`` (the value of L_G), ``mse``, ``g_adv``, ``adv_weight`` (w) and ``grad_ratio``
        (the critic's pull over the MSE's, after weighting)."""
        x = fake.detach().float().requires_grad_(True)
        stats: dict[str, torch.Tensor] = {}
        grad_mse = grad_adv = None
        if self.distill:
            mse = distillation_loss(x, target, self.mse_reduction)
            (grad_mse,) = torch.autograd.grad(mse, x)
            stats["mse"] = mse.detach()
            stats["mse_pixel"] = (x.detach() - target.float()).pow(2).mean()
        if self.adversarial is not None:
            adv = generator_adversarial_loss(critic(x), self.adversarial)
            (grad_adv,) = torch.autograd.grad(adv, x)  # to the images only: the critic's weights get none
            stats["g_adv"] = adv.detach()
        if grad_mse is None:
            return grad_adv, {**stats, "g_loss": stats["g_adv"]}
        if grad_adv is None:
            return grad_mse, {**stats, "g_loss": stats["mse"]}
        weight = grad_mse.norm() / (grad_adv.norm() + _TINY) if self.balance == "gradient" else torch.ones((), device=x.device)
        pull_mse, pull_adv = (1 - self.alpha) * grad_mse, (self.alpha * weight) * grad_adv
        stats.update(
            g_loss=(1 - self.alpha) * stats["mse"] + self.alpha * weight * stats["g_adv"],
            adv_weight=weight,
            grad_ratio=pull_adv.norm() / (pull_mse.norm() + _TINY),
        )
        return pull_mse + pull_adv, stats
