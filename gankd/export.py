"""Ship a generator: ``gankd export`` to ONNX, float32 or int8, checked against PyTorch on export.

The exported graph is the eval-mode generator in the form ONNX Runtime runs fastest on a CPU
(measured; benchmarks/README.md): BatchNorm folded into the convolutions (:func:`fold_batchnorm`),
the 1x1-input first layer one Gemm, then transposed convolutions, ReLU, and tanh. Input ``z``
(N x latent, N dynamic), output ``images`` (N, C, S, S) in [-1, 1]. The model's metadata
(``metadata_props["gankd"]``, JSON) holds the architecture, the latent size, the gankd version,
the source checkpoint's name and SHA-256, and the run's dataset, method and teacher.

int8 (``--int8``) is ONNX Runtime's static post-training quantisation, calibrated on latents (a
generator needs no data), in QDQ format. ONNX Runtime has no int8 kernel for transposed
convolutions on the CPU (a quantised ConvTranspose runs in float between Dequantize and Quantize
nodes), so the int8 graph computes each hidden layer as a sub-pixel convolution
(:func:`subpixel_kernel` + DepthToSpace), which runs as an int8 QLinearConv; the output layer
(1 or 3 channels, memory-bound) and tanh stay float.

Every export runs the written graph under ONNX Runtime and gankd's PyTorch generator on the same
fixed latents and compares the images; beyond the tolerance it fails and writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gankd.checkpoint import load_generator
from gankd.errors import GankdError
from gankd.files import atomic_write_bytes
from gankd.models import Generator, fold_batchnorm, multiply_adds, subpixel_kernel
from gankd.onnx_generator import FORMAT, METADATA_KEY, onnx_generator_from_bytes, require_onnx, session_options
from gankd.sampling import sample_latents

DEFAULT_OPSET = 17
OPSETS = range(13, 21)  # 13: per-channel QDQ; 20: the highest torch.onnx's TorchScript exporter writes
PARITY_SEED = 0
PARITY_LATENTS = 256


@dataclass(frozen=True)
class Tolerance:
    """The largest |ONNX - PyTorch| pixel difference and mean squared difference accepted on
    the parity latents (images in [-1, 1])."""

    max_abs: float
    mse: float


# float32: up to 3e-6 measured (1.3e-7 untrained); the margin is for other CPUs' kernels.
FLOAT_TOLERANCE = Tolerance(max_abs=1e-4, mse=1e-10)
# int8: MSE 1.2-1.7e-4 and max 0.22-0.33 measured on trained MNIST generators (a d=8 student, a
# d=32 teacher), whose students' MSE to their teacher is 0.02-0.13. The MSE bound is the real test
# (drift); the max only catches flipped pixels.
INT8_TOLERANCE = Tolerance(max_abs=1.0, mse=1e-3)
CALIBRATION_SEED = 1
CALIBRATION_LATENTS = 1024
CALIBRATION_BATCH = 64


# --------------------------------------------------------------------------- the exported network


class ExportNetwork(nn.Module):
    """The eval-mode generator as exported: folded BatchNorm, the first layer a matrix product.

    ``subpixel``: hidden layers as 3x3 convolutions giving the four output phases, interleaved by
    ``pixel_shuffle`` (ONNX DepthToSpace); used by the int8 graph. The output layer is always a
    transposed convolution, and tanh is ONNX's Tanh (2% of a d=8 student's time in ONNX Runtime:
    the PyTorch fast path's sigmoid form would gain nothing).
    """

    def __init__(self, generator: Generator, subpixel: bool):
        super().__init__()
        layers = fold_batchnorm(generator)
        (w, b), hidden, (w_out, b_out) = layers[0], layers[1:-1], layers[-1]
        self.first_channels = w.shape[1]
        self.register_buffer("weight0", w.reshape(w.shape[0], -1).clone())  # (latent, C * 4 * 4)
        self.register_buffer("bias0", b.repeat_interleave(w.shape[2] * w.shape[3]).clone())
        self.subpixel = subpixel
        for i, (w, b) in enumerate(hidden, start=1):
            if subpixel:  # phases from (a, b, c) to (c, a, b) channel order: pixel_shuffle's
                c_out = w.shape[1]
                k = subpixel_kernel(w)
                w = k.view(4, c_out, *k.shape[1:]).transpose(0, 1).reshape(4 * c_out, *k.shape[1:])
                b = b.repeat_interleave(4)
            self.register_buffer(f"weight{i}", w.contiguous())
            self.register_buffer(f"bias{i}", b.contiguous())
        self.num_hidden = len(hidden)
        self.register_buffer("weight_out", w_out.contiguous())
        self.register_buffer("bias_out", b_out.contiguous())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(torch.addmm(self.bias0, z, self.weight0)).view(-1, self.first_channels, 4, 4)
        for i in range(1, self.num_hidden + 1):
            weight, bias = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
            if self.subpixel:
                x = F.pixel_shuffle(torch.relu(F.conv2d(x, weight, bias, padding=1)), 2)
            else:
                x = torch.relu(F.conv_transpose2d(x, weight, bias, stride=2, padding=1))
        return torch.tanh(F.conv_transpose2d(x, self.weight_out, self.bias_out, stride=2, padding=1))


def onnx_bytes(generator: Generator, subpixel: bool = False, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised float32 graph of an eval-mode generator (dynamic batch).

    torch.onnx's TorchScript-based exporter (``dynamo=False``): it needs no onnxscript and gives
    the same parity as the torch.export-based one on these networks (1.3e-7, measured) in a
    fraction of the time. It is deprecated upstream; torch is pinned (2.13) here.
    """
    network = ExportNetwork(generator, subpixel).eval()
    z = torch.zeros(2, generator.arch.latent_dim)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(network, (z,), buffer, input_names=["z"], output_names=["images"],
                          dynamic_axes={"z": {0: "batch"}, "images": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------- int8


class _LatentBatches:
    """onnxruntime.quantization's CalibrationDataReader protocol over seeded latents."""

    def __init__(self, input_name: str, latent_dim: int):
        latents = sample_latents(CALIBRATION_LATENTS, latent_dim, CALIBRATION_SEED).numpy()
        self.batches = iter([{input_name: part} for part in np.split(latents, CALIBRATION_LATENTS // CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8(float_model: bytes, latent_dim: int, per_channel: bool = False, quant_format: str = "QDQ") -> bytes:
    """Static int8 quantisation of a sub-pixel float graph (``onnx_bytes(..., subpixel=True)``),
    calibrated by min/max on CALIBRATION_LATENTS seeded latents: uint8 activations, int8
    weights; the output layer and tanh are left in float."""
    onnx, _ = require_onnx("--int8")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load_model_from_string(float_model)
    keep_float = [node.name for node in model.graph.node if node.op_type in ("ConvTranspose", "Tanh")]
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="gankd-int8-") as tmp:
        source, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(float_model)  # a path: quantize_static rewrites a ModelProto it is given
        root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) does not apply here
        try:
            quantize_static(source, out, _LatentBatches(model.graph.input[0].name, latent_dim),
                            quant_format=QuantFormat[quant_format], per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
        finally:
            root.setLevel(level)
        return out.read_bytes()


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    path: Path
    precision: str  # "float32" or "int8"
    file_bytes: int
    max_abs_diff: float  # on PARITY_LATENTS fixed latents, against gankd's PyTorch generator
    mse: float  # mean squared pixel difference, same images
    tolerance: Tolerance
    opset: int
    data: bytes = field(repr=False)
    float32: "ExportResult | None" = None  # with --int8: the float model, checked but not written


def export_generator(checkpoint: str | Path, out: str | Path, int8: bool = False, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export a gankd checkpoint's generator to ``out`` (float32, or int8), run the parity check,
    and write the file only if it passes."""
    checkpoint, out = Path(checkpoint), Path(out)
    require_onnx("export")
    if opset not in OPSETS:
        raise GankdError(f"--opset: must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    generator, meta = load_generator(checkpoint)
    if not isinstance(generator, Generator):
        raise GankdError(f"{checkpoint}: export takes a gankd checkpoint (.safetensors); this is already a {meta['format']} file")
    float32 = _checked(generator, meta, checkpoint, out, onnx_bytes(generator, subpixel=False, opset=opset), "float32")
    if not int8:
        atomic_write_bytes(out, float32.data)
        return float32
    quantized = quantize_int8(onnx_bytes(generator, subpixel=True, opset=opset), generator.arch.latent_dim)
    result = _checked(generator, meta, checkpoint, out, quantized, "int8")
    result.float32 = float32
    atomic_write_bytes(out, result.data)
    return result


def _checked(generator: Generator, meta: dict[str, Any], checkpoint: Path, out: Path, data: bytes, precision: str) -> ExportResult:
    """The model with its metadata, through the parity check."""
    data = with_metadata(data, _export_metadata(generator, meta, checkpoint, precision))
    tolerance = INT8_TOLERANCE if precision == "int8" else FLOAT_TOLERANCE
    max_diff, mse = parity(generator, data, str(out), tolerance)
    return ExportResult(out, precision, len(data), max_diff, mse, tolerance, _opset(data), data)


def parity(generator: nn.Module, data: bytes, name: str, tolerance: Tolerance) -> tuple[float, float]:
    """(max |difference|, mean squared difference) between the serialised model under ONNX
    Runtime (loaded through the same checks as any ONNX file) and ``generator`` on
    PARITY_LATENTS latents of seed PARITY_SEED; a GankdError beyond the tolerance."""
    exported, meta = onnx_generator_from_bytes(data, name)
    z = sample_latents(PARITY_LATENTS, meta["arch"]["latent_dim"], PARITY_SEED)
    with torch.inference_mode():
        difference = (exported(z).double() - generator(z).double()).abs()
    max_diff, mse = float(difference.max()), float(difference.square().mean())
    if not (max_diff <= tolerance.max_abs and mse <= tolerance.mse):  # NaN fails too
        raise GankdError(f"{name}: parity check failed: ONNX Runtime's images differ from PyTorch's by up to {max_diff:.3g} "
                         f"(MSE {mse:.3g}; tolerance {tolerance.max_abs:g}, MSE {tolerance.mse:g}); nothing written")
    return max_diff, mse


def with_metadata(data: bytes, meta: dict[str, Any]) -> bytes:
    """The model with gankd's JSON metadata and a one-line description."""
    onnx, _ = require_onnx("export")
    model = onnx.load_model_from_string(data)
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    model.producer_name, model.producer_version = "gankd", meta["gankd_version"]
    model.doc_string = "gankd generator: z (N, latent) ~ N(0, I) -> images (N, C, S, S) in [-1, 1]"
    return model.SerializeToString()


def _export_metadata(generator: Generator, meta: dict[str, Any], checkpoint: Path, precision: str) -> dict[str, Any]:
    from gankd import __version__

    arch = generator.arch
    return {
        "format": FORMAT,
        "arch": arch.to_dict(),
        "latent_dim": arch.latent_dim,
        "precision": precision,
        "gankd_version": __version__,
        "source": {"file": checkpoint.name, "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()},
        "parameters": meta["parameters"],
        "multiply_adds": multiply_adds(generator, (arch.latent_dim,)),
        **{key: meta.get(key) for key in ("method", "loss", "step", "seed", "dataset", "teacher")},
    }


def _opset(data: bytes) -> int:
    onnx, _ = require_onnx("export")
    model = onnx.load_model_from_string(data)
    return max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


# --------------------------------------------------------------------------- deployment timing


LATENCY_BATCH = 1
THROUGHPUT_BATCH = 64
ROUNDS = 7
ROUND_SECONDS = 0.15


def torch_runner(forward: Callable[[torch.Tensor], Any]) -> Callable[[np.ndarray], Callable[[], Any]]:
    """A timing path: latents bound once as a tensor, then one forward per call."""
    def bind(z: np.ndarray) -> Callable[[], Any]:
        tensor = torch.from_numpy(z)
        return lambda: forward(tensor)
    return bind


def onnx_runner(data: bytes, threads: int) -> Callable[[np.ndarray], Callable[[], Any]]:
    """A timing path: a plain ONNX Runtime session (what a deployment runs), ``threads`` threads."""
    _, ort = require_onnx("ONNX Runtime")
    session = ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def bind(z: np.ndarray) -> Callable[[], Any]:
        feed = {name: z}
        return lambda: session.run(None, feed)
    return bind


def time_paths(paths: dict[str, Callable[[np.ndarray], Callable[[], Any]]], latent_dim: int,
               rounds: int = ROUNDS, round_seconds: float = ROUND_SECONDS) -> dict[str, dict[str, float]]:
    """Latency p50/p95 (ms) at batch 1 and images/s at batch 64 of each path (from the median
    call; and from the fastest, which load on a shared machine disturbs least), measured in
    ``rounds`` rounds that visit every path in turn (so load hits them alike), each path running
    ``round_seconds`` per batch size per round, after one warm-up call."""
    latents = {batch: sample_latents(batch, latent_dim, PARITY_SEED).numpy() for batch in (LATENCY_BATCH, THROUGHPUT_BATCH)}
    calls = {(name, batch): bind(latents[batch]) for name, bind in paths.items() for batch in latents}
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()
        for _ in range(rounds):
            for key, call in calls.items():
                start = time.perf_counter()
                while time.perf_counter() - start < round_seconds:
                    t = time.perf_counter()
                    call()
                    seconds[key].append(time.perf_counter() - t)
    results = {}
    for name in paths:
        latency = np.array(seconds[(name, LATENCY_BATCH)]) * 1000
        results[name] = {
            "latency_ms_p50": float(np.percentile(latency, 50)),
            "latency_ms_p95": float(np.percentile(latency, 95)),
            "images_per_s": THROUGHPUT_BATCH / statistics.median(seconds[(name, THROUGHPUT_BATCH)]),
            "images_per_s_best": THROUGHPUT_BATCH / min(seconds[(name, THROUGHPUT_BATCH)]),
        }
    return results


def bench_exported(checkpoint: str | Path, result: ExportResult) -> dict[str, dict[str, float]]:
    """``gankd export --bench``: :func:`time_paths` over :func:`deployment_paths` of the exported
    generator, with torch's thread count (``OMP_NUM_THREADS``) on both sides."""
    generator, _ = load_generator(checkpoint)
    float_model = (result.float32 or result).data
    int8_model = result.data if result.precision == "int8" else None
    paths = deployment_paths(generator, float_model, int8_model, torch.get_num_threads())
    return time_paths(paths, generator.arch.latent_dim)


def deployment_paths(generator: Generator, float_model: bytes, int8_model: bytes | None, threads: int) -> dict[str, Callable]:
    """The four ways to run one generator that the deployment benchmark compares: PyTorch eager
    (the plain network, BatchNorm unfolded), gankd's fastest PyTorch path (the eval-mode
    ``Generator``, i.e. ``FoldedGenerator``), ONNX Runtime float32 and int8."""
    generator = generator.eval()
    paths = {
        "pytorch eager": torch_runner(lambda z: generator.net(z.view(z.shape[0], -1, 1, 1))),
        "gankd pytorch": torch_runner(generator),
        "onnxruntime float32": onnx_runner(float_model, threads),
    }
    if int8_model is not None:
        paths["onnxruntime int8"] = onnx_runner(int8_model, threads)
    return paths


# --------------------------------------------------------------------------- reports


def format_export(result: ExportResult) -> str:
    """What ``gankd export`` prints: the file, its parity, and for int8 the float model beside it."""
    def line(r: ExportResult, label: str) -> str:
        return (f"{label:<8} {r.file_bytes:>12,} bytes   max |ONNX Runtime - PyTorch| {r.max_abs_diff:.3g}   "
                f"MSE {r.mse:.3g}   (tolerance {r.tolerance.max_abs:g}, MSE {r.tolerance.mse:g})")
    lines = [f"wrote {result.path} ({result.precision}, opset {result.opset}); parity on {PARITY_LATENTS} fixed latents (seed {PARITY_SEED}):"]
    if result.float32 is not None:
        lines.append(line(result.float32, "float32") + "   not written")
    lines.append(line(result, result.precision))
    return "\n".join(lines)


def format_timings(timings: dict[str, dict[str, float]], threads: int) -> str:
    """A table of :func:`time_paths` results with same-run ratios: batch-1 latency against PyTorch
    eager, batch-64 throughput against gankd's PyTorch path."""
    eager, fast = timings["pytorch eager"], timings["gankd pytorch"]
    lines = [f"{'path':<22}{'p50 ms (b=1)':>14}{'p95 ms':>10}{'vs eager':>10}{'img/s (b=64)':>14}{'vs gankd':>10}   ({threads} thread(s))"]
    for name, t in timings.items():
        lines.append(f"{name:<22}{t['latency_ms_p50']:>14.4f}{t['latency_ms_p95']:>10.4f}"
                     f"{eager['latency_ms_p50'] / t['latency_ms_p50']:>9.2f}x{t['images_per_s']:>14,.0f}"
                     f"{t['images_per_s'] / fast['images_per_s']:>9.2f}x")
    return "\n".join(lines)
