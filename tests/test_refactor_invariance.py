"""Restructuring the training code changes no numbers: fixed-seed MSE and joint students come
out with the weights that the code before the distillation-term registry gave (issue 28).

The reference (tests/reference/distill_students.safetensors) was written by ``write_reference``
below with gankd at commit 2864642. Its teacher is an untrained d=4 generator made from a fixed
torch seed (platform-independent), its data the vendored MNIST, so nothing is downloaded or
trained first. On the machine that wrote it the weights match bit for bit; the tolerance only
allows for another CPU's kernels (other SIMD width: last-bit differences that 12 Adam steps carry),
far below what a changed loss, weight or order of random draws does (checked: alpha 0.5 -> 0.49
moves the joint student's first-layer weights by up to 9e-3).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gankd.checkpoint import load_generator, prefixed, read_checkpoint, save_checkpoint
from gankd.config import RunConfig
from gankd.models import Architecture, Generator
from gankd.training import train

REFERENCE = Path(__file__).parent / "reference" / "distill_students.safetensors"
METHODS = {"mse": {}, "joint": {"alpha": 0.5, "loss": "dcgan", "critic_depth": 4}}


def students(folder: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    teacher = Generator(Architecture(depth=4, image_size=32, channels=1, latent_dim=100))
    path = folder / "teacher.safetensors"
    save_checkpoint(path, prefixed("generator", teacher.state_dict()), {"arch": teacher.arch.to_dict()})
    tensors = {}
    for method, options in METHODS.items():
        run = train(RunConfig(out=str(folder / method), method=method, teacher=str(path), depth=2, steps=12, batch_size=16,
                              log_every=6, sample_every=12, checkpoint_every=12, seed=5, **options))
        student, _ = load_generator(run / "generator.safetensors")
        tensors.update(prefixed(method, student.state_dict()))
    return tensors


def write_reference(folder: Path) -> None:
    save_checkpoint(REFERENCE, students(folder), {"written_by": "tests/test_refactor_invariance.py"})


def test_fixed_seed_mse_and_joint_students_keep_their_weights(tmp_path: Path) -> None:
    expected, _ = read_checkpoint(REFERENCE)
    got = students(tmp_path)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
