"""The table of metrics: one entry per metric, read by ``gankd evaluate`` (what to compute and from
which networks' features), its printed table, the default metric list and the sweep report
(labels, and whether higher is better).

Adding a metric is one compute function, one row formatter and one :class:`Metric` entry in
``METRICS``; nothing else names metrics one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gankd.metrics.cost import cost
from gankd.metrics.fidelity import teacher_fidelity
from gankd.metrics.frechet import frechet_distance, gaussian_statistics, kernel_inception_distance
from gankd.metrics.inception_score import inception_score, probabilities
from gankd.metrics.precision_recall import NEIGHBOURS, precision_recall

IS_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class Inputs:
    """Everything a metric may read. ``generated`` holds each network's features of the N
    generated images; ``real`` each reference network's cached real features, mean and covariance."""

    generator: nn.Module
    meta: dict[str, Any]
    samples: int
    seed: int
    device: torch.device
    generated: Mapping[str, np.ndarray]
    real: Mapping[str, Mapping[str, np.ndarray]]
    network_ids: Mapping[str, str]
    reference_images: int | None
    teacher: nn.Module | None
    teacher_meta: dict[str, Any] | None


@dataclass(frozen=True)
class Column:
    """One number of a metric's result that a report compares across models."""

    name: str  # its column in a sweep's results, e.g. "fid", "precision"
    key: str  # its key in the metric's result
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class Metric:
    name: str
    networks: tuple[str, ...]  # feature networks whose outputs it reads: "logits", "digit", "inception"
    compute: Callable[[Inputs], dict[str, Any]]  # -> the JSON-ready result
    rows: Callable[[dict[str, Any]], list[tuple[str, str]]]  # result -> (label, value) lines of the table
    columns: tuple[Column, ...]
    default_for: str  # "digits" (1-channel MNIST generators), "images" (every other), "teacher" (when given), "always"
    needs_teacher: bool = False


def number(value: float | int | None, digits: int = 3) -> str:
    """A table cell: thousands separators, ``digits`` decimals (significant digits below 1)."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.{digits}g}"


# ----------------------------------------------------------------------------------- each metric


def _inception_score(x: Inputs) -> dict[str, Any]:
    mean, std = inception_score(probabilities(x.generated["logits"]), IS_SPLITS)
    return {"mean": mean, "std": std, "splits": IS_SPLITS, "samples": x.samples, "network": x.network_ids["logits"]}


def _frechet(network: str) -> Callable[[Inputs], dict[str, Any]]:
    def compute(x: Inputs) -> dict[str, Any]:
        real = x.real[network]
        value = frechet_distance(*gaussian_statistics(x.generated[network]), real["mu"], real["sigma"])
        return {"value": value, "samples": x.samples, "reference_images": x.reference_images, "network": x.network_ids[network]}

    return compute


def _kid(x: Inputs) -> dict[str, Any]:
    size = min(KID_SUBSET_SIZE, x.samples, x.reference_images or 0)
    subsets = 1 if size == x.samples == x.reference_images else KID_SUBSETS  # subsets of whole sets would all be the same
    mean, std = kernel_inception_distance(x.generated["inception"], x.real["inception"]["features"], subsets, size, x.seed)
    return {"mean": mean, "std": std, "subsets": subsets, "subset_size": size, "network": x.network_ids["inception"]}


def _kid_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    if r["subsets"] == 1:
        return [(f"KID x 1000 (all {r['subset_size']} against all {r['subset_size']})", f"{1000 * r['mean']:.2f}")]
    return [(f"KID x 1000 (mean ± sd over {r['subsets']} subsets of {r['subset_size']})", f"{1000 * r['mean']:.2f} ± {1000 * r['std']:.2f}")]


def _precision_recall(x: Inputs) -> dict[str, Any]:
    precision, recall = precision_recall(x.real["inception"]["features"], x.generated["inception"], NEIGHBOURS)
    return {"precision": precision, "recall": recall, "k": NEIGHBOURS, "samples": x.samples,
            "reference_images": x.reference_images, "network": x.network_ids["inception"]}  # fmt: skip


def _fidelity(x: Inputs) -> dict[str, Any]:
    return teacher_fidelity(x.generator, x.teacher, x.samples, x.device, x.seed, x.meta["arch"]["latent_dim"])


def _cost(x: Inputs) -> dict[str, Any]:
    return cost(x.generator, x.meta, x.device, teacher_parameters=(x.teacher_meta or {}).get("parameters"))


def _cost_rows(c: dict[str, Any]) -> list[tuple[str, str]]:
    teacher = f" (teacher {number(c['teacher_parameters'])})" if c["teacher_parameters"] else ""
    size = f"{c['checkpoint_bytes'] / 1e6:.2f} MB" if c["checkpoint_bytes"] is not None else "n/a"
    return [
        ("parameters", number(c["parameters"])),
        ("compression vs teacher", (c["compression"] or "n/a") + teacher),
        ("multiply-adds per image", number(c["multiply_adds"])),
        ("checkpoint size", size),
        (f"latency, batch 1 ({c['device']})", f"{c['latency_ms_batch1']:.3f} ms"),
        (f"throughput, batch 256 ({c['device']})", f"{c['images_per_s_batch256']:,.0f} images/s"),
    ]


# ------------------------------------------------------------------------------------- the table


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("is", ("logits",), _inception_score,
               lambda r: [(f"Inception Score, digit classifier ({r['splits']} splits)", f"{r['mean']:.3f} ± {r['std']:.3f}")],
               (Column("is", "mean", "IS", True),), "digits"),
        Metric("fid", ("inception",), _frechet("inception"),
               lambda r: [("FID, Inception pool3", number(r["value"], 2))],
               (Column("fid", "value", "FID", False),), "images"),
        Metric("kid", ("inception",), _kid,
               _kid_lines,
               (Column("kid", "mean", "KID", False),), "images"),
        Metric("pr", ("inception",), _precision_recall,
               lambda r: [(f"precision / recall (k = {r['k']}, Inception pool3)", f"{r['precision']:.3f} / {r['recall']:.3f}")],
               (Column("precision", "precision", "precision", True), Column("recall", "recall", "recall", True)), "images"),
        Metric("cfid", ("digit",), _frechet("digit"),
               lambda r: [("classifier FID (digit features)", number(r["value"], 3))],
               (Column("cfid", "value", "cFID", False),), "digits"),
        Metric("fidelity", (), _fidelity,
               lambda r: [(f"teacher MSE / PSNR ({number(r['samples'])} latents)", f"{r['mse']:.5f} / {r['psnr']:.2f} dB")],
               (Column("fidelity_mse", "mse", "fidelity MSE", False),), "teacher", needs_teacher=True),
        Metric("cost", (), _cost, _cost_rows, (), "always"),
    )
}  # fmt: skip


def default_metrics(digits: bool, has_teacher: bool) -> list[str]:
    """The paper's quality metric and its companions (IS and cFID for MNIST digit generators,
    FID, KID and precision/recall otherwise), fidelity when a teacher is known, and cost."""
    wanted = {"always", "digits" if digits else "images"} | ({"teacher"} if has_teacher else set())
    return [name for name, metric in METRICS.items() if metric.default_for in wanted]


# Every number a report can compare, from the registry above: column -> its Column (label,
# direction, key in its metric's result), and column -> the metric that produces it.
QUALITY = {column.name: column for metric in METRICS.values() for column in metric.columns}
METRIC_OF = {column.name: metric.name for metric in METRICS.values() for column in metric.columns}


def columns_of(metrics: list[str]) -> list[str]:
    """The report columns that evaluating ``metrics`` produces, in the registry's order."""
    return [column for column, metric in METRIC_OF.items() if metric in metrics]


def metric_value(evaluation: dict[str, Any], column: str) -> float | None:
    """The number of a report column in an evaluation (IS mean, FID value, fidelity MSE, ...)."""
    value = evaluation.get("metrics", {}).get(METRIC_OF[column], {}).get(QUALITY[column].key)
    return None if value is None else float(value)
