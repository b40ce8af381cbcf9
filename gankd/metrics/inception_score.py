"""Inception Score, IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al., 2016).

High when each image is classified confidently (low-entropy p(y|x)) and the classes are used
evenly (high-entropy p(y)); it lies between 1 and the number of classes K.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, xlogy

from gankd.errors import GankdError


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64 (float32 logits of a confident classifier round p to 0 or 1)."""
    return np.exp(log_softmax(np.asarray(logits, np.float64), axis=1))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation of the score over ``splits`` consecutive equal parts.

    As in the original code, p(y) is the mean of p(y|x) within each part, so the score depends
    on the part size: compare scores computed from the same number of samples and splits.
    Rows of ``probs`` (N, K) must be probability vectors; 0 log 0 is taken as 0.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits or splits < 1:
        raise GankdError(f"Inception Score needs (N, K) probabilities with N >= splits = {splits}; got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1, atol=1e-4):
        raise GankdError("Inception Score needs rows of non-negative probabilities summing to 1")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
