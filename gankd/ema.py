"""The exponential moving average of a generator's weights (stylegan2-ada's ``G_ema``).

A GAN's generator keeps moving around a good solution as the critic chases it; the average of
its recent weights sits nearer the middle and usually scores better than any single iterate.
With ``ema_kimg`` set, every run kind (teacher, regular GAN, student) keeps

    W_avg <- beta W_avg + (1 - beta) W,     beta = 0.5 ** (batch / (1000 ema_kimg))

after each generator step, so ``ema_kimg`` is the average's *half-life in thousands of images*:
the weights of ``1000 ema_kimg`` images ago count half as much as the current ones. As in
stylegan2-ada, the half-life ramps up with the images seen so far (at most ``EMA_RAMPUP`` of
them), so the random initial weights are forgotten early on.

The averaged weights have no BatchNorm statistics of their own: the training generator's running
statistics belong to *its* weights. As BigGAN does for its ``G_ema``, the average's statistics
are "standing statistics", recomputed from ``STANDING_BATCHES`` fixed latent batches in training
mode whenever the average is used (monitor, samples, the delivered generator). Fixed latents make
them a function of the weights alone, so a resumed run is exact.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from gankd.errors import GankdError
from gankd.models import Generator
from gankd.sampling import sample_latents

EMA_RAMPUP = 0.05  # the half-life is at most this fraction of the images seen (stylegan2-ada's ema_rampup)
STANDING_BATCHES, STANDING_SEED = 32, 577_215_664  # latents for the average's BatchNorm statistics


def ema_beta(ema_kimg: float, images_seen: int, batch_images: int, rampup: float | None = EMA_RAMPUP) -> float:
    """The decay of one update: 0.5 ** (batch / half-life), the half-life ramped up by ``rampup``."""
    half_life = ema_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_images / max(half_life, 1e-8))


class WeightAverage:
    """An averaged copy of ``generator`` (see the module docstring)."""

    def __init__(self, generator: Generator, ema_kimg: float, batch_size: int):
        self.ema_kimg, self.batch_size = ema_kimg, batch_size
        self.generator: Generator = copy.deepcopy(generator).eval().requires_grad_(False)
        self._stale = True  # the standing statistics are not those of the current weights

    @torch.no_grad()
    def update(self, generator: nn.Module, step: int, batch_images: int) -> None:
        """Fold in the weights after generator step ``step`` (0-based), of ``batch_images`` images."""
        beta = ema_beta(self.ema_kimg, step * batch_images, batch_images)
        for average, current in zip(self.generator.parameters(), generator.parameters()):
            average.lerp_(current.detach(), 1 - beta)
        self._stale = True

    @torch.no_grad()
    def averaged(self) -> Generator:
        """The averaged generator, eval mode, with standing BatchNorm statistics for its weights."""
        if self._stale:
            g = self.generator
            norms = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
            momenta = [norm.momentum for norm in norms]
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the batches below
            g.train()
            device = next(g.parameters()).device
            z = sample_latents(STANDING_BATCHES * self.batch_size, g.arch.latent_dim, STANDING_SEED).to(device)
            for part in z.split(self.batch_size):
                g(part)
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
            g.eval()
            self._stale = False
        return self.generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.generator.named_parameters()}

    def load_parameters(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = dict(self.generator.named_parameters())
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise GankdError(f"{source}: its weight average does not match the generator's architecture")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name])
        self._stale = True
