"""The embedded example (`gankd demo`): the whole method on real MNIST in a few CPU minutes.

1. train a small DCGAN teacher (d=32, 32x32, dcgan loss) on the MNIST shipped in data/mnist;
2. distill a d=4 student from it by pixel MSE (no training data);
3. write teacher-vs-student samples for the same latents and print size and fidelity figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from gankd.checkpoint import load_generator
from gankd.config import RunConfig
from gankd.imaging import save_comparison
from gankd.metrics.fidelity import teacher_fidelity
from gankd.models import Architecture, Generator
from gankd.runtime import resolve_device
from gankd.sampling import images_from
from gankd.training import train

TEACHER_DEPTH, STUDENT_DEPTH = 32, 4


def run_demo(out: Path, device: str = "auto", teacher_steps: int | None = None, student_steps: int | None = None) -> dict:
    teacher_cfg = RunConfig(out=str(out / "teacher"), method="gan", dataset="mnist", image_size=32, depth=TEACHER_DEPTH,
                            loss="dcgan", steps=teacher_steps or 8000, batch_size=64, device=device,
                            sample_every=1000, checkpoint_every=1000)
    student_cfg = RunConfig(out=str(out / "student-mse-d4"), method="mse", teacher=str(out / "teacher" / "generator.safetensors"),
                            depth=STUDENT_DEPTH, steps=student_steps or 6000, batch_size=64, device=device,
                            sample_every=1000, checkpoint_every=1000)
    print(f"[1/3] teacher: DCGAN d={TEACHER_DEPTH} on MNIST 32x32, {teacher_cfg.steps} steps -> {teacher_cfg.out}")
    train(teacher_cfg, resume=True)
    print(f"[2/3] student: d={STUDENT_DEPTH} distilled by MSE, {student_cfg.steps} steps -> {student_cfg.out}")
    train(student_cfg, resume=True)

    dev = resolve_device(device)
    teacher, teacher_meta = load_generator(student_cfg.teacher, dev)
    student, student_meta = load_generator(Path(student_cfg.out) / "generator.safetensors", dev)
    untrained = Generator(Architecture(**student_meta["arch"])).to(dev).eval()
    before = teacher_fidelity(untrained, teacher, n=1000, device=dev)
    after = teacher_fidelity(student, teacher, n=1000, device=dev)
    latent = teacher_meta["arch"]["latent_dim"]
    grid_path = out / "teacher_vs_student.png"
    save_comparison([(f"teacher d={TEACHER_DEPTH}", images_from(teacher, 64, latent, 0, dev)),
                     (f"student d={STUDENT_DEPTH} (MSE)", images_from(student, 64, latent, 0, dev))], grid_path, nrow=8, scale=2)
    summary = {
        "teacher_parameters": teacher_meta["parameters"],
        "student_parameters": student_meta["parameters"],
        "compression_ratio": round(teacher_meta["parameters"] / student_meta["parameters"], 1),
        "fidelity_mse_untrained_student": before["mse"],
        "fidelity_mse_trained_student": after["mse"],
        "fidelity_psnr_db": after["psnr"],
        "grid": str(grid_path),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[3/3] teacher {summary['teacher_parameters']:,} parameters, student {summary['student_parameters']:,} "
          f"({summary['compression_ratio']}:1)")
    print(f"      teacher-fidelity MSE on 1000 held-out latents: {before['mse']:.4f} untrained -> {after['mse']:.4f} "
          f"distilled (PSNR {after['psnr']:.1f} dB)")
    print(f"      same latents through teacher and student: {grid_path}")
    return summary
