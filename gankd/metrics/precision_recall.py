"""Improved precision and recall of a generator (Kynkäänniemi et al., 2019, "Improved Precision and
Recall Metric for Assessing Generative Models", NeurIPS; arXiv:1904.06991).

Each set of feature vectors defines a manifold: the union of balls centred on its vectors, each
with the radius of the distance to that vector's k-th nearest neighbour within the set (k = 3,
the paper's choice). Then

    precision = fraction of generated vectors inside the real manifold  (are the samples realistic?)
    recall    = fraction of real vectors inside the generated manifold  (is the real data covered?)

"Inside" means at a distance <= the ball's radius from at least one centre, as in the authors'
code. The paper uses VGG-16 features; gankd uses the Inception pool features that FID uses, so
that one network pass and one cached reference set serve FID, KID and precision/recall.

Pure numpy on feature arrays, like :mod:`gankd.metrics.frechet`. Squared distances are computed
in float64 (|x|^2 + |y|^2 - 2 x.y loses digits in float32 when the vectors are long and close),
in blocks of rows so that memory stays bounded: 10,000 x 10,000 distances never exist at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gankd.errors import GankdError

NEIGHBOURS = 3  # the k of the paper
BLOCK_ROWS = 1024  # rows of a distance block: 1024 x 10,000 float64 = 80 MB


def _squared_distance_blocks(x: np.ndarray, y: np.ndarray, block_rows: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, block): squared Euclidean distances from x[rows] to every vector of y, float64,
    clamped at 0 (round-off can make |x|^2 + |y|^2 - 2 x.y of equal vectors slightly negative)."""
    y_norms = np.einsum("ij,ij->i", y, y)
    for start in range(0, len(x), block_rows):
        rows = slice(start, start + block_rows)
        block = x[rows]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + y_norms[None, :] - 2 * (block @ y.T)
        yield rows, np.maximum(d2, 0, out=d2)


def knn_radii(features: np.ndarray, k: int = NEIGHBOURS, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Squared distance from each vector to its k-th nearest neighbour in the same set (itself
    excluded; duplicates count as neighbours at distance 0)."""
    x = _as_features(features, "features")
    if len(x) <= k:
        raise GankdError(f"the k-th nearest neighbour (k = {k}) needs more than {k} vectors, got {len(x)}")
    radii = np.empty(len(x))
    for rows, d2 in _squared_distance_blocks(x, x, block_rows):
        # Each vector is its own nearest neighbour at distance ~0: the k-th other one is the
        # (k+1)-th smallest, index k.
        radii[rows] = np.partition(d2, k, axis=1)[:, k]
    return radii


def precision_recall(
    real: np.ndarray, generated: np.ndarray, k: int = NEIGHBOURS, block_rows: int = BLOCK_ROWS
) -> tuple[float, float]:
    """(precision, recall) of ``generated`` against ``real`` feature vectors, shapes (N, D) and (M, D).

    One pass over the generated-to-real distances answers both questions: a row block tells which
    generated vectors lie in some real ball (precision) and which real vectors lie in one of
    these generated vectors' balls (recall).
    """
    r, g = _as_features(real, "real features"), _as_features(generated, "generated features")
    if r.shape[1] != g.shape[1]:
        raise GankdError(f"feature sets do not match: shapes {r.shape} and {g.shape}")
    real_radii, generated_radii = knn_radii(r, k, block_rows), knn_radii(g, k, block_rows)
    realistic = np.zeros(len(g), bool)  # generated vectors inside the real manifold
    covered = np.zeros(len(r), bool)  # real vectors inside the generated manifold
    for rows, d2 in _squared_distance_blocks(g, r, block_rows):
        realistic[rows] = (d2 <= real_radii[None, :]).any(axis=1)
        covered |= (d2 <= generated_radii[rows, None]).any(axis=0)
    return float(realistic.mean()), float(covered.mean())


def _as_features(features: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise GankdError(f"{what} must be a non-empty (N, D) array, got shape {x.shape}")
    return x
