"""Seed statistics: a mean with its 95% confidence interval, and the comparisons a report may claim.

With n seeds of one configuration, the interval is mean +- t(0.975, n - 1) s / sqrt(n), s the
sample standard deviation (Student's t, as for any small sample of independent runs). A claim
("beats", "keeps quality") is made only when the intervals support it: one configuration beats
another when its whole interval lies on the better side of the other's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci95: float  # half-width; nan with a single seed
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def __str__(self) -> str:
        return f"{self.mean:.3g}" if self.n < 2 else f"{self.mean:.3g} ± {self.ci95:.2g}"


def estimate(values: list[float], confidence: float = 0.95) -> Estimate:
    """Mean and Student-t confidence half-width of independent runs (seeds)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n), n)


def better(a: Estimate, b: Estimate, higher_is_better: bool) -> bool:
    """Whether ``a`` is better than ``b`` with non-overlapping intervals (needs >= 2 seeds each)."""
    if a.n < 2 or b.n < 2:
        return False
    return a.low > b.high if higher_is_better else a.high < b.low


def keeps(a: Estimate, reference: float, fraction: float, higher_is_better: bool) -> bool:
    """Whether ``a``'s whole interval keeps ``fraction`` of ``reference`` (e.g. 90% of the teacher's
    IS; for lower-is-better metrics, at most reference / fraction)."""
    if a.n < 2:
        return False
    return a.low >= fraction * reference if higher_is_better else a.high <= reference / fraction


def smallest_kept(by_depth: dict[int, Estimate], reference: float, fraction: float, higher_is_better: bool) -> int | None:
    """The compression limit on a grid of depths: the smallest depth that keeps ``fraction`` of the
    reference with every larger depth of the grid keeping it too; None if the largest does not."""
    limit = None
    for depth in sorted(by_depth, reverse=True):
        if not keeps(by_depth[depth], reference, fraction, higher_is_better):
            break
        limit = depth
    return limit
