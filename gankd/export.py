"""Ship a generator: ``gankd export`` to ONNX, float32 or int8, checked against PyTorch on export.

The exported graph is the eval-mode generator in the form ONNX Runtime runs fastest on a CPU
(measured; benchmarks/README.md): BatchNorm folded into the convolutions (:func:`fold_batchnorm`),
the 1x1-input first layer one Gemm, then transposed convolutions, ReLU, and tanh. Input ``z``
(N x latent, N dynamic), output ``images`` (N, C, S, S) in [-1, 1]. The model's metadata
(``metadata_props["gankd"]``, JSON) holds the architecture, the latent size, the gankd version,
the source checkpoint's name and SHA-256, and the run's dataset, method and teacher.

int8 (``--int8``) is ONNX Runtime's static post-training quantisation, calibrated on latents (a
generator needs no data), in QDQ format. By default only the first layer (a Gemm, which holds most
of a student's weights) is quantised: the file is 2-3x smaller for students and no slower than
float32 (measured, README). ONNX Runtime has no int8 kernel for transposed convolutions on the CPU
(a quantised ConvTranspose runs in float between Dequantize and Quantize nodes), so
``--int8-convs`` also rewrites each hidden layer as a sub-pixel convolution
(:func:`subpixel_kernel` + DepthToSpace) that runs as an int8 QLinearConv: the smallest file, but it
does 2.25x the multiply-adds and was slower than float32 at batch 1 for small students here. The
output layer (1 or 3 channels, memory-bound) and tanh stay float.

Every export runs the written graph under ONNX Runtime before writing it. float32 is compared
pixel for pixel with gankd's PyTorch generator. int8 is lossy by design, so it is judged by what a
user reads, against the float generator on fixed latents: fidelity (PSNR), and the Inception Score
for MNIST digit generators or the FID between the int8 and float images otherwise
(:data:`INT8_QUALITY`). An int8 export also times itself against float32 and says when float32 is
the better file. Beyond a tolerance the export fails and writes nothing.
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
from gankd.metrics.features import extract
from gankd.metrics.fidelity import teacher_fidelity
from gankd.metrics.frechet import frechet_distance, gaussian_statistics
from gankd.metrics.inception_score import inception_score, probabilities
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


@dataclass(frozen=True)
class QualityTolerance:
    """How far an int8 model may move what a user measures, against the float generator on the
    same QUALITY_SEED latents (images in [-1, 1])."""

    psnr_db: float  # fidelity: PSNR of the int8 images to the float ones, at least
    is_change: float  # MNIST digit generators: |IS_int8 / IS_float - 1| (digit classifier), at most
    fid: float  # other generators: FID between the int8 and the float images (Inception), at most


# Measured on trained generators (README, Export and deployment): PSNR 33-40 dB, IS change under
# 0.3%, FID(int8, float) under 0.5. A student's own PSNR to its teacher is 11-17 dB.
INT8_QUALITY = QualityTolerance(psnr_db=30.0, is_change=0.01, fid=2.0)
QUALITY_SEED = 0
QUALITY_SAMPLES = 1000
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
    """Static int8 quantisation of a float graph from :func:`onnx_bytes`, calibrated by min/max on
    CALIBRATION_LATENTS seeded latents: uint8 activations, int8 weights. Transposed convolutions
    and tanh stay float, so the plain graph gets its first layer quantised and the sub-pixel one
    (``subpixel=True``) its hidden layers too."""
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


def int8_quality(generator: nn.Module, int8_generator: nn.Module, meta: dict[str, Any], samples: int, name: str) -> dict[str, float]:
    """What int8 changed, on ``samples`` latents of QUALITY_SEED against the float ``generator``:
    fidelity (MSE, PSNR), and the digit-classifier Inception Score of both for MNIST digit
    generators, or the FID between their images (Inception) for any other. A GankdError beyond
    INT8_QUALITY."""
    from gankd.metrics.evaluate import feature_networks, is_digit_generator
    from gankd.metrics.registry import IS_SPLITS

    if samples < IS_SPLITS:
        raise GankdError(f"--check-samples must be at least {IS_SPLITS}, got {samples}")
    latent_dim, tol = meta["arch"]["latent_dim"], INT8_QUALITY
    fidelity = teacher_fidelity(int8_generator, generator, samples, seed=QUALITY_SEED, latent_dim=latent_dim)
    quality = {"samples": samples, "mse": fidelity["mse"], "psnr_db": fidelity["psnr"]}
    failed = [] if fidelity["psnr"] >= tol.psnr_db else [f"PSNR to float32 {fidelity['psnr']:.1f} dB (at least {tol.psnr_db:g})"]
    digits = is_digit_generator(meta)
    networks = {key: network for key, (_, network) in
                feature_networks({"logits"} if digits else {"inception"}, meta, torch.device("cpu"), None, None).items()}
    features = [extract(g, networks, samples, "cpu", QUALITY_SEED, desc=f"{label} images", latent_dim=latent_dim)
                for label, g in (("float32", generator), ("int8", int8_generator))]
    if digits:
        scores = [inception_score(probabilities(f["logits"]), IS_SPLITS)[0] for f in features]
        quality.update(is_float32=scores[0], is_int8=scores[1], is_change=scores[1] / scores[0] - 1)
        if not abs(quality["is_change"]) <= tol.is_change:
            failed.append(f"IS {scores[1]:.3f} against float32's {scores[0]:.3f} ({quality['is_change']:+.2%}; at most ±{tol.is_change:.0%})")
    else:
        quality["fid_to_float32"] = frechet_distance(*gaussian_statistics(features[0]["inception"]),
                                                     *gaussian_statistics(features[1]["inception"]))
        if not quality["fid_to_float32"] <= tol.fid:
            failed.append(f"FID to float32's images {quality['fid_to_float32']:.2f} (at most {tol.fid:g})")
    if failed:
        raise GankdError(f"{name}: int8 quality check failed on {samples} latents: {'; '.join(failed)}; nothing written "
                         "(export float32 without --int8)")
    return quality


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    path: Path
    precision: str  # "float32" or "int8"
    file_bytes: int
    opset: int
    data: bytes = field(repr=False)
    max_abs_diff: float | None = None  # float32: on PARITY_LATENTS fixed latents, against gankd's PyTorch generator
    mse: float | None = None  # float32: mean squared pixel difference, same images
    quality: dict[str, float] | None = None  # int8: int8_quality against the float generator
    speed: dict[str, dict[str, float]] | None = None  # int8: time_paths of ONNX Runtime float32 and int8
    float32: "ExportResult | None" = None  # with --int8: the float model, checked but not written


def export_generator(checkpoint: str | Path, out: str | Path, int8: bool = False, int8_convs: bool = False,
                     opset: int = DEFAULT_OPSET, check_samples: int = QUALITY_SAMPLES) -> ExportResult:
    """Export a gankd checkpoint's generator to ``out`` (float32; int8 with ``int8`` or
    ``int8_convs``), run its check, and write the file only if it passes. An int8 export also
    times the int8 and float32 models against each other."""
    checkpoint, out = Path(checkpoint), Path(out)
    require_onnx("export")
    if opset not in OPSETS:
        raise GankdError(f"--opset: must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    generator, meta = load_generator(checkpoint)
    if not isinstance(generator, Generator):
        raise GankdError(f"{checkpoint}: export takes a gankd checkpoint (.safetensors); this is already a {meta['format']} file")
    data = with_metadata(onnx_bytes(generator, subpixel=False, opset=opset), _export_metadata(generator, meta, checkpoint, "float32"))
    max_diff, mse = parity(generator, data, str(out), FLOAT_TOLERANCE)
    result = ExportResult(out, "float32", len(data), _opset(data), data, max_abs_diff=max_diff, mse=mse)
    if int8 or int8_convs:
        latent_dim = generator.arch.latent_dim
        int8_meta = _export_metadata(generator, meta, checkpoint, "int8") | {"int8_layers": "first and hidden" if int8_convs else "first"}
        data = with_metadata(quantize_int8(onnx_bytes(generator, subpixel=int8_convs, opset=opset), latent_dim), int8_meta)
        int8_generator, _ = onnx_generator_from_bytes(data, str(out))
        quality = int8_quality(generator, int8_generator, meta, check_samples, str(out))
        threads = torch.get_num_threads()
        speed = time_paths({"onnxruntime float32": onnx_runner(result.data, threads), "onnxruntime int8": onnx_runner(data, threads)},
                           latent_dim, rounds=CHECK_ROUNDS, round_seconds=CHECK_ROUND_SECONDS)
        result = ExportResult(out, "int8", len(data), _opset(data), data, quality=quality, speed=speed, float32=result)
    atomic_write_bytes(out, result.data)
    return result


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
CHECK_ROUNDS, CHECK_ROUND_SECONDS = 5, 0.1  # the int8-vs-float timing of every int8 export: about 2 s
SAME_SPEED = 0.95  # a speed ratio above this is within the timing noise of a shared CPU (measured)


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
    call; and, as "best", from the fastest, which load on a shared machine disturbs least), measured in
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
            "latency_ms_best": float(latency.min()),
            "images_per_s": THROUGHPUT_BATCH / statistics.median(seconds[(name, THROUGHPUT_BATCH)]),
            "images_per_s_best": THROUGHPUT_BATCH / min(seconds[(name, THROUGHPUT_BATCH)]),
        }
    return results


def bench_exported(checkpoint: str | Path, result: ExportResult) -> dict[str, dict[str, float]]:
    """``gankd export --bench``: :func:`time_paths` over :func:`deployment_paths` of the exported
    generator, with torch's thread count (``OMP_NUM_THREADS``) on both sides."""
    generator, _ = load_generator(checkpoint)
    float_model = (result.float32 or result).data
    int8_models = {"int8": result.data} if result.precision == "int8" else {}
    paths = deployment_paths(generator, float_model, int8_models, torch.get_num_threads())
    return time_paths(paths, generator.arch.latent_dim)


def deployment_paths(generator: Generator, float_model: bytes, int8_models: dict[str, bytes], threads: int) -> dict[str, Callable]:
    """The ways to run one generator that the deployment benchmark compares: PyTorch eager (the
    plain network, BatchNorm unfolded), gankd's fastest PyTorch path (the eval-mode
    ``Generator``, i.e. ``FoldedGenerator``), ONNX Runtime float32, and each int8 model by its
    label ("onnxruntime LABEL")."""
    generator = generator.eval()
    paths = {
        "pytorch eager": torch_runner(lambda z: generator.net(z.view(z.shape[0], -1, 1, 1))),
        "gankd pytorch": torch_runner(generator),
        "onnxruntime float32": onnx_runner(float_model, threads),
    }
    paths.update({f"onnxruntime {label}": onnx_runner(model, threads) for label, model in int8_models.items()})
    return paths


# --------------------------------------------------------------------------- reports


def format_export(result: ExportResult) -> str:
    """What ``gankd export`` prints: the file and its check; for int8 also the float model's
    size and parity, the quality kept, and the speed against float32 with a verdict."""
    def parity_line(r: ExportResult) -> str:
        return (f"float32  {r.file_bytes:>12,} bytes   max |ONNX Runtime - PyTorch| {r.max_abs_diff:.3g}   MSE {r.mse:.3g}   "
                f"on {PARITY_LATENTS} fixed latents (tolerance {FLOAT_TOLERANCE.max_abs:g}, MSE {FLOAT_TOLERANCE.mse:g})")
    lines = [f"wrote {result.path} ({result.precision}, opset {result.opset})"]
    if result.float32 is None:
        return "\n".join(lines + [parity_line(result)])
    q, tol = result.quality, INT8_QUALITY
    lines.append(parity_line(result.float32) + "   not written")
    score = (f"IS {q['is_int8']:.3f} against {q['is_float32']:.3f} ({q['is_change']:+.2%}; at most ±{tol.is_change:.0%})"
             if "is_change" in q else f"FID to float32's images {q['fid_to_float32']:.3f} (at most {tol.fid:g})")
    lines.append(f"int8     {result.file_bytes:>12,} bytes   against float32 on {q['samples']:,} fixed latents: PSNR {q['psnr_db']:.1f} dB "
                 f"(MSE {q['mse']:.2g}; at least {tol.psnr_db:g} dB), {score}")
    lines.append(int8_verdict(result))
    return "\n".join(lines)


def int8_verdict(result: ExportResult) -> str:
    """The int8 model's measured speed and size against float32, and which of the two to ship.
    Speeds are from the fastest calls, which load on a shared CPU disturbs least."""
    fast, small = result.speed["onnxruntime float32"], result.speed["onnxruntime int8"]
    latency = fast["latency_ms_best"] / small["latency_ms_best"]  # above 1: int8 is faster
    throughput = small["images_per_s_best"] / fast["images_per_s_best"]
    smaller = result.float32.file_bytes / result.file_bytes
    measured = (f"int8 against float32 here ({torch.get_num_threads()} thread(s)): {latency:.2f}x the speed at batch 1 "
                f"({small['latency_ms_best'] * 1000:.1f} against {fast['latency_ms_best'] * 1000:.1f} µs), {throughput:.2f}x the "
                f"throughput at batch 64, a {smaller:.1f}x smaller file")
    slower = [f"batch {batch}" for batch, ratio in ((1, latency), (64, throughput)) if ratio < SAME_SPEED]
    if slower:
        return f"{measured}.\nfloat32 is faster on this machine at {' and '.join(slower)}: ship float32 (no --int8) unless file size matters more."
    return f"{measured}: int8 is no slower here, so it is the better file."


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
