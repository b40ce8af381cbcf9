"""The speed-ups change how things are computed, never what: each is checked against the plain form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gankd.models import CPU_CHUNK_ROWS, Architecture, Critic, FoldedGenerator, Generator, _tanh, multiply_adds, subpixel_kernel
from gankd.losses import critic_loss


def settled(arch: Architecture, seed: int = 0) -> Generator:
    """A generator with non-trivial BatchNorm running statistics, in eval mode."""
    torch.manual_seed(seed)
    g = Generator(arch)
    with torch.no_grad():
        for _ in range(3):
            g(torch.randn(32, arch.latent_dim) * 2 + 0.5)
    return g.eval()


def plain(g: Generator, z: torch.Tensor) -> torch.Tensor:
    """The unfolded eval-mode network, layer by layer."""
    with torch.no_grad():
        return g.net(z.view(z.shape[0], -1, 1, 1))


@pytest.mark.parametrize("depth, size, channels", [(2, 32, 1), (8, 64, 1), (16, 32, 3), (64, 32, 1), (4, 128, 3)])
def test_folded_batchnorm_gives_the_same_images(depth: int, size: int, channels: int) -> None:
    g = settled(Architecture(depth, size, channels, latent_dim=100), seed=depth)
    z = torch.randn(2 * CPU_CHUNK_ROWS + 5, 100)  # two full chunks and a ragged one
    expected = plain(g, z)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            images = g(z)
        assert images.shape == expected.shape and images.is_contiguous()
        torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
    assert isinstance(g.folded(), FoldedGenerator)


def test_frozen_teacher_folds_and_still_gives_latent_gradients() -> None:
    g = settled(Architecture(8, 32, 1, latent_dim=16)).requires_grad_(False)
    n = CPU_CHUNK_ROWS + 3
    z = torch.randn(n, 16, requires_grad=True)
    g(z).square().sum().backward()
    folded_grad = z.grad.clone()
    z.grad = None
    g.net(z.view(n, -1, 1, 1)).square().sum().backward()
    torch.testing.assert_close(folded_grad, z.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c_in, c_out, size", [(1, 1, 1), (3, 8, 5), (16, 2, 8), (8, 3, 4)])
def test_subpixel_convolution_equals_the_transposed_convolution(c_in: int, c_out: int, size: int) -> None:
    torch.manual_seed(c_in * 100 + c_out)
    x, w, b = torch.randn(4, c_in, size, size), torch.randn(c_in, c_out, 4, 4), torch.randn(c_out)
    expected = F.conv_transpose2d(x, w, b, stride=2, padding=1)
    phases = F.conv2d(x, subpixel_kernel(w), b.repeat(4), padding=1)  # (n, 4 c_out, s, s)
    n = x.shape[0]
    images = phases.view(n, 2, 2, c_out, size, size).permute(0, 3, 4, 1, 5, 2).reshape(n, c_out, 2 * size, 2 * size)
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)


def test_sigmoid_tanh_matches_torch_tanh() -> None:
    x = torch.linspace(-30, 30, 100_001)
    assert (_tanh(x.clone()) - torch.tanh(x)).abs().max() < 5e-7
    y = x.clone().requires_grad_(True)
    _tanh(y).sum().backward()  # the autograd path is exact tanh
    torch.testing.assert_close(y.grad, 1 - torch.tanh(x) ** 2)


def test_eval_mode_with_parameter_gradients_uses_the_plain_network() -> None:
    g = settled(Architecture(4, 32, 1, latent_dim=16))
    g(torch.randn(3, 16)).sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_folded_copy_follows_weight_and_statistics_changes() -> None:
    arch = Architecture(4, 32, 1, latent_dim=16)
    g = settled(arch)
    z = torch.randn(8, 16)
    with torch.no_grad():
        before = g(z)
    # an optimiser step, in train mode, then back to eval
    g.train()
    opt = torch.optim.SGD(g.parameters(), lr=0.1)
    g(torch.randn(8, 16)).sum().backward()
    opt.step()
    g.eval()
    with torch.no_grad():
        after = g(z)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, plain(g, z), rtol=1e-5, atol=1e-5)
    # new weights from a state dict
    other = settled(arch, seed=5)
    g.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(g(z), plain(other, z), rtol=1e-5, atol=1e-5)
    # a running statistic changed in place
    with torch.no_grad():
        g.net[1].running_var.mul_(3)
        torch.testing.assert_close(g(z), plain(g, z), rtol=1e-5, atol=1e-5)


def test_forward_hooks_still_see_every_layer() -> None:
    g = settled(Architecture(2, 32, 1))
    seen = []
    handle = g.net[0].register_forward_hook(lambda *_: seen.append(1))
    with torch.no_grad():
        g(torch.randn(2, 100))
    handle.remove()
    assert seen == [1]
    assert multiply_adds(g, (100,)) == 100 * 8 * 16 + 16 * 4 * 8 * 16 + 64 * 2 * 4 * 16 + 256 * 1 * 2 * 16


@pytest.mark.parametrize("channels_last", [False, True])
def test_wgan_gp_loss_and_gradients_equal_three_separate_passes(channels_last: bool) -> None:
    torch.manual_seed(0)
    critic = Critic(Architecture(8, 32, 1), batch_norm=False)
    if channels_last:
        critic.to(memory_format=torch.channels_last)
    real, fake = torch.rand(6, 1, 32, 32) * 2 - 1, torch.rand(6, 1, 32, 32) * 2 - 1
    value, stats = critic_loss(critic, real, fake, "wgan-gp", 10.0, torch.rand(real.shape[0], generator=torch.Generator().manual_seed(3)))
    grads = torch.autograd.grad(value, list(critic.parameters()))

    eps = torch.rand(6, 1, 1, 1, generator=torch.Generator().manual_seed(3))  # the same draw
    interp = (eps * real + (1 - eps) * fake).requires_grad_(True)
    d_interp = critic(interp)
    (g,) = torch.autograd.grad(d_interp.sum(), interp, create_graph=True)
    gp = (g.flatten(1).norm(dim=1) - 1).pow(2).mean()
    expected = critic(fake).mean() - critic(real).mean() + 10.0 * gp
    expected_grads = torch.autograd.grad(expected, list(critic.parameters()))

    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["gp"], gp.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
