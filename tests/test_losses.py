"""The generator objectives: the gradient at the images is what each formula says, and alpha means
what the README says it means."""

from __future__ import annotations

import pytest
import torch

from gankd.losses import GeneratorObjective, critic_loss, distillation_loss, generator_adversarial_loss
from gankd.models import Architecture, Critic

MSE = (("mse", 1.0),)  # the paper's distillation term alone

@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor, Critic]:
    torch.manual_seed(0)
    fake = torch.rand(8, 1, 32, 32) * 2 - 1
    target = torch.rand(8, 1, 32, 32) * 2 - 1
    return fake, target, Critic(Architecture(8, 32, 1), batch_norm=False)


def term_gradients(fake, target, critic, loss="wgan-gp", reduction="sum"):
    x = fake.clone().requires_grad_(True)
    (g_mse,) = torch.autograd.grad(distillation_loss(x, target, reduction), x)
    (g_adv,) = torch.autograd.grad(generator_adversarial_loss(critic(x), loss), x)
    return g_mse, g_adv


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("balance", ["gradient", "none"])
def test_alpha_zero_is_pure_mse_and_alpha_one_pure_adversarial(batch, balance: str) -> None:
    fake, target, critic = batch
    g_mse, g_adv = term_gradients(fake, target, critic)
    grad, _, _ = GeneratorObjective("wgan-gp", MSE, 0.0, balance).images_gradient(fake, target, critic)
    torch.testing.assert_close(grad, g_mse)
    grad, _, _ = GeneratorObjective("wgan-gp", MSE, 1.0, balance).images_gradient(fake, target, critic)
    assert cosine(grad, g_adv) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("loss, reduction", [("wgan-gp", "sum"), ("dcgan", "mean")])
def test_gradient_balance_gives_the_critic_an_alpha_share_of_the_pull(batch, alpha: float, loss: str, reduction: str) -> None:
    fake, target, critic = batch
    g_mse, g_adv = term_gradients(fake, target, critic, loss, reduction)
    grad, _, stats = GeneratorObjective(loss, MSE, alpha, "gradient", reduction).images_gradient(fake, target, critic)
    weight = g_mse.norm() / g_adv.norm()
    torch.testing.assert_close(grad, (1 - alpha) * g_mse + alpha * weight * g_adv)
    assert float(stats["grad_ratio"]) == pytest.approx(alpha / (1 - alpha), rel=1e-5)
    assert float(stats["adv_weight"]) == pytest.approx(float(weight), rel=1e-5)


def test_logged_terms_are_the_ones_the_loss_used(batch) -> None:
    fake, target, critic = batch
    alpha = 0.25
    grad, _, stats = GeneratorObjective("dcgan", MSE, alpha, "none").images_gradient(fake, target, critic)
    mse = distillation_loss(fake, target, "sum")
    adv = generator_adversarial_loss(critic(fake), "dcgan")
    torch.testing.assert_close(stats["mse"], mse)
    torch.testing.assert_close(stats["g_adv"], adv.detach())
    torch.testing.assert_close(stats["g_loss"], (1 - alpha) * mse + alpha * adv.detach())  # the paper's formula, w = 1
    torch.testing.assert_close(stats["mse_pixel"], (fake - target).pow(2).mean())
    x = fake.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((1 - alpha) * distillation_loss(x, target, "sum") + alpha * generator_adversarial_loss(critic(x), "dcgan"), x)
    torch.testing.assert_close(grad, expected)
    g_mse, g_adv = term_gradients(fake, target, critic, "dcgan")
    assert float(stats["grad_ratio"]) == pytest.approx(float(alpha * g_adv.norm() / ((1 - alpha) * g_mse.norm())), rel=1e-5)


def test_the_critic_gets_no_gradient_from_the_generator_objective(batch) -> None:
    fake, target, critic = batch
    GeneratorObjective("wgan-gp", MSE, 0.5).images_gradient(fake, target, critic)
    assert all(p.grad is None for p in critic.parameters())


def test_gan_and_mse_objectives_are_their_single_term(batch) -> None:
    fake, target, critic = batch
    g_mse, g_adv = term_gradients(fake, target, critic, "dcgan", "mean")
    grad, _, stats = GeneratorObjective(None, MSE, 0.0, mse_reduction="mean").images_gradient(fake, target, None)
    torch.testing.assert_close(grad, g_mse)
    assert set(stats) == {"mse", "mse_pixel", "g_loss"}
    grad, _, stats = GeneratorObjective("dcgan", ()).images_gradient(fake, None, critic)
    torch.testing.assert_close(grad, g_adv)
    assert set(stats) == {"g_adv", "g_loss"}


def test_r1_penalty_is_half_gamma_times_the_squared_slope_at_real_images() -> None:
    """A linear critic D(x) = <w, x> + b has slope w at every image, so R1 adds gamma/2 ||w||^2
    exactly; gamma = 0 leaves the plain dcgan loss."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    plain, stats = critic_loss(critic, real, fake, "dcgan", 10.0)
    assert "r1" not in stats
    penalised, stats = critic_loss(critic, real, fake, "dcgan", 10.0, r1_gamma=3.0)
    slope = critic[1].weight.detach().pow(2).sum()
    assert float(stats["r1"]) == pytest.approx(float(slope), rel=1e-6)
    assert float(penalised.detach()) == pytest.approx(float(plain.detach()) + 1.5 * float(slope), rel=1e-6)
    penalised.backward()  # the penalty's gradient reaches the critic: d/dw of 1.5 ||w||^2 is part of it
    assert critic[1].weight.grad is not None


def test_r1_is_on_by_default_only_for_the_dcgan_loss_at_128_pixels() -> None:
    from gankd.config import RunConfig
    from gankd.errors import UsageError

    assert RunConfig(image_size=128, loss="dcgan").resolved_r1_gamma == 1.0
    assert RunConfig(image_size=64, loss="dcgan").resolved_r1_gamma == RunConfig(image_size=32, loss="dcgan").resolved_r1_gamma == 0.0
    assert RunConfig(image_size=128, loss="wgan-gp").resolved_r1_gamma == 0.0
    assert RunConfig(image_size=128, loss="dcgan", r1_gamma=0.0).resolved_r1_gamma == 0.0
    with pytest.raises(UsageError, match="penalty of the dcgan loss"):
        RunConfig(loss="wgan-gp", r1_gamma=1.0)
