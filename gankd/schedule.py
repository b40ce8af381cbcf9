"""The learning-rate schedule: the factor on every optimiser's base learning rate at each step.

The factor is a function of the step alone, with no scheduler state, so a resumed run sets the
rates an uninterrupted one would have. ``cosine`` is SGDR's decay without restarts (Loshchilov &
Hutter, 2017): from 1 at step 0 down to ``COSINE_FLOOR`` at the run's ``steps``, which under a
plateau rule is the cap, so a run that stops early has decayed less.
"""

from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.05  # the cosine schedule's last factor: a twentieth of the base rate, not zero


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The factor on the base learning rate for the update made at ``step`` (0-based) of ``steps``."""
    if schedule == "constant" or steps <= 0:
        return 1.0
    progress = min(step / steps, 1.0)
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
