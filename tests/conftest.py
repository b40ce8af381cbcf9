"""Shared fixtures: small real-MNIST runs trained once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gankd.config import RunConfig
from gankd.training import train

ROOT = Path(__file__).resolve().parents[1]


def run_gankd(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real command line in a subprocess (as a user runs it)."""
    result = subprocess.run([sys.executable, "-m", "gankd.cli", *args], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"gankd {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def mnist_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A d=16 DCGAN on real MNIST at 32x32, 200 steps: crude, but a real teacher."""
    out = tmp_path_factory.mktemp("teacher")
    train(RunConfig(out=str(out), dataset="mnist", image_size=32, depth=16, loss="dcgan", steps=200,
                    batch_size=64, log_every=50, sample_every=200, checkpoint_every=100))
    return out / "generator.safetensors"


def assert_resume_is_exact(tmp_path: Path, common: dict) -> dict:
    """Train 20 steps straight and 10 + 10 with a resume (``tmp_path``/full and /split); every
    checkpointed tensor but the random-generator states must match bit for bit. The full run's tensors."""
    from gankd.checkpoint import read_checkpoint

    train(RunConfig(out=str(tmp_path / "full"), steps=20, **common))
    train(RunConfig(out=str(tmp_path / "split"), steps=10, **common))
    train(RunConfig(out=str(tmp_path / "split"), steps=20, **common), resume=True)
    a, _ = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(tmp_path / "split" / "checkpoints" / "last.safetensors")
    for name in a:
        if not name.startswith("rng"):
            assert torch.equal(a[name], b[name]), name
    return a
