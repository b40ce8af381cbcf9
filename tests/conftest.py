"""Shared fixtures: small real-MNIST runs trained once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
