"""Benchmarks of what a distillation user waits for: k students from one teacher pass, bf16, and
the cost of each distillation objective.

    python -m benchmarks.distillation [--quick] [--threads N] [--json OUT] [--device cpu|cuda] [--only together,bf16,terms]

The JSON goes to ``distillation.json`` beside this file, or ``distillation-<parts>.json`` for a
part of the set (``--only``).

1. **k students together against k separate runs.** MSE students d = 2, 4, 8, 16 from a d=32
   teacher (32x32x1, batch 64), the same steps: the wall time of ``gankd.training.train_many`` on
   all four against four ``train`` runs one after another, alternated. The floor is what the
   measured parts allow: one teacher forward plus each student's step (forward, MSE gradient,
   backward, Adam), against four teacher forwards plus the same student steps.
2. **bf16 against fp32.** An MSE distillation step (student d=8 <- teacher d=64, 32x32x1, batch 64)
   in ``train`` with ``--precision bf16`` against fp32, and its parts (the teacher's forward, the
   student's step) in each precision, so the table shows which part gains and which loses.

3. **What each distillation objective costs per step.** Students d = 4 and 8 from a d=128 teacher
   (32x32x1, batch 64: the Fashion-MNIST screen's setting) trained together by ``train_many``, the
   same steps, for pixel MSE alone and with each other term, the weight average, and the joint
   objective with the teacher's d=32 dcgan critic fine-tuned and frozen; images/s of each against
   MSE alone's, so the ratios are same-run.

Each comparison alternates its sides (ABBA) ``--repeats`` times and reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from benchmarks.measure import abba, machine_description, metrics_rates, seconds_per_call, write_teacher  # noqa: E402
from gankd.checkpoint import load_generator, save_critic  # noqa: E402
from gankd.config import RunConfig  # noqa: E402
from gankd.losses import GeneratorObjective  # noqa: E402
from gankd.models import Architecture, Critic, Generator  # noqa: E402
from gankd.training import train, train_many  # noqa: E402

STUDENTS = (2, 4, 8, 16)
PARTS = ("together", "bf16", "terms")  # the comparisons, in the order they run (--only)
TARGETS = {"together": 0.45, "bf16": 1.8}
TIMING = {"warmup": 3, "min_calls": 5}  # per seconds_per_call measurement


def alternate(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of each side's figure over ``repeats`` ABBA-ordered calls."""
    figures: dict[str, list[float]] = {name: [] for name in sides}
    for name in abba(list(sides), repeats):
        figures[name].append(sides[name]())
    return {name: statistics.median(values) for name, values in figures.items()}


def student_step(teacher: torch.nn.Module, depth: int, batch: int, device: torch.device, precision: str,
                 with_teacher: bool) -> Callable[[], None]:
    """One MSE distillation step as train() does it: (teacher forward,) student forward, gradient at
    the images, backward, Adam."""
    arch = Architecture(depth, teacher.arch.image_size, 1, 100)
    torch.manual_seed(0)
    student = Generator(arch).to(device).to(memory_format=torch.channels_last if device.type == "cpu" else torch.contiguous_format)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.5, 0.999))
    objective = GeneratorObjective(distill=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    z = torch.randn(batch, 100, device=device)
    with torch.no_grad(), autocast:
        fixed_target = teacher(z)

    def step() -> None:
        with autocast:
            if with_teacher:
                with torch.no_grad():
                    target = teacher(z)
            else:
                target = fixed_target
            fake = student(z)
            grad, _ = objective.images_gradient(fake, target, None)
        opt.zero_grad(set_to_none=True)
        fake.backward(grad.to(fake.dtype))
        opt.step()

    return step


def teacher_forward(teacher: torch.nn.Module, batch: int, device: torch.device, precision: str) -> Callable[[], None]:
    z = torch.randn(batch, 100, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward() -> None:
        with torch.no_grad(), autocast:
            teacher(z)

    return forward


def bench_together(device: torch.device, steps: int, repeats: int, seconds: float) -> dict[str, Any]:
    batch = 64
    with tempfile.TemporaryDirectory(prefix="gankd-bench-") as tmp:
        teacher_path = Path(tmp) / "teacher.safetensors"
        write_teacher(teacher_path, Architecture(32, 32, 1, 100), seed=1)
        common = dict(method="mse", teacher=str(teacher_path), batch_size=batch, steps=steps, log_every=max(1, steps // 4),
                      sample_every=10**9, checkpoint_every=10**9, device=str(device))

        def separate() -> float:
            start = time.perf_counter()
            for depth in STUDENTS:
                train(RunConfig(out=str(Path(tempfile.mkdtemp(dir=tmp)) / "run"), depth=depth, **common))
            return time.perf_counter() - start

        def together() -> float:
            start = time.perf_counter()
            folder = Path(tempfile.mkdtemp(dir=tmp))
            train_many([RunConfig(out=str(folder / f"d{d}"), depth=d, **common) for d in STUDENTS])
            return time.perf_counter() - start

        walls = alternate({"separate": separate, "together": together}, repeats)
        teacher, _ = load_generator(teacher_path, device)
        t_teacher = seconds_per_call(teacher_forward(teacher, batch, device, "fp32"), device, seconds, **TIMING)
        t_students = {d: seconds_per_call(student_step(teacher, d, batch, device, "fp32", False), device, seconds, **TIMING) for d in STUDENTS}
    floor_together = t_teacher + sum(t_students.values())
    floor_separate = len(STUDENTS) * t_teacher + sum(t_students.values())
    return {
        "setting": f"MSE students d={','.join(map(str, STUDENTS))} <- teacher d=32, 32x32x1, batch {batch}, {steps} steps each",
        "separate_s": walls["separate"], "together_s": walls["together"], "ratio": walls["together"] / walls["separate"],
        "teacher_forward_ms": 1000 * t_teacher, "student_step_ms": {d: 1000 * t for d, t in t_students.items()},
        "floor_ratio": floor_together / floor_separate, "target": TARGETS["together"],
        "met": walls["together"] / walls["separate"] <= TARGETS["together"],
    }


def bench_bf16(device: torch.device, steps: int, repeats: int, seconds: float) -> dict[str, Any]:
    batch, student_depth = 64, 8
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gankd-bench-") as tmp:
        teacher_path = Path(tmp) / "teacher.safetensors"
        write_teacher(teacher_path, Architecture(64, 32, 1, 100), seed=1)
        log_every = max(1, steps // 4)

        def run(precision: str) -> Callable[[], float]:
            def once() -> float:
                out = Path(tempfile.mkdtemp(dir=tmp)) / "run"
                train(RunConfig(out=str(out), method="mse", teacher=str(teacher_path), depth=student_depth, batch_size=batch, steps=steps,
                                log_every=log_every, sample_every=10**9, checkpoint_every=10**9, device=str(device), precision=precision))
                return statistics.median(metrics_rates(out))
            return once

        rates = alternate({"fp32": run("fp32"), "bf16": run("bf16")}, repeats)
        teacher, _ = load_generator(teacher_path, device)
        for precision in ("fp32", "bf16"):
            rows[precision] = {
                "train_images_per_s": rates[precision],
                "teacher_forward_ms": 1000 * seconds_per_call(teacher_forward(teacher, batch, device, precision), device, seconds, **TIMING),
                "student_step_ms": 1000 * seconds_per_call(student_step(teacher, student_depth, batch, device, precision, False), device, seconds, **TIMING),
            }
    speedup = rows["bf16"]["train_images_per_s"] / rows["fp32"]["train_images_per_s"]
    best_parts = sum(min(rows[p][part] for p in rows) for part in ("teacher_forward_ms", "student_step_ms"))
    return {
        "setting": f"MSE step, student d={student_depth} <- teacher d=64, 32x32x1, batch {batch}", **rows, "speedup": speedup,
        "floor_speedup": (rows["fp32"]["teacher_forward_ms"] + rows["fp32"]["student_step_ms"]) / best_parts,
        "target": TARGETS["bf16"], "met": speedup >= TARGETS["bf16"],
    }


def objectives(critic: str) -> dict[str, dict[str, Any]]:
    """The objectives of the screen, as run options over pixel MSE alone (their term weights do not
    change the work per step)."""
    joint = {"method": "joint", "loss": "dcgan", "alpha": 0.2, "critic_init": critic, "dataset": "mnist"}
    return {"mse": {}, "+feature": {"terms": {"feature": 4000}}, "+perceptual": {"terms": {"perceptual": 350}, "teacher_critic": critic},
            "+relation": {"terms": {"relation": 800}}, "+mmd": {"terms": {"mmd": 100}}, "+ema": {"ema_kimg": 10},
            "joint, teacher critic": joint, "joint, teacher critic frozen": {**joint, "critic_steps": 0}}


def bench_terms(device: torch.device, steps: int, repeats: int) -> dict[str, Any]:
    batch, depths = 64, (4, 8)
    with tempfile.TemporaryDirectory(prefix="gankd-bench-") as tmp:
        teacher_path, critic_path = Path(tmp) / "teacher.safetensors", Path(tmp) / "critic.safetensors"
        write_teacher(teacher_path, Architecture(128, 32, 1, 100), seed=1)
        torch.manual_seed(1)
        save_critic(critic_path, Critic(Architecture(32, 32, 1, 100), batch_norm=True), {"seed": 1, "loss": "dcgan"})
        common = dict(teacher=str(teacher_path), batch_size=batch, steps=steps, log_every=max(1, steps // 4),
                      sample_every=10**9, checkpoint_every=10**9, device=str(device))

        def run(options: dict[str, Any]) -> Callable[[], float]:
            def once() -> float:
                folder = Path(tempfile.mkdtemp(dir=tmp))
                train_many([RunConfig.from_dict({"method": "mse", **common, **options, "out": str(folder / f"d{d}"), "depth": d})
                            for d in depths])
                return statistics.median(metrics_rates(folder / f"d{depths[0]}"))
            return once

        rates = alternate({name: run(options) for name, options in objectives(str(critic_path)).items()}, repeats)
    return {"setting": f"students d={','.join(map(str, depths))} <- teacher d=128, 32x32x1, batch {batch}, {steps} steps, together",
            "images_per_s": rates, "time_per_step_vs_mse": {name: rates["mse"] / rate for name, rate in rates.items()}}


def format_report(results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']['description']}"]
    if "together" in results:
        t = results["together"]
        lines += [
        "",
        f"1. {t['setting']}",
        f"   4 separate runs {t['separate_s']:.1f} s, together {t['together_s']:.1f} s: ratio {t['ratio']:.2f} "
        f"(target <= {t['target']}, {'met' if t['met'] else 'NOT met'})",
        f"   parts: teacher forward {t['teacher_forward_ms']:.1f} ms; student steps "
        + ", ".join(f"d={d} {ms:.1f} ms" for d, ms in t["student_step_ms"].items())
        + f"; floor ratio (1 teacher + 4 students vs 4 x (teacher + student)) {t['floor_ratio']:.2f}",
        ]
    if "bf16" in results:
        b = results["bf16"]
        lines += ["", f"2. {b['setting']}"]
        for precision in ("fp32", "bf16"):
            r = b[precision]
            lines.append(f"   {precision}: train {r['train_images_per_s']:,.0f} img/s; teacher forward {r['teacher_forward_ms']:.1f} ms, "
                         f"student step {r['student_step_ms']:.1f} ms")
        lines.append(f"   bf16 / fp32: {b['speedup']:.2f}x (target >= {b['target']}x, {'met' if b['met'] else 'NOT met'}); "
                     f"floor with each part in its faster precision: {b['floor_speedup']:.2f}x")
    if "terms" in results:
        c = results["terms"]
        lines += ["", f"3. {c['setting']}"]
        lines += [f"   {name:30s} {rate:7,.0f} img/s   time per step {c['time_per_step_vs_mse'][name]:.2f}x MSE's"
                  for name, rate in c["images_per_s"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distillation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke test)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, metavar="OUT", help="default: distillation.json beside this file (distillation-<parts>.json with --only)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps, repeats, seconds = (40, 2, 0.3) if args.quick else (200, 3, 1.0)
    results = {"command": "python -m benchmarks.distillation " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": machine_description(device)}
    only = args.only.split(",")
    if unknown := set(only) - set(PARTS):
        parser.error(f"--only: unknown part(s) {sorted(unknown)}")
    if args.json is None:
        args.json = Path(__file__).with_name("distillation.json" if set(only) == set(PARTS) else f"distillation-{'-'.join(only)}.json")
    if "together" in only:
        results["together"] = bench_together(device, steps, repeats, seconds)
    if "bf16" in only:
        results["bf16"] = bench_bf16(device, steps, repeats, seconds)
    if "terms" in only:
        results["terms"] = bench_terms(device, steps, repeats)
    results["machine"]["load_average_end"] = os.getloadavg()
    print(format_report(results))
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
