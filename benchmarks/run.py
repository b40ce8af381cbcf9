"""Benchmarks: gankd's four paths against a plain reference implementation of the same work.

    python -m benchmarks.run [--quick] [--json OUT] [--repeats N] [--device cpu|cuda] [--threads N]
                             [--only gan,mse,generation,evaluation,cuda] [--cpu-options]

Paths: (1) a GAN training step, WGAN-GP and non-saturating DCGAN losses; (2) an MSE distillation
step; (3) generation by students d = 2, 4, 8, 16 and their d = 64 teacher at batch 256, 64x64;
(4) evaluation: Inception feature extraction against the bare network's forward on the same
batch, and the digit-classifier metrics (IS and classifier FID) over 10,000 samples.

Each comparison runs in this one process and alternates (ABBA order) the project's path and the
reference (``benchmarks/reference.py``) ``--repeats`` times; figures are medians. Training runs
gankd's real loop, ``gankd.training.train``, and reads the images/s it logs per interval in
``metrics.csv``; the first interval of every run (start-up, allocator and oneDNN warm-up) is
dropped, on both sides. Peak memory is the growth of the process's resident set over one run on
the CPU (``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) and
``torch.cuda.max_memory_allocated`` on CUDA. With ``--device cuda``, bfloat16 autocast,
channels-last and ``torch.compile`` are compared as options of the project's path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.measure import alternate, machine_description, metrics_rates, settled_generator, timed_rate, write_teacher  # sets TQDM_DISABLE

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import reference  # noqa: E402
from gankd import checkpoint as ckpt  # noqa: E402
from gankd.config import OPTIMIZER_DEFAULTS, RunConfig  # noqa: E402
from gankd.data import ImageData, load_dataset  # noqa: E402
from gankd.models import Architecture, Critic, Generator, count_parameters, multiply_adds  # noqa: E402
from gankd.training import train  # noqa: E402

PATHS = ("gan", "mse", "generation", "evaluation", "cuda")
STUDENT_DEPTHS = (2, 4, 8, 16)
TEACHER_DEPTH = 64

# Targets of the issue, checked in the table's last column.
TARGETS = {"gan": 1.5, "mse": 2.0, "generation": 0.5, "inception_overhead": 0.15, "digit_seconds": 10.0}


# --------------------------------------------------------------------------- set-up helpers


def project_train(cfg_kwargs: dict[str, Any]) -> Callable[[], list[float]]:
    """One call: a fresh ``gankd.training.train`` run; its logged images/s after the first interval."""

    def run() -> list[float]:
        with tempfile.TemporaryDirectory(prefix="gankd-bench-") as tmp:
            out = Path(tmp) / "run"
            train(RunConfig(out=str(out), sample_every=10**9, checkpoint_every=10**9, **cfg_kwargs))
            return metrics_rates(out)

    return run


def check_same_networks(depth: int, image_size: int, channels: int, batch_norm: bool) -> None:
    arch = Architecture(depth, image_size, channels)
    pairs = [(reference.DCGANGenerator(depth, image_size, channels), Generator(arch)),
             (reference.DCGANCritic(depth, image_size, channels, batch_norm), Critic(arch, batch_norm))]
    for ref, ours in pairs:
        assert count_parameters(ref) == count_parameters(ours), f"reference {type(ref).__name__} differs from gankd's"


# --------------------------------------------------------------------------- the paths


def bench_gan(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    s, device = ctx["settings"], ctx["device"]
    rows = []
    for loss in ("wgan-gp", "dcgan"):
        check_same_networks(TEACHER_DEPTH, s["image_size"], 1, batch_norm=loss == "dcgan")
        opt = OPTIMIZER_DEFAULTS[loss]
        log_every = s["gan_log_every"][loss]
        steps = log_every * (s["intervals"] + 1)
        common = dict(depth=TEACHER_DEPTH, loss=loss, batch_size=s["batch_size"], steps=steps, log_every=log_every)
        runs = {  # both sides load MNIST inside the run, so that peak memory counts it on both
            "reference": lambda: reference.train_gan(load_dataset("mnist", None, s["image_size"], "train").images.numpy(),
                                                     critic_steps=opt["critic_steps"], lr=opt["lr"], betas=opt["betas"], device=device, **common)[1:],
            "project": project_train(dict(method="gan", dataset="mnist", image_size=s["image_size"], device=str(device), **common)),
        }
        result = alternate(runs, ctx["repeats"], device)
        rows.append(comparison_row(f"GAN training step, {loss}", f"d={TEACHER_DEPTH}, {s['image_size']}x{s['image_size']}x1, "
                                   f"batch {s['batch_size']}, {opt['critic_steps']} critic step(s)", result, "gan"))
    return rows


def bench_mse(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    s, device = ctx["settings"], ctx["device"]
    student = 8
    arch = Architecture(TEACHER_DEPTH, s["image_size"], 1, 100)
    opt = OPTIMIZER_DEFAULTS["mse"]
    log_every = s["mse_log_every"]
    steps = log_every * (s["intervals"] + 1)
    with tempfile.TemporaryDirectory(prefix="gankd-bench-") as tmp:
        teacher_path = Path(tmp) / "teacher.safetensors"
        state = reference.gankd_state_to_reference(write_teacher(teacher_path, arch, seed=1))
        runs = {
            "reference": lambda: reference.distill_mse(state, teacher_depth=TEACHER_DEPTH, depth=student, image_size=s["image_size"], channels=1,
                                                       batch_size=s["batch_size"], lr=opt["lr"], betas=opt["betas"], steps=steps,
                                                       log_every=log_every, device=device)[1:],
            "project": project_train(dict(method="mse", teacher=str(teacher_path), depth=student, batch_size=s["batch_size"], steps=steps,
                                          log_every=log_every, device=str(device))),
        }
        # The ceiling: gankd's frozen-teacher forward alone, as in a step (the same weights).
        teacher, _ = ckpt.load_generator(teacher_path, device)
        z = torch.randn(s["batch_size"], arch.latent_dim, device=device)

        def teacher_forward() -> None:
            with torch.no_grad():
                teacher(z)

        runs["teacher forward"] = lambda: timed_rate(teacher_forward, s["batch_size"], device, s["gen_seconds"])
        result = alternate(runs, ctx["repeats"], device)
    row = comparison_row("MSE distillation step", f"student d={student} <- teacher d={TEACHER_DEPTH}, {s['image_size']}x{s['image_size']}x1, "
                         f"batch {s['batch_size']}", result, "mse")
    ceiling = result["teacher forward"]["images_per_s"] / result["reference"]["images_per_s"]
    row["setting"] += f" [teacher's forward alone {result['teacher forward']['images_per_s']:,.0f} img/s: at most {ceiling:.2f}x]"
    row.update(teacher_forward=result["teacher forward"], ceiling=ceiling)
    return [row]


def bench_generation(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    s, device = ctx["settings"], ctx["device"]
    batch, size = 256, 64
    z = torch.randn(batch, 100, generator=torch.Generator().manual_seed(0)).to(device)
    runs: dict[str, Callable[[], list[float]]] = {}
    macs = {}
    for depth in (*STUDENT_DEPTHS, TEACHER_DEPTH):
        arch = Architecture(depth, size, 1, 100)
        ours = settled_generator(arch, device, seed=depth)  # as load_generator returns it: eval mode
        ref = reference.DCGANGenerator(depth, size, 1).to(device)
        ref.load_state_dict(reference.gankd_state_to_reference(ours.state_dict()))
        ref.eval()
        macs[depth] = multiply_adds(ours, (100,))

        def project(g: Generator = ours) -> None:
            with torch.inference_mode():
                g(z)

        runs[f"reference d={depth}"] = lambda r=ref: timed_rate(lambda: reference.generate(r, z), batch, device, s["gen_seconds"])
        runs[f"project d={depth}"] = lambda p=project: timed_rate(p, batch, device, s["gen_seconds"])
    result = alternate(runs, ctx["repeats"], device)
    teacher_rate = result[f"project d={TEACHER_DEPTH}"]["images_per_s"]
    rows = []
    for depth in (*STUDENT_DEPTHS, TEACHER_DEPTH):
        pair = {"reference": result[f"reference d={depth}"], "project": result[f"project d={depth}"]}
        role = "teacher" if depth == TEACHER_DEPTH else "student"
        row = comparison_row(f"generation, {role} d={depth}", f"{size}x{size}x1, batch {batch}", pair, None)
        mac_ratio = macs[TEACHER_DEPTH] / macs[depth]
        speedup = pair["project"]["images_per_s"] / teacher_rate
        row.update(multiply_adds=macs[depth], mac_ratio=mac_ratio, speedup_vs_teacher=speedup)
        if depth == 8:
            row["target"] = f"speed-up vs teacher >= {TARGETS['generation']} x MAC ratio = {TARGETS['generation'] * mac_ratio:.1f}x"
            row["met"] = speedup >= TARGETS["generation"] * mac_ratio
        rows.append(row)
    return rows


def bench_evaluation(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    data = load_dataset("mnist", None, 32, "train")
    return [bench_inception(ctx, data), *bench_digit_metrics(ctx, data)]


def bench_inception(ctx: dict[str, Any], data: ImageData) -> dict[str, Any]:
    from gankd.metrics.features import extract
    from gankd.metrics.networks import InceptionFeatures

    s, device = ctx["settings"], ctx["device"]
    n = s["inception_batch"]
    try:
        inception = InceptionFeatures(device=device, backend="reference")  # the TorchScript network: its bare forward is the reference
    except Exception as exc:  # the network is an optional download
        return {"path": "Inception feature extraction", "skipped": f"{type(exc).__name__}: {exc}"}
    subset = ImageData(data.images[:n].clone(), None, "bench-subset")
    bare, captured = inception.net, []
    inception.net = lambda x: captured.append(x) or bare(x)  # record the exact network input once
    extract(subset, {"inception": inception}, n, device, batch_size=n)
    inception.net = bare
    prepared = captured[0]

    def bare_forward() -> None:  # the network alone, as usually called
        with torch.no_grad():
            bare(prepared)

    def project() -> None:  # uint8 images -> [-1, 1] -> 299x299 TF resize -> network -> numpy
        extract(subset, {"inception": inception}, n, device, batch_size=n)

    for fn in (bare_forward, project):  # TorchScript's profiling executor optimises on the 2nd-3rd call
        for _ in range(2):
            fn()
    result = alternate({"reference": lambda: timed_rate(bare_forward, n, device, 0.0),
                        "project": lambda: timed_rate(project, n, device, 0.0)}, ctx["repeats"] + 2, device)
    row = comparison_row("Inception features (FID/KID)", f"{n} MNIST images 32x32 -> 299x299; reference = bare network forward", result, None)
    overhead = result["reference"]["images_per_s"] / result["project"]["images_per_s"] - 1
    row.update(overhead=overhead, target=f"extraction within {TARGETS['inception_overhead']:.0%} of the bare forward",
               met=overhead <= TARGETS["inception_overhead"])
    return row


def bench_digit_metrics(ctx: dict[str, Any], data: ImageData) -> list[dict[str, Any]]:
    from gankd.metrics import evaluate as evaluate_module
    from gankd.metrics.networks import DigitClassifier

    s, device = ctx["settings"], ctx["device"]
    samples = s["digit_samples"]
    note = None
    try:
        DigitClassifier.pretrained(device)
    except Exception:  # weights not shipped yet: same network, untrained (the time is the same)
        note = "digit classifier weights missing: timed with the same network untrained"
        untrained = classmethod(lambda cls, device="cpu": cls().to(device).eval())
        DigitClassifier.pretrained = untrained  # type: ignore[method-assign]
    classifier = DigitClassifier.pretrained(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gankd-bench-") as cache:
        for depth in (8, TEACHER_DEPTH):
            arch = Architecture(depth, 32, 1, 100)
            generator = settled_generator(arch, device, seed=depth)
            meta = {"arch": arch.to_dict(), "parameters": count_parameters(generator), "path": None,
                    "dataset": {"kind": "mnist", "root": None, "image_size": 32, "channels": 1, "split": "train"}}
            start = time.perf_counter()
            evaluate_module.evaluate(generator, meta, ["is", "cfid"], samples, device, cache_dir=cache)
            cold = time.perf_counter() - start  # includes the real side's features, computed once and cached
            real = _real_digit_stats(classifier, data, samples, device)
            ref_gen = reference.DCGANGenerator(depth, 32, 1).to(device)
            ref_gen.load_state_dict(reference.gankd_state_to_reference(generator.state_dict()))

            def project() -> list[float]:
                start = time.perf_counter()
                evaluate_module.evaluate(generator, meta, ["is", "cfid"], samples, device, cache_dir=cache)
                return [samples / (time.perf_counter() - start)]

            def plain() -> list[float]:
                start = time.perf_counter()
                reference.digit_metrics(ref_gen, classifier, samples, real, device)
                return [samples / (time.perf_counter() - start)]

            result = alternate({"reference": plain, "project": project}, max(1, ctx["repeats"] - 1), device)
            row = comparison_row(f"digit metrics (IS + cFID), d={depth}", f"{samples:,} samples, cached real statistics", result, None)
            seconds = samples / result["project"]["images_per_s"]
            row.update(seconds=seconds, seconds_cold_cache=cold, target=f"under {TARGETS['digit_seconds']:.0f} s (warm cache)",
                       met=seconds < TARGETS["digit_seconds"] if samples >= 10_000 else None)
            if note:
                row["note"] = note
            rows.append(row)
    return rows


def _real_digit_stats(classifier, data: ImageData, count: int, device: torch.device) -> dict[str, np.ndarray]:
    from gankd.data import to_unit_range

    feats = []
    with torch.no_grad():
        for start in range(0, count, 500):
            feats.append(classifier.features(to_unit_range(data.images[start : start + 500]).to(device)).cpu().numpy())
    x = np.concatenate(feats).astype(np.float64)
    return {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}


# --------------------------------------------------------------------------- CUDA options


CUDA_OPTIONS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "compile": {"compile": True},
    "bf16+channels_last+compile": {"precision": "bf16", "channels_last": True, "compile": True},
}


def bench_cuda_options(ctx: dict[str, Any], options: dict[str, dict[str, Any]] = CUDA_OPTIONS, force: bool = False) -> dict[str, Any]:
    """images/s of the project's paths under each speed option (CUDA only; ``force`` runs them
    wherever the context's device is, to test this code)."""
    device = ctx["device"]
    if device.type != "cuda" and not force:
        return {"skipped": "no CUDA device: bfloat16 autocast, channels_last and torch.compile are compared only with --device cuda"}
    s = ctx["settings"]
    out: dict[str, Any] = {}
    log_every = s["gan_log_every"]["wgan-gp"]
    steps = log_every * (s["intervals"] + 1)
    gan = {name: project_train(dict(method="gan", loss="wgan-gp", depth=TEACHER_DEPTH, image_size=s["image_size"], batch_size=s["batch_size"],
                                    steps=steps, log_every=log_every, device=str(device), **opts))
           for name, opts in options.items()}
    out["gan wgan-gp"] = summarise_options(alternate(gan, ctx["repeats"], device))
    with tempfile.TemporaryDirectory(prefix="gankd-bench-") as tmp:
        teacher_path = Path(tmp) / "teacher.safetensors"
        write_teacher(teacher_path, Architecture(TEACHER_DEPTH, s["image_size"], 1, 100), seed=1)
        steps = s["mse_log_every"] * (s["intervals"] + 1)
        mse = {name: project_train(dict(method="mse", teacher=str(teacher_path), depth=8, batch_size=s["batch_size"], steps=steps,
                                        log_every=s["mse_log_every"], device=str(device), **opts))
               for name, opts in options.items()}
        out["mse d=8"] = summarise_options(alternate(mse, ctx["repeats"], device))
    z = torch.randn(256, 100, device=device)
    for depth in (8, TEACHER_DEPTH):
        runs = {}
        for name, opts in options.items():
            g = settled_generator(Architecture(depth, 64, 1, 100), device, seed=depth)
            if opts.get("channels_last"):
                g.to(memory_format=torch.channels_last)
            net = torch.compile(g.folded()) if opts.get("compile") else g
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.get("precision") == "bf16")

            def fn(net=net, autocast=autocast) -> None:
                with torch.inference_mode(), autocast:
                    net(z)

            for _ in range(3):  # compile and autotune outside the timing
                fn()
            runs[name] = lambda fn=fn: timed_rate(fn, 256, device, s["gen_seconds"])
        out[f"generation d={depth}"] = summarise_options(alternate(runs, ctx["repeats"], device))
    return out


def summarise_options(result: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base = result["fp32"]["images_per_s"]
    return {name: {**r, "vs_fp32": r["images_per_s"] / base} for name, r in result.items()}


# --------------------------------------------------------------------------- report


def comparison_row(path: str, setting: str, result: dict[str, dict[str, Any]], target_key: str | None) -> dict[str, Any]:
    ref, ours = result["reference"], result["project"]
    row = {"path": path, "setting": setting, "reference": ref, "project": ours, "ratio": ours["images_per_s"] / ref["images_per_s"]}
    if target_key is not None:
        row.update(target=f">= {TARGETS[target_key]}x the reference", met=row["ratio"] >= TARGETS[target_key])
    return row


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def format_report(results: dict[str, Any]) -> str:
    lines = [f"gankd benchmarks, {results['date']}, {results['machine']['description']}",
             f"command: {results['command']}", ""]
    header = ("path", "setting", "reference img/s", "project img/s", "ratio", "peak MiB ref / proj", "target", "met")
    table = []
    for row in results["rows"]:
        if "skipped" in row:
            table.append((row["path"], row["skipped"], "", "", "", "", "", "skipped"))
            continue
        met = {True: "yes", False: "NO", None: "-"}[row.get("met")]
        extra = ""
        if "mac_ratio" in row:
            extra = f" [MACs 1/{row['mac_ratio']:.1f} of teacher, {row['speedup_vs_teacher']:.1f}x its speed]"
        if "overhead" in row:
            extra = f" [overhead {row['overhead']:+.1%}]"
        if "seconds" in row:
            extra = f" [{row['seconds']:.1f} s; first run with cold cache {row['seconds_cold_cache']:.1f} s]"
        table.append((row["path"], row["setting"] + extra, f"{row['reference']['images_per_s']:,.1f}", f"{row['project']['images_per_s']:,.1f}",
                      f"{row['ratio']:.2f}x", f"{_mib(row['reference']['peak_mib'])} / {_mib(row['project']['peak_mib'])}",
                      row.get("target", ""), met))
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    lines += [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, table)]
    notes = sorted({row["note"] for row in results["rows"] if row.get("note")})
    lines += [f"note: {n}" for n in notes]
    cuda = results.get("cuda_options")
    if cuda is not None:
        lines.append("")
        if "skipped" in cuda:
            lines.append(f"CUDA options: skipped ({cuda['skipped']})")
        else:
            where = "CUDA" if results["machine"].get("gpu") else "CPU (--cpu-options; on the CPU channels-last is always on)"
            lines.append(f"Speed options on {where} (project path, images/s; x = vs fp32):")
            for path, options in cuda.items():
                cells = ", ".join(f"{name} {r['images_per_s']:,.0f} ({r['vs_fp32']:.2f}x)" for name, r in options.items())
                lines.append(f"  {path}: {cells}")
    return "\n".join(lines)


def settings_for(device: torch.device, quick: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "image_size": 32,
        "batch_size": 256 if cuda else 64,
        "intervals": 2 if quick else 3,  # measured log intervals per run, after the dropped first one
        "gan_log_every": {"wgan-gp": 10 if cuda else (1 if quick else 2), "dcgan": 20 if cuda else (3 if quick else 5)},
        "mse_log_every": 50 if cuda else (10 if quick else 40),
        "gen_seconds": 0.3 if quick else 1.0,
        "inception_batch": 8 if quick else 32,
        "digit_samples": 2_000 if quick else 10_000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test; figures are noisier)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"), metavar="OUT", help="where to write the results")
    parser.add_argument("--repeats", type=int, help="alternations per comparison (default 3, quick 2)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--only", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--cpu-options", action="store_true", help="compare the speed options (bf16, channels-last, compile) on the CPU too")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PATHS))
    if unknown:
        parser.error(f"unknown path(s) {unknown}; choose from {PATHS}")
    ctx = {"device": device, "settings": settings_for(device, args.quick), "repeats": args.repeats or (2 if args.quick else 3)}
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_description(device),
        "settings": {**ctx["settings"], "repeats": ctx["repeats"]},
        "rows": [],
    }
    benches = {"gan": bench_gan, "mse": bench_mse, "generation": bench_generation, "evaluation": bench_evaluation}
    for name in only:
        if name in benches:
            start = time.perf_counter()
            results["rows"].extend(benches[name](ctx))
            print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    if "cuda" in only:
        results["cuda_options"] = bench_cuda_options(ctx, force=args.cpu_options)
    results["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(format_report(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
