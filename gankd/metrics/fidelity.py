"""Teacher fidelity: how closely the student reproduces its teacher, image for image.

Distillation trains the student to map each latent z to the teacher's image G_T(z); this
measures that on latents never used in training, in pixel space (images in [-1, 1]).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gankd.errors import GankdError
from gankd.sampling import sample_latents

HELD_OUT_SEED = 1_000_000_007
"""Added to the evaluation seed, so the latents come from a stream of their own rather than
the one ``torch.manual_seed(seed)`` gives a training run with the same small seed."""

PEAK_TO_PEAK = 2.0  # images span [-1, 1]


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
    size defaults to the student's ``arch`` (a gankd Generator)."""
    if n < 1:
        raise GankdError(f"the number of samples must be positive, got {n}")
    latents = sample_latents(n, latent_dim or student.arch.latent_dim, seed + HELD_OUT_SEED)
    squared_error, pixels = 0.0, 0
    with torch.inference_mode():
        for z in latents.split(batch_size):
            z = z.to(device)
            a, b = student(z), teacher(z)
            if a.shape != b.shape:
                raise GankdError(f"student images {tuple(a.shape[1:])} and teacher images {tuple(b.shape[1:])} differ in shape")
            squared_error += float((a.double() - b.double()).square().sum())
            pixels += a.numel()
    mse = squared_error / pixels
    psnr = 10 * math.log10(PEAK_TO_PEAK**2 / mse) if mse > 0 else math.inf
    return {"mse": mse, "psnr": psnr, "samples": n}
