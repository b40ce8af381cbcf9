"""Deployment benchmark: the ways to run a generator on a CPU, timed in one run.

    python -m benchmarks.deploy [--threads 1,2] [--depths 2,4,8,16,64] [--quick] [--json OUT] [--int8-variants]

For students d = 2, 4, 8, 16 and a d = 64 teacher (32x32x1 images, latent 100, as the committed
MNIST results; untrained networks with settled BatchNorm statistics, which time like trained
ones), per thread count: PyTorch eager (the plain network, ``generator.net(z.view(n, -1, 1, 1))``,
BatchNorm unfolded), gankd's fastest PyTorch path (the eval-mode ``Generator``, which folds
BatchNorm), ONNX Runtime float32 and both int8 layouts (``gankd export --int8``: the first
layer; ``--int8-convs``: the hidden layers too, as sub-pixel convolutions; plain ``InferenceSession``s with
numpy input, as a deployment runs them). Latency p50/p95 at batch 1, throughput at batch 64,
file sizes, and the issue's targets as same-run ratios. Timing is ``gankd.export.time_paths``
(the code behind ``gankd export --bench``): rounds that visit every path in turn.

``--int8-variants`` instead compares the int8 choices (QDQ or QOperator, per-tensor or
per-channel weights) with the float model: size, difference to PyTorch, speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import save as st_save  # noqa: E402

from benchmarks.measure import machine_description, settled_generator  # noqa: E402
from gankd.export import (FLOAT_TOLERANCE, ROUND_SECONDS, ROUNDS, Tolerance, deployment_paths, onnx_bytes,  # noqa: E402
                          onnx_runner, parity, quantize_int8, time_paths)
from gankd.models import Architecture  # noqa: E402

DEPTHS = (2, 4, 8, 16, 64)
TEACHER_DEPTH = 64
TARGET_DEPTH = 8
# The issues' targets for the d=8 student, as same-run ratios (int8: at least as fast as float32, issue 27).
TARGETS = {"onnx_vs_eager_b1": 5.0, "onnx_vs_gankd_b64": 1.0, "int8_vs_float_b1": 1.0, "int8_vs_float_b64": 1.0}
INT8_LAYOUTS = {"int8": False, "int8 convs": True}  # label -> sub-pixel hidden layers (gankd export --int8 / --int8-convs)
REPORT_ONLY = Tolerance(max_abs=math.inf, mse=math.inf)  # the difference is reported; gankd export judges int8 by quality


def bench_network(depth: int, threads: int, rounds: int, round_seconds: float) -> dict[str, Any]:
    arch = Architecture(depth, image_size=32, channels=1, latent_dim=100)
    generator = settled_generator(arch, torch.device("cpu"), seed=depth)
    float_model = onnx_bytes(generator)
    int8_models = {label: quantize_int8(onnx_bytes(generator, subpixel=convs), arch.latent_dim) for label, convs in INT8_LAYOUTS.items()}
    differences = {"float32": parity(generator, float_model, f"d={depth} float32", FLOAT_TOLERANCE)}
    differences |= {label: parity(generator, model, f"d={depth} {label}", REPORT_ONLY) for label, model in int8_models.items()}
    timings = time_paths(deployment_paths(generator, float_model, int8_models, threads), arch.latent_dim, rounds, round_seconds)
    return {
        "depth": depth,
        "threads": threads,
        "bytes": {"safetensors": len(st_save({k: v.contiguous() for k, v in generator.state_dict().items()})),
                  "onnx float32": len(float_model), **{f"onnx {label}": len(model) for label, model in int8_models.items()}},
        "max_abs_diff": {k: v[0] for k, v in differences.items()},
        "timings": timings,
    }


def bench_int8_variants(depth: int, threads: int, rounds: int, round_seconds: float) -> str:
    """One table: the float model and each int8 variant of one network, timed in one run."""
    arch = Architecture(depth, image_size=32, channels=1, latent_dim=100)
    generator = settled_generator(arch, torch.device("cpu"), seed=depth)
    subpixel = onnx_bytes(generator, subpixel=True)
    models = {"float32": onnx_bytes(generator)}
    for quant_format in ("QDQ", "QOperator"):
        for per_channel in (False, True):
            label = f"int8 {quant_format} {'per-channel' if per_channel else 'per-tensor'}"
            models[label] = quantize_int8(subpixel, arch.latent_dim, per_channel=per_channel, quant_format=quant_format)
    paths = {label: onnx_runner(data, threads) for label, data in models.items()}
    timings = time_paths(paths, arch.latent_dim, rounds, round_seconds)
    lines = [f"d={depth}, {threads} thread(s):", "| model | bytes | max diff | MSE | p50 ms (b=1) | img/s (b=64) |", "|---|---:|---:|---:|---:|---:|"]
    for label, data in models.items():
        max_diff, mse = parity(generator, data, label, FLOAT_TOLERANCE if label == "float32" else REPORT_ONLY)
        t = timings[label]
        lines.append(f"| {label} | {len(data):,} | {max_diff:.2g} | {mse:.2g} | {t['latency_ms_p50']:.4f} | {t['images_per_s']:,.0f} |")
    return "\n".join(lines)


def ratios(row: dict[str, Any]) -> dict[str, float]:
    t = row["timings"]
    float32 = t["onnxruntime float32"]
    out = {
        "onnx_vs_eager_b1": t["pytorch eager"]["latency_ms_p50"] / float32["latency_ms_p50"],
        "onnx_vs_gankd_b1": t["gankd pytorch"]["latency_ms_p50"] / float32["latency_ms_p50"],
        "onnx_vs_eager_b64": float32["images_per_s"] / t["pytorch eager"]["images_per_s"],
        "onnx_vs_gankd_b64": float32["images_per_s"] / t["gankd pytorch"]["images_per_s"],
    }
    for label in INT8_LAYOUTS:  # "int8" -> int8_vs_float_b1, "int8 convs" -> int8_convs_vs_float_b1
        key, int8 = label.replace(" ", "_"), t[f"onnxruntime {label}"]
        out[f"{key}_vs_float_b1"] = float32["latency_ms_p50"] / int8["latency_ms_p50"]
        out[f"{key}_vs_float_b64"] = int8["images_per_s"] / float32["images_per_s"]
    return out


def format_report(results: dict[str, Any]) -> str:
    lines = [f"{results['machine']['description']}; 32x32x1 images, latent 100; {results['date']}", ""]
    lines.append("| network | threads | path | p50 ms (batch 1) | p95 ms | img/s (batch 64) | img/s, fastest call | file bytes |")
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|")
    files = {"pytorch eager": "safetensors", "gankd pytorch": "safetensors", "onnxruntime float32": "onnx float32",
             **{f"onnxruntime {label}": f"onnx {label}" for label in INT8_LAYOUTS}}
    for row in results["rows"]:
        name = "teacher d=64" if row["depth"] == TEACHER_DEPTH else f"student d={row['depth']}"
        for path, t in row["timings"].items():
            lines.append(f"| {name} | {row['threads']} | {path} | {t['latency_ms_p50']:.4f} | {t['latency_ms_p95']:.4f} | "
                         f"{t['images_per_s']:,.0f} | {t['images_per_s_best']:,.0f} | {row['bytes'][files[path]]:,} |")
    lines += ["", "Same-run ratios (ONNX Runtime float32 against PyTorch eager and gankd's PyTorch path; int8 against float32):", ""]
    lines.append("| network | threads | ORT/eager b=1 | ORT/gankd b=1 | ORT/eager b=64 | ORT/gankd b=64 | int8/float b=1 | int8/float b=64 "
                 "| int8 convs/float b=1 | int8 convs/float b=64 | max diff float / int8 / int8 convs |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in results["rows"]:
        r = ratios(row)
        name = "teacher d=64" if row["depth"] == TEACHER_DEPTH else f"student d={row['depth']}"
        lines.append(f"| {name} | {row['threads']} | {r['onnx_vs_eager_b1']:.2f}x | {r['onnx_vs_gankd_b1']:.2f}x | {r['onnx_vs_eager_b64']:.2f}x | "
                     f"{r['onnx_vs_gankd_b64']:.2f}x | {r['int8_vs_float_b1']:.2f}x | {r['int8_vs_float_b64']:.2f}x | "
                     f"{r['int8_convs_vs_float_b1']:.2f}x | {r['int8_convs_vs_float_b64']:.2f}x | "
                     f"{row['max_abs_diff']['float32']:.1e} / {row['max_abs_diff']['int8']:.2g} / {row['max_abs_diff']['int8 convs']:.2g} |")
    targets = [row for row in results["rows"] if row["depth"] == TARGET_DEPTH]
    if targets:
        lines += ["", f"Targets (student d={TARGET_DEPTH}):"]
        labels = {"onnx_vs_eager_b1": "ONNX Runtime vs PyTorch eager, batch 1",
                  "onnx_vs_gankd_b64": "ONNX Runtime vs gankd's fastest PyTorch path, batch 64",
                  "int8_vs_float_b1": "int8 (gankd export --int8) vs ONNX float32, batch 1",
                  "int8_vs_float_b64": "int8 (gankd export --int8) vs ONNX float32, batch 64"}
        for row in targets:
            r = ratios(row)
            for key, target in TARGETS.items():
                lines.append(f"  {row['threads']} thread(s): {labels[key]}: {r[key]:.2f}x (target >= {target:g}x: {'met' if r[key] >= target else 'NOT met'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (torch and ONNX Runtime alike)")
    parser.add_argument("--depths", default=",".join(map(str, DEPTHS)), help="generator depths (64 is the teacher)")
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke test; figures are noisier)")
    parser.add_argument("--int8-variants", action="store_true", help="compare the int8 variants instead (printed, no JSON)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("deploy.json"), metavar="OUT", help="where to write the results")
    args = parser.parse_args(argv)
    rounds, round_seconds = (2, 0.02) if args.quick else (ROUNDS, ROUND_SECONDS)
    if args.int8_variants:
        print(machine_description(torch.device("cpu"))["description"])
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for depth in (int(d) for d in args.depths.split(",")):
                print(bench_int8_variants(depth, threads, rounds, round_seconds) + "\n")
        return 0
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.deploy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_description(torch.device("cpu")),
        "settings": {"image_size": 32, "channels": 1, "latent_dim": 100, "rounds": rounds, "round_seconds": round_seconds},
        "rows": [],
    }
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for depth in (int(d) for d in args.depths.split(",")):
            start = time.perf_counter()
            results["rows"].append(bench_network(depth, threads, rounds, round_seconds))
            print(f"[d={depth}, {threads} thread(s): {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["machine"]["description"] = results["machine"]["description"].replace(f"{results['machine']['torch_threads']} torch thread(s), ", "")
    print(format_report(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
