"""The embedded example (`gankd demo`): compress a real MNIST teacher into students of several
sizes in a couple of CPU minutes.

1. the teacher: the d=128 DCGAN of the committed MNIST result (3,443,585 parameters, shipped in
   ``results/mnist``), or, with ``--train-teacher``, one trained here on the vendored MNIST;
2. students d = 4, 8, 16 distilled from it by pixel MSE in one teacher pass (no training data);
3. each student evaluated (Inception Score on gankd's digit classifier, teacher fidelity, size),
   and one picture: the same latents through the teacher and every student.
"""

from __future__ import annotations

import json
from pathlib import Path

from gankd.checkpoint import load_generator
from gankd.config import RunConfig
from gankd.errors import GankdError
from gankd.imaging import save_comparison
from gankd.metrics.evaluate import evaluate
from gankd.runtime import resolve_device
from gankd.sampling import images_from
from gankd.training import train, train_many

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TEACHER = ROOT / "results" / "mnist" / "runs" / "teacher" / "generator.safetensors"
STUDENT_DEPTHS = (4, 8, 16)
STUDENT_STEPS = 1500
TRAINED_TEACHER = dict(depth=128, critic_depth=32, loss="dcgan", image_size=32, steps=6000)  # as the committed result's teacher
EVAL_SAMPLES = 2000


def run_demo(out: Path, device: str = "auto", student_steps: int | None = None, train_teacher: bool = False,
             teacher_steps: int | None = None) -> dict:
    if train_teacher:
        settings = {**TRAINED_TEACHER, "steps": teacher_steps or TRAINED_TEACHER["steps"]}
        teacher_cfg = RunConfig(out=str(out / "teacher"), method="gan", dataset="mnist", device=device, sample_every=1000,
                                checkpoint_every=500, **settings)
        print(f"[0/3] teacher: DCGAN d={settings['depth']} on MNIST 32x32, {settings['steps']} steps -> {teacher_cfg.out}")
        teacher_path = train(teacher_cfg, resume=True) / "generator.safetensors"
    else:
        teacher_path = SHIPPED_TEACHER
        if not teacher_path.is_file():
            raise GankdError(f"{teacher_path}: the shipped teacher is missing (a partial checkout?); run `gankd demo --train-teacher`")
    dev = resolve_device(device)
    teacher, teacher_meta = load_generator(teacher_path, dev)
    steps = student_steps or STUDENT_STEPS
    print(f"[1/3] teacher: {teacher_path} (d={teacher_meta['arch']['depth']}, {teacher_meta['parameters']:,} parameters)")
    print(f"[2/3] students d={', '.join(map(str, STUDENT_DEPTHS))}: distilled by MSE in one teacher pass, {steps} steps -> {out}/d<depth>")
    configs = [RunConfig(out=str(out / f"d{d}"), method="mse", teacher=str(teacher_path), depth=d, steps=steps, device=device,
                         sample_every=500, checkpoint_every=500) for d in STUDENT_DEPTHS]
    runs = train_many(configs, resume=True)

    print(f"[3/3] evaluating on {EVAL_SAMPLES:,} samples each")
    latent = teacher_meta["arch"]["latent_dim"]
    teacher_is = evaluate(teacher, teacher_meta, ["is"], EVAL_SAMPLES, dev)["metrics"]["is"]["mean"]
    panels = [(f"teacher d={teacher_meta['arch']['depth']}", images_from(teacher, 32, latent, 0, dev))]
    students = []
    for run in runs:
        student, meta = load_generator(run / "generator.safetensors", dev)
        metrics = evaluate(student, meta, ["is", "fidelity"], EVAL_SAMPLES, dev, teacher=teacher)["metrics"]
        ratio = teacher_meta["parameters"] / meta["parameters"]
        students.append({"depth": meta["arch"]["depth"], "parameters": meta["parameters"], "compression_ratio": round(ratio, 1),
                         "inception_score": metrics["is"]["mean"], "kept_of_teacher": metrics["is"]["mean"] / teacher_is,
                         "fidelity_mse": metrics["fidelity"]["mse"], "generator": str(run / "generator.safetensors")})
        panels.append((f"d={meta['arch']['depth']} ({ratio:.0f}:1)", images_from(student, 32, latent, 0, dev)))
    grid_path = out / "teacher_vs_students.png"
    save_comparison(panels, grid_path, nrow=4, scale=2)
    summary = {"teacher": {"path": str(teacher_path), "parameters": teacher_meta["parameters"], "inception_score": teacher_is},
               "student_steps": steps, "students": students, "grid": str(grid_path)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"      teacher: IS {teacher_is:.2f}")
    for s in students:
        print(f"      d={s['depth']:<3} {s['parameters']:>8,} parameters ({s['compression_ratio']:.0f}:1): IS {s['inception_score']:.2f} "
              f"({s['kept_of_teacher']:.0%} of the teacher's), teacher-fidelity MSE {s['fidelity_mse']:.4f}")
    print(f"      same latents through the teacher and each student: {grid_path}")
    return summary
