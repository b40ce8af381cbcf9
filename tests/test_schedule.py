"""The learning-rate schedule (--lr-schedule): its factors against a hand computation, the rates a
run sets, and an exact resume of a cosine run."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gankd.checkpoint import read_checkpoint
from gankd.schedule import COSINE_FLOOR, lr_factor

from conftest import ROOT, run_gankd


def test_cosine_falls_from_one_to_the_floor_over_the_steps_and_constant_stays_at_one() -> None:
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx((1 + COSINE_FLOOR) / 2, abs=1e-12)
    assert lr_factor("cosine", 25, 100) == pytest.approx(COSINE_FLOOR + (1 - COSINE_FLOOR) * (1 + math.sqrt(0.5)) / 2, abs=1e-12)
    assert lr_factor("cosine", 100, 100) == pytest.approx(COSINE_FLOOR) and lr_factor("cosine", 150, 100) == pytest.approx(COSINE_FLOOR)
    assert all(lr_factor("constant", s, 100) == 1.0 for s in (0, 50, 100))


def test_a_run_sets_the_scheduled_rates_on_the_student_and_the_critic(tmp_path: Path, mnist_teacher: Path) -> None:
    run_gankd("distill", "--teacher", str(mnist_teacher), "--method", "joint", "--alpha", "0.2", "--loss", "dcgan", "--depth", "2",
              "--steps", "8", "--checkpoint-every", "4", "--log-every", "4", "--lr-schedule", "cosine", "--out", str(tmp_path / "s"))
    _, meta = read_checkpoint(tmp_path / "s" / "checkpoints" / "last.safetensors")
    factor = lr_factor("cosine", 7, 8)  # the rate of the last update, step 7 of 8
    assert meta["opt_g_groups"][0]["lr"] == pytest.approx(1e-3 * factor, rel=1e-12)  # the student's: MSE's Adam 1e-3
    assert meta["opt_d_groups"][0]["lr"] == pytest.approx(2e-4 * factor, rel=1e-12)  # the critic's: dcgan's Adam 2e-4


def test_a_cosine_run_stopped_and_resumed_equals_the_run_never_stopped(tmp_path: Path) -> None:
    """The schedule spans --steps, so the resume keeps them (extending a run would reshape its decay)."""
    args = ["train", "--depth", "4", "--loss", "dcgan", "--steps", "60", "--checkpoint-every", "1000", "--log-every", "5",
            "--batch-size", "16", "--lr-schedule", "cosine"]
    run_gankd(*args, "--out", str(tmp_path / "full"))
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "gankd.cli", *args, "--out", str(stopped)], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not ((stopped / "metrics.csv").exists() and len((stopped / "metrics.csv").read_text().splitlines()) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # what `timeout -s INT` does: a checkpoint at the step reached
    assert proc.wait(timeout=120) == 130
    at = read_checkpoint(stopped / "checkpoints" / "last.safetensors")[1]["step"]
    assert 10 <= at < 60
    run_gankd(*args, "--out", str(stopped), "--resume")
    a, meta = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(stopped / "checkpoints" / "last.safetensors")
    assert meta["step"] == 60 and meta["opt_g_groups"][0]["lr"] == pytest.approx(2e-4 * lr_factor("cosine", 59, 60), rel=1e-12)
    for name in a:
        if not name.startswith("rng"):
            assert torch.equal(a[name], b[name]), name
