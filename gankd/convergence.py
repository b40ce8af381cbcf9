"""When a run has converged: a held-out quantity watched during training, and a plateau rule.

A fixed step budget measures the budget, not the method: a d=2 student needs several times the
steps of a d=16 one. With ``patience`` set, every ``eval_every`` steps the run evaluates its
monitor on fixed held-out latents and stops once ``patience`` evaluations in a row failed to
improve on the best value by more than ``min_delta`` (relative); ``steps`` is then only a cap.
The model delivered is the one at the stopping step (never the best-scoring one seen earlier).

Monitors (``monitor``; ``auto`` picks the first that applies) are the metrics of ``gankd evaluate``
on fewer samples, computed by the same code (:mod:`gankd.metrics`): generated images quantised to
8 bits before a network sees them, fidelity accumulated in float64.

* ``fidelity`` -- students: per-pixel MSE to the teacher's images of 1,024 fixed latents
  (a seed of their own, distinct from those of ``gankd evaluate``); lower is better.
* ``is`` -- 1-channel MNIST generators: Inception Score of 2,000 samples on gankd's digit
  classifier (10 splits); higher is better.
* ``fid`` -- any generator trained with data: FID of 1,000 samples against 1,000 training images
  on the standard Inception network (cached statistics). Biased high at that count, but the same
  bias at every evaluation, which is all a plateau rule needs; lower is better. Tens of seconds
  per evaluation on a CPU.

``auto``: a student (mse or joint) watches ``fidelity``; a GAN from scratch watches ``is`` on
MNIST and ``fid`` elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from gankd.config import DISTILL_METHODS, MONITORS
from gankd.data import ImageData
from gankd.errors import GankdError
from gankd.metrics.features import extract
from gankd.metrics.fidelity import teacher_fidelity
from gankd.metrics.frechet import frechet_distance, gaussian_statistics
from gankd.metrics.inception_score import inception_score, probabilities
from gankd.metrics.registry import IS_SPLITS

FIDELITY_LATENTS, FIDELITY_SEED = 1024, 314_159_265
IS_SAMPLES, IS_SEED = 2000, 271_828_182
FID_SAMPLES, FID_SEED = 1000, 161_803_398


@dataclass
class Monitor:
    name: str
    higher_is_better: bool
    measure: Callable[[nn.Module], float]  # an eval-mode generator -> the value

    def __call__(self, generator: nn.Module) -> float:
        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad():
                return float(self.measure(generator))
        finally:
            generator.train(was_training)


def resolve_monitor(name: str, method: str, dataset: str | None, channels: int) -> str:
    """The monitor a run watches: ``name`` itself, or ``auto``'s choice (see the module docstring)."""
    if name != "auto":
        return name
    if method in DISTILL_METHODS:
        return "fidelity"
    return "is" if dataset == "mnist" and channels == 1 else "fid"


def build_monitor(name: str, latent_dim: int, device: torch.device, teacher: nn.Module | None,
                  data: ImageData | None = None) -> Monitor | None:
    """The monitor ``name`` (already resolved), ready to measure generators; None for ``none``."""
    if name == "none":
        return None
    if name == "fidelity":
        if teacher is None:
            raise GankdError("the fidelity monitor compares with a teacher; a GAN from scratch has none (use --monitor is or none)")

        def fidelity(generator: nn.Module) -> float:
            return teacher_fidelity(generator, teacher, FIDELITY_LATENTS, device, FIDELITY_SEED, latent_dim)["mse"]

        return Monitor("fidelity", False, fidelity)
    if name == "is":
        from gankd.metrics.networks import DigitClassifier

        classifier = DigitClassifier.pretrained(device)

        def score(generator: nn.Module) -> float:
            logits = extract(generator, {"logits": classifier.logits}, IS_SAMPLES, device, IS_SEED, batch_size=500,
                             desc="is monitor", latent_dim=latent_dim)["logits"]
            return inception_score(probabilities(logits), IS_SPLITS)[0]

        return Monitor("is", True, score)
    if name == "fid":
        if data is None:
            raise GankdError("the fid monitor compares with the training data; an MSE student has none (use --monitor fidelity)")
        from gankd.metrics.evaluate import cache_directory, reference_features
        from gankd.metrics.networks import InceptionFeatures

        inception = InceptionFeatures(device=device)
        count = min(FID_SAMPLES, len(data))
        real = reference_features(data, {"inception": (inception.id, inception)}, count, device, cache_directory())["inception"]

        def fid(generator: nn.Module) -> float:
            features = extract(generator, {"inception": inception}, count, device, FID_SEED, desc="fid monitor", latent_dim=latent_dim)
            return frechet_distance(*gaussian_statistics(features["inception"]), real["mu"], real["sigma"])

        return Monitor("fid", False, fid)
    raise GankdError(f"unknown monitor {name!r}; choose from {', '.join(MONITORS)}")


@dataclass
class Plateau:
    """Stop after ``patience`` evaluations in a row without a relative improvement > ``min_delta``."""

    patience: int
    min_delta: float
    higher_is_better: bool
    best: float | None = None
    since_best: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, value: float) -> bool:
        """Record ``value`` at ``step``; True when the run should stop."""
        if value != value:  # NaN never counts as progress
            value = float("-inf") if self.higher_is_better else float("inf")
        self.history.append((step, value))
        gain = (value - self.best) if self.best is not None and self.higher_is_better else (
            (self.best - value) if self.best is not None else float("inf"))
        if self.best is None or gain > self.min_delta * abs(self.best):
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "since_best": self.since_best, "history": self.history}

    def load(self, state: dict[str, Any]) -> None:
        self.best, self.since_best = state["best"], int(state["since_best"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]
