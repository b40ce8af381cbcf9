"""The one path from images to features: every metric's inputs go through :func:`extract`.

A source is a generator (sampled from seeded latents) or an :class:`~gankd.data.ImageData`
(a seeded subset of it). Generated images are quantised to 8 bits first, exactly as a saved
PNG would be, so that generated and real images reach the networks in the same form: real
data is uint8, and leaving generated images continuous would itself shift FID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from gankd.data import ImageData, to_uint8, to_unit_range
from gankd.errors import GankdError
from gankd.progress import progress
from gankd.sampling import sample_latents

FeatureNetwork = Callable[[torch.Tensor], torch.Tensor]
"""Float images (N, C, S, S) in [-1, 1] on the network's device -> (N, D); does its own
preprocessing (see :mod:`gankd.metrics.networks`)."""


def image_batches(
    source: nn.Module | ImageData, count: int, batch_size: int, seed: int, device: torch.device, latent_dim: int | None = None
) -> Iterator[torch.Tensor]:
    """Batches of ``count`` images in [-1, 1] (float32, on ``device``). A generator's latent
    size is ``latent_dim``, by default that of its ``arch`` (a gankd Generator)."""
    if isinstance(source, ImageData):
        total = source.images.shape[0]
        if count > total:
            raise GankdError(f"{source.name} has {total} images; {count} were asked for")
        order = np.random.default_rng(seed).permutation(total)[:count] if count < total else np.arange(total)
        for start in range(0, count, batch_size):
            index = torch.from_numpy(np.sort(order[start : start + batch_size]))
            yield to_unit_range(source.images[index]).to(device)
        return
    latents = sample_latents(count, latent_dim or source.arch.latent_dim, seed)
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            generated = source(latents[start : start + batch_size].to(device))
            yield to_unit_range(to_uint8(generated)).to(device)


def extract(
    source: nn.Module | ImageData,
    networks: Mapping[str, FeatureNetwork],
    count: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    desc: str = "features",
    latent_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """Run every network on the same ``count`` images in one pass; float32 (count, D) arrays.

    Generators must already be in eval mode (``load_generator`` returns them so).
    """
    if count < 1:
        raise GankdError(f"the number of samples must be positive, got {count}")
    device = torch.device(device)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in networks}
    with progress(count, desc, "img") as bar, torch.inference_mode():
        for images in image_batches(source, count, batch_size, seed, device, latent_dim):
            for name, network in networks.items():
                outputs[name].append(network(images).float().cpu().numpy())
            bar.update(images.shape[0])
    return {name: np.concatenate(parts) for name, parts in outputs.items()}
