"""Crash safety: a run killed at any moment resumes from an intact checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_gankd
from gankd import checkpoint as ckpt
from gankd.checkpoint import read_checkpoint


def test_sigkill_at_random_moments_always_leaves_an_intact_checkpoint(tmp_path: Path) -> None:
    """Checkpoint every step (so many kills land inside a write), kill at random, resume, repeat."""
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.safetensors"
    rng = random.Random(1234)
    args = ["train", "--out", str(out), "--depth", "8", "--loss", "wgan-gp", "--critic-steps", "1", "--steps", "100000",
            "--checkpoint-every", "1", "--log-every", "1", "--sample-every", "100000", "--batch-size", "8", "--resume"]
    steps_seen = []
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "gankd.cli", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = read_checkpoint(last)[1]["step"] if last.exists() else 0
        deadline = time.time() + 120
        while time.time() < deadline and not (last.exists() and read_checkpoint(last)[1]["step"] > before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tensors, meta = read_checkpoint(last)  # never torn: either the old or the new file
        assert meta["step"] > before and "generator.net.0.weight" in tensors
        steps_seen.append(meta["step"])
    assert steps_seen == sorted(steps_seen)
    # leftover temporary files from killed writes are harmless and never read
    final = [str(steps_seen[-1] + 2) if a == "100000" and args[i - 1] == "--steps" else a for i, a in enumerate(args)]
    run_gankd(*final)
    assert read_checkpoint(last)[1]["step"] == steps_seen[-1] + 2


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    original = path.read_bytes()

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    assert path.read_bytes() == original and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
