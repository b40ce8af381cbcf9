import pytest
import torch

from gankd.errors import GankdError
from gankd.models import Architecture, Critic, Generator, count_parameters, generator_parameters, multiply_adds

# Table 1 of Aguinaldo et al. (2019): generator parameters at 64x64, one channel.
PAPER_PARAMETERS = {2: 28_351, 4: 62_077, 8: 145_657, 16: 377_329, 32: 1_098_721, 48: 2_164_177,
                    64: 3_573_697, 128: 12_652_417, 256: 47_324_929}


@pytest.mark.parametrize("depth, expected", PAPER_PARAMETERS.items())
def test_parameter_counts_match_the_paper(depth: int, expected: int) -> None:
    assert generator_parameters(depth, image_size=64, channels=1) == expected


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range(size: int, channels: int) -> None:
    arch = Architecture(depth=4, image_size=size, channels=channels, latent_dim=16)
    images = Generator(arch)(torch.randn(5, 16))
    assert images.shape == (5, channels, size, size)
    assert images.abs().max() <= 1
    for batch_norm in (True, False):
        assert Critic(arch, batch_norm)(images).shape == (5,)


def test_critic_has_batchnorm_only_when_asked() -> None:
    arch = Architecture(depth=4, image_size=32)
    has_bn = lambda m: any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert has_bn(Critic(arch, batch_norm=True)) and not has_bn(Critic(arch, batch_norm=False))


def test_generator_batchnorm_has_no_affine() -> None:
    bns = [m for m in Generator(Architecture(4)).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.affine for bn in bns)


def test_multiply_adds_closed_form() -> None:
    # d=2, 32x32, 1 channel: 100->8 (1x1 in, k16), 8->4 (4x4 in), 4->2 (8x8 in), 2->1 (16x16 in)
    g = Generator(Architecture(depth=2, image_size=32, channels=1))
    expected = 100 * 8 * 16 + 16 * 4 * 8 * 16 + 64 * 2 * 4 * 16 + 256 * 1 * 2 * 16
    assert multiply_adds(g, (100,)) == expected
    assert count_parameters(g) == generator_parameters(2, 32, 1)


@pytest.mark.parametrize("kwargs", [dict(depth=0), dict(depth=4, image_size=48), dict(depth=4, channels=2)])
def test_bad_architecture(kwargs: dict) -> None:
    with pytest.raises(GankdError):
        Architecture(**kwargs)
