"""The generator's weight average (--ema-kimg): its arithmetic, what a run delivers, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gankd.checkpoint import load_generator
from gankd.config import RunConfig
from gankd.ema import EMA_RAMPUP, WeightAverage, ema_beta
from gankd.models import Architecture, Generator
from gankd.training import train

from conftest import assert_resume_is_exact


def test_beta_is_the_half_life_in_images_ramped_up_by_the_images_seen() -> None:
    # 10 kimg half-life, batch 64, well past the ramp-up: 0.5 ** (64 / 10000)
    assert ema_beta(10, 10**7, 64) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)
    # early on the half-life is EMA_RAMPUP of the images seen: 0.05 * 6400 = 320 images
    assert ema_beta(10, 6400, 64) == pytest.approx(0.5 ** (64 / (EMA_RAMPUP * 6400)), rel=1e-12)
    assert ema_beta(10, 0, 64) == pytest.approx(0.0, abs=1e-300)  # the first update copies the weights
    assert ema_beta(10, 6400, 64, rampup=None) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)


def test_updates_match_a_hand_computed_average() -> None:
    torch.manual_seed(0)
    g = Generator(Architecture(depth=2, image_size=32, channels=1, latent_dim=8))
    average = WeightAverage(g, ema_kimg=0.1, batch_size=16)
    expected = {k: p.detach().clone() for k, p in g.named_parameters()}
    for step in range(5):
        with torch.no_grad():
            for p in g.parameters():
                p.add_(torch.randn_like(p))
        beta = 0.5 ** (16 / min(100, step * 16 * 0.05)) if step else 0.0
        for k, p in g.named_parameters():
            expected[k] = beta * expected[k] + (1 - beta) * p.detach()
        average.update(g, step, 16)
    for k, p in average.generator.named_parameters():
        torch.testing.assert_close(p, expected[k], rtol=1e-6, atol=1e-6)


def test_standing_statistics_are_those_of_the_averaged_weights() -> None:
    torch.manual_seed(0)
    g = Generator(Architecture(depth=2, image_size=32, channels=1, latent_dim=8))
    average = WeightAverage(g, ema_kimg=1, batch_size=8)
    first = average.averaged()
    stats = [m.running_mean.clone() for m in first.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not first.training and any(s.abs().sum() > 0 for s in stats)
    assert average.averaged() is first  # cached while the weights are unchanged
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(3)
    average.update(g, 10_000, 8)
    moved = [m.running_mean for m in average.averaged().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not torch.equal(a, b) for a, b in zip(stats, moved))


def test_a_run_delivers_the_average_and_resumes_it_exactly(tmp_path: Path) -> None:
    common = dict(depth=4, loss="dcgan", log_every=5, checkpoint_every=10, sample_every=100, batch_size=16, ema_kimg=0.05)
    a = assert_resume_is_exact(tmp_path, common)
    assert any(k.startswith("ema.") for k in a)
    delivered, meta = load_generator(tmp_path / "split" / "generator.safetensors")
    assert meta["ema_kimg"] == 0.05
    for name, p in delivered.named_parameters():
        assert torch.equal(p, a[f"ema.{name}"]), name  # the average ships, not the last iterate
        assert not torch.equal(p, a[f"generator.{name}"]), name
