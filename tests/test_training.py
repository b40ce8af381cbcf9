"""Training, distillation and resumption on real MNIST (small networks, few steps)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, assert_resume_is_exact, run_gankd
from gankd.checkpoint import load_generator, read_checkpoint
from gankd.config import RunConfig
from gankd.errors import GankdError
from gankd.metrics.fidelity import teacher_fidelity
from gankd.models import Architecture, Generator
from gankd.errors import RunDiverged
from gankd.training import train


def rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_teacher_run_folder(mnist_teacher: Path) -> None:
    run = mnist_teacher.parent
    _, meta = load_generator(mnist_teacher)
    assert meta["step"] == 200 and meta["loss"] == "dcgan" and meta["dataset"]["kind"] == "mnist"
    assert meta["arch"] == {"depth": 16, "image_size": 32, "channels": 1, "latent_dim": 100}
    assert RunConfig.load(run / "config.json").depth == 16
    assert [int(r["step"]) for r in rows(run)] == [50, 100, 150, 200]
    assert (run / "samples" / "step_0000200.png").exists() and (run / "samples.png").exists()
    tensors, last = read_checkpoint(run / "checkpoints" / "last.safetensors")
    assert any(k.startswith("critic.") for k in tensors) and any(k.startswith("opt_d.") for k in tensors)


def test_mse_student_learns_the_teacher(mnist_teacher: Path, tmp_path: Path) -> None:
    cfg = RunConfig(out=str(tmp_path / "s"), method="mse", teacher=str(mnist_teacher), depth=4, steps=300,
                    log_every=50, checkpoint_every=300, sample_every=300)
    train(cfg)
    teacher, _ = load_generator(mnist_teacher)
    student, meta = load_generator(tmp_path / "s" / "generator.safetensors")
    assert meta["teacher"]["parameters"] > 5 * meta["parameters"]
    assert meta["uses_data"] is False and meta["dataset"]["kind"] == "mnist"  # judged against the teacher's data
    untrained = Generator(Architecture(**meta["arch"])).eval()
    before = teacher_fidelity(untrained, teacher, n=500)["mse"]
    after = teacher_fidelity(student, teacher, n=500)["mse"]
    assert after < 0.4 * before, (before, after)
    logged = [float(r["mse_pixel"]) for r in rows(tmp_path / "s")]
    assert logged[-1] < 0.5 * logged[0]


@pytest.mark.parametrize("loss", ["wgan-gp", "dcgan"])
def test_joint_student_and_regular_baseline_run(mnist_teacher: Path, tmp_path: Path, loss: str) -> None:
    joint = train(RunConfig(out=str(tmp_path / "joint"), method="joint", alpha=0.5, loss=loss, teacher=str(mnist_teacher),
                            depth=4, steps=6, log_every=3, critic_steps=2))
    names = rows(joint)[0].keys()
    assert {"mse_pixel", "g_adv", "d_loss"} <= set(names)
    _, meta = load_generator(joint / "generator.safetensors")
    assert meta["dataset"]["kind"] == "mnist" and meta["loss"] == loss
    regular = train(RunConfig(out=str(tmp_path / "regular"), depth=4, loss=loss, steps=6, log_every=3))
    assert {"d_loss", "g_adv"} <= set(rows(regular)[0].keys())


def test_resume_is_exact(tmp_path: Path) -> None:
    """Stopping at a checkpoint and resuming gives bit-identical weights to an uninterrupted run."""
    common = dict(depth=4, loss="wgan-gp", log_every=5, checkpoint_every=10, sample_every=100, critic_steps=2, batch_size=16)
    assert_resume_is_exact(tmp_path, common)
    assert [r["step"] for r in rows(tmp_path / "split")] == ["5", "10", "15", "20"]
    assert [r["d_loss"] for r in rows(tmp_path / "split")] == [r["d_loss"] for r in rows(tmp_path / "full")]


def test_same_seed_same_losses_and_samples(tmp_path: Path) -> None:
    for name in ("a", "b"):
        train(RunConfig(out=str(tmp_path / name), depth=4, loss="dcgan", steps=8, log_every=4, seed=7))
    assert [r["g_loss"] for r in rows(tmp_path / "a")] == [r["g_loss"] for r in rows(tmp_path / "b")]
    assert (tmp_path / "a" / "samples.png").read_bytes() == (tmp_path / "b" / "samples.png").read_bytes()


def test_sigkill_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--depth", "4", "--loss", "dcgan", "--steps", "100000",
            "--checkpoint-every", "20", "--log-every", "10", "--batch-size", "16"]
    proc = subprocess.Popen([sys.executable, "-m", "gankd.cli", *args], cwd=ROOT, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and not (last.exists() and read_checkpoint(last)[1]["step"] >= 40):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint(last)[1]["step"]
    assert killed_at >= 40
    run_gankd("train", "--out", str(out), "--steps", str(killed_at + 20), "--resume")
    assert read_checkpoint(last)[1]["step"] == killed_at + 20
    steps = [int(r["step"]) for r in rows(out)]
    assert steps == list(range(10, killed_at + 21, 10))  # rows after the checkpoint were dropped, none missing


def test_sigterm_saves_a_checkpoint_first(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gankd.cli", "train", "--out", str(out), "--depth", "4", "--loss", "dcgan",
                             "--steps", "100000", "--checkpoint-every", "100000", "--log-every", "5", "--batch-size", "16"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "metrics.csv").exists() and len(rows(out)) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr
    assert read_checkpoint(out / "checkpoints" / "last.safetensors")[1]["step"] >= 10


def test_divergence_stops_with_step_and_loss(tmp_path: Path) -> None:
    with pytest.raises(RunDiverged, match=r"diverged at step \d+: (d_loss|g_loss|g_adv|d_real|d_fake|wasserstein|gp)"):
        train(RunConfig(out=str(tmp_path / "r"), depth=4, loss="wgan-gp", lr=1e30, steps=40, log_every=5, critic_steps=1))


def test_existing_run_needs_resume(tmp_path: Path) -> None:
    cfg = RunConfig(out=str(tmp_path / "r"), depth=4, loss="dcgan", steps=2, log_every=1)
    train(cfg)
    with pytest.raises(GankdError, match="--resume"):
        train(cfg)


def test_a_copied_run_resumes_in_its_new_folder_only(tmp_path: Path) -> None:
    """`--resume --out COPY` of a run folder copied elsewhere continues in COPY, although the saved
    config names the original folder: the original is left exactly as it was."""
    import shutil

    from gankd.cli import main

    original, copy = tmp_path / "original", tmp_path / "copy"
    common = ["--depth", "2", "--loss", "dcgan", "--log-every", "1", "--checkpoint-every", "2", "--batch-size", "8"]
    assert main(["train", "--out", str(original), "--steps", "2", *common]) == 0
    shutil.copytree(original, copy)
    before = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    assert main(["train", "--out", str(copy), "--resume", "--steps", "4"]) == 0
    assert {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    assert read_checkpoint(copy / "generator.safetensors")[1]["step"] == 4
    with (copy / "metrics.csv").open(newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4]


def test_teacher_and_data_must_agree(mnist_teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(GankdError, match="image size"):
        train(RunConfig(out=str(tmp_path / "r"), method="mse", teacher=str(mnist_teacher), image_size=64, depth=4, steps=1))


def test_teacher_and_data_of_different_channels_are_refused(mnist_teacher: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (50 * i, 0, 200)).save(folder / f"{i}.png")
    with pytest.raises(GankdError, match="3 channel"):
        train(RunConfig(out=str(tmp_path / "r"), method="joint", alpha=0.5, teacher=str(mnist_teacher), dataset="folder",
                        data=str(folder), depth=4, steps=1))


@pytest.mark.parametrize("command", ["train", "distill"])
def test_two_process_gloo_torchrun(mnist_teacher: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / command
    extra = ["--teacher", str(mnist_teacher), "--method", "joint", "--alpha", "0.3", "--critic-steps", "1"] if command == "distill" else ["--loss", "dcgan"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "gankd.cli", command, "--out", str(out), "--depth", "4", "--steps", "6", "--log-every", "3",
                             "--checkpoint-every", "3", "--batch-size", "8", "--device", "cpu", *extra],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    tensors, meta = read_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["world_size"] == 2 and meta["step"] == 6
    assert {"rng.noise.0", "rng.noise.1"} <= set(tensors)
    assert float(rows(out)[0]["images_per_s"]) > 0


def test_init_starts_from_another_generator(mnist_teacher: Path, tmp_path: Path) -> None:
    student = train(RunConfig(out=str(tmp_path / "mse"), method="mse", teacher=str(mnist_teacher), depth=4, steps=5, log_every=5))
    start = train(RunConfig(out=str(tmp_path / "joint"), method="joint", alpha=0.2, loss="dcgan", teacher=str(mnist_teacher), depth=4,
                            steps=0, init=str(student / "generator.safetensors")))
    a, _ = read_checkpoint(student / "generator.safetensors")
    b, _ = read_checkpoint(start / "generator.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(GankdError, match="--init needs a generator of the run's architecture"):
        train(RunConfig(out=str(tmp_path / "bad"), method="mse", teacher=str(mnist_teacher), depth=2, steps=1,
                        init=str(student / "generator.safetensors")))


def test_compiled_student_trains_like_the_eager_one(mnist_teacher: Path, tmp_path: Path) -> None:
    """--compile runs the same objective: a few compiled steps land where the eager ones do. (The
    CUDA crash of issue 11 came from inductor's layout optimisation, which does not run on a CPU;
    there gankd turns it off for contiguous-format compiled runs.)"""
    common = dict(method="mse", teacher=str(mnist_teacher), depth=2, steps=3, log_every=1, batch_size=16)
    eager = train(RunConfig(out=str(tmp_path / "eager"), **common))
    compiled = train(RunConfig(out=str(tmp_path / "compiled"), compile=True, **common))
    a, b = rows(eager), rows(compiled)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["1", "2", "3"]
    for x, y in zip(a, b):
        assert float(y["mse_pixel"]) == pytest.approx(float(x["mse_pixel"]), rel=1e-3)


def test_fid_monitor_is_logged_for_a_gan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gankd import convergence

    monkeypatch.setattr(convergence, "FID_SAMPLES", 16)  # the real monitor uses 1,000: minutes on a CPU
    monkeypatch.setenv("GANKD_CACHE", str(tmp_path / "cache"))
    run = train(RunConfig(out=str(tmp_path / "r"), depth=4, loss="dcgan", steps=4, log_every=2, eval_every=2, monitor="fid"))
    values = [float(r["val_fid"]) for r in rows(run)]
    assert len(values) == 2 and all(v > 0 for v in values)


def test_monitors_are_the_evaluated_metrics_at_their_samples_and_seed(mnist_teacher: Path) -> None:
    """A run stops on the numbers ``gankd evaluate`` reports (8-bit images, float64 fidelity), not
    on a look-alike: each monitor equals the metric of its sample count and seed."""
    from gankd import convergence
    from gankd.metrics.evaluate import evaluate
    from gankd.metrics.fidelity import HELD_OUT_SEED

    teacher, meta = load_generator(mnist_teacher)
    torch.manual_seed(0)
    student = Generator(Architecture(depth=4, image_size=32)).eval()
    is_monitor = convergence.build_monitor("is", 100, torch.device("cpu"), None)
    scored = evaluate(teacher, meta, ["is"], convergence.IS_SAMPLES, "cpu", seed=convergence.IS_SEED)
    assert is_monitor(teacher) == pytest.approx(scored["metrics"]["is"]["mean"], rel=1e-6)
    fidelity = convergence.build_monitor("fidelity", 100, torch.device("cpu"), teacher)
    expected = teacher_fidelity(student, teacher, convergence.FIDELITY_LATENTS, "cpu", convergence.FIDELITY_SEED)["mse"]
    assert fidelity(student) == pytest.approx(expected, rel=1e-9)
    assert convergence.FIDELITY_SEED + HELD_OUT_SEED > 2**30  # far from the evaluation seeds (0, 1, 2, ...)


def test_a_student_reads_and_records_its_teachers_data(tmp_path: Path) -> None:
    """A student of a folder-trained teacher names that folder in its config.json, as ``info``
    does, and a joint student's critic trains on it, not on the default MNIST."""
    from PIL import Image
    import numpy as np

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(np.random.default_rng(3).integers(0, 256, (24, 32, 32), dtype=np.uint8)):
        Image.fromarray(image).save(folder / f"{i}.png")
    teacher = train(RunConfig(out=str(tmp_path / "t"), dataset="folder", data=str(folder), channels=1, depth=4, loss="dcgan",
                              steps=2, batch_size=8, log_every=1, sample_every=2, checkpoint_every=2)) / "generator.safetensors"
    for method, options in (("mse", {}), ("joint", {"loss": "dcgan", "critic_depth": 4})):
        run = train(RunConfig(out=str(tmp_path / method), method=method, teacher=str(teacher), depth=2, steps=2, batch_size=8,
                              log_every=1, sample_every=2, checkpoint_every=2, **options))
        saved = RunConfig.load(run / "config.json")
        assert (saved.dataset, saved.data) == ("folder", str(folder))
        _, meta = load_generator(run / "generator.safetensors")
        assert meta["dataset"]["kind"] == "folder" and meta["dataset"]["root"] == str(folder)


def test_a_gan_on_a_folder_trains_at_the_size_its_images_fill_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image
    import numpy as np

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(np.random.default_rng(4).integers(0, 256, (8, 70, 90), dtype=np.uint8)):
        Image.fromarray(image).save(folder / f"{i}.png")
    options = dict(dataset="folder", data=str(folder), depth=2, loss="dcgan", steps=1, batch_size=4, log_every=1, sample_every=1,
                   checkpoint_every=1)
    run = train(RunConfig(out=str(tmp_path / "auto"), **options))
    assert RunConfig.load(run / "config.json").image_size == 64 and load_generator(run / "generator.safetensors")[1]["arch"]["image_size"] == 64
    assert f"note: {folder}: images are at least 70 px on their shorter side: training at 64x64" in capsys.readouterr().err
    run = train(RunConfig(out=str(tmp_path / "asked"), image_size=32, **options))
    assert RunConfig.load(run / "config.json").image_size == 32 and "images are at least" not in capsys.readouterr().err
