"""What a generator costs to store and run: the figures that motivate compressing it."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch
from torch import nn

from gankd.models import count_parameters, multiply_adds

THROUGHPUT_BATCH = 256
MIN_REPEATS = 3
MIN_SECONDS = 1.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds_per_batch(generator: nn.Module, batch: int, latent_dim: int, device: torch.device) -> float:
    """Median wall time of one forward pass, after one warm-up pass (allocation, kernel
    selection); repeated at least MIN_REPEATS times and for at least MIN_SECONDS."""
    z = torch.randn(batch, latent_dim, device=device)
    times: list[float] = []
    with torch.inference_mode():
        generator(z)
        _synchronize(device)
        while len(times) < MIN_REPEATS or sum(times) < MIN_SECONDS:
            start = time.perf_counter()
            generator(z)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def generator_multiply_adds(generator: nn.Module, meta: dict[str, Any]) -> int | None:
    """Multiply-adds per image: the figure in ``meta`` where the loader gives one (an ONNX file
    gankd exported records its network's), else counted by hooks on the convolution layers.
    ``None`` when unknown: TorchScript layers take no hooks, a foreign ONNX graph records none."""
    if "multiply_adds" in meta:
        return meta["multiply_adds"]
    if isinstance(generator, torch.jit.ScriptModule):
        return None
    return multiply_adds(generator, (meta["arch"]["latent_dim"],))


def cost(generator: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu", teacher_parameters: int | None = None) -> dict[str, Any]:
    """Parameters, compression against the teacher, multiply-adds per image, checkpoint bytes,
    latency at batch 1 (ms) and throughput at batch 256 (images/s) on ``device``.

    The teacher's size is ``teacher_parameters`` or else the one recorded in a distilled
    student's metadata. The generator's own size is the one in ``meta`` (an ONNX generator's
    weights are not torch parameters), else counted; multiply-adds: :func:`generator_multiply_adds`.
    """
    device = torch.device(device)
    latent_dim = meta["arch"]["latent_dim"]
    parameters = meta["parameters"] if meta.get("parameters") else count_parameters(generator)
    teacher_parameters = teacher_parameters or (meta.get("teacher") or {}).get("parameters")
    path = meta.get("path")
    ratio = teacher_parameters / parameters if teacher_parameters else None
    return {
        "parameters": parameters,
        "teacher_parameters": teacher_parameters,
        "compression_ratio": ratio,
        "compression": f"{ratio:.0f}:1" if ratio else None,
        "multiply_adds": generator_multiply_adds(generator, meta),
        "checkpoint_bytes": os.path.getsize(path) if path and os.path.isfile(path) else None,
        "latency_ms_batch1": 1000 * seconds_per_batch(generator, 1, latent_dim, device),
        "images_per_s_batch256": THROUGHPUT_BATCH / seconds_per_batch(generator, THROUGHPUT_BATCH, latent_dim, device),
        "device": str(device),
    }
