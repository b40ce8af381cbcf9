"""Teacher fidelity: how closely the student reproduces its teacher, image for image.

Distillation trains the student to map each latent z to the teacher's image G_T(z); this
measures that on latents never used in training, in pixel space (images in [-1, 1]).
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from gankd.errors import GankdError
from gankd.sampling import sample_latents

HELD_OUT_SEED = 1_000_000_007
"""Added to the evaluation seed, so the latents come from a stream of their own rather than
the one ``torch.manual_seed(seed)`` gives a training run with the same small seed."""

PEAK_TO_PEAK = 2.0  # images span [-1, 1]

# The teacher's images on the held-out latents, per teacher module: a sweep scores many students
# of one teacher, and the teacher's forward would otherwise dominate every one of them.
_TEACHER_IMAGES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[torch.Tensor]]] = weakref.WeakKeyDictionary()


def teacher_fidelity(
    student: nn.Module,
    teacher: nn.Module,
    n: int = 1000,
    device: str | torch.device = "cpu",
    seed: int = 0,
    latent_dim: int | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Mean squared error over all pixels of ``n`` image pairs, and the PSNR of that error in dB,
    10 log10(2^2 / MSE) (infinite for identical outputs). Accumulated in float64. The latent
    size defaults to the student's ``arch`` (a gankd Generator). The teacher's images are kept
    for the next student scored against the same teacher module."""
    if n < 1:
        raise GankdError(f"the number of samples must be positive, got {n}")
    latent_dim = latent_dim or student.arch.latent_dim
    latents = sample_latents(n, latent_dim, seed + HELD_OUT_SEED)
    key = (n, latent_dim, seed, batch_size, str(device))
    cache = _TEACHER_IMAGES.setdefault(teacher, {})
    squared_error, pixels = 0.0, 0
    with torch.inference_mode():
        if key not in cache:
            cache.clear()  # one set per teacher is enough for a sweep, and bounds the memory
            cache[key] = [teacher(z.to(device)) for z in latents.split(batch_size)]
        for z, b in zip(latents.split(batch_size), cache[key]):
            a = student(z.to(device))
            if a.shape != b.shape:
                raise GankdError(f"student images {tuple(a.shape[1:])} and teacher images {tuple(b.shape[1:])} differ in shape")
            squared_error += float((a.double() - b.double()).square().sum())
            pixels += a.numel()
    mse = squared_error / pixels
    psnr = 10 * math.log10(PEAK_TO_PEAK**2 / mse) if mse > 0 else math.inf
    return {"mse": mse, "psnr": psnr, "samples": n}
