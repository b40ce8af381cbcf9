"""Seeded latents and images from them: same seed, same latents, on every device and batch size."""

from __future__ import annotations

import torch
from torch import nn


def sample_latents(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    """(count, latent_dim) N(0, I) latents from a CPU generator seeded with ``seed``: the same
    numbers on every device and for every batch size."""
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


def images_from(generator: nn.Module, n: int, latent_dim: int, seed: int, device: str | torch.device,
                batch_size: int = 256) -> torch.Tensor:
    """n images from seeded latents (same seed, same images), on the CPU."""
    z = sample_latents(n, latent_dim, seed)
    with torch.no_grad():
        return torch.cat([generator(z[i : i + batch_size].to(device)).float().cpu() for i in range(0, n, batch_size)])
