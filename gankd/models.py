"""DCGAN-family generator and critic of depth ``d``, and their size and cost figures.

The generator is exactly the paper's (Aguinaldo et al., 2019, Table 1): at 64x64 with one
channel it has 28,351 parameters at d=2 and 47,324,929 at d=256. Its BatchNorm layers have no
learnable affine, which is what makes those counts come out to the parameter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gankd.errors import GankdError

IMAGE_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a network; stored as JSON in every checkpoint."""

    depth: int
    image_size: int = 64
    channels: int = 1
    latent_dim: int = 100

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise GankdError(f"depth must be a positive integer, got {self.depth}")
        if self.image_size not in IMAGE_SIZES:
            raise GankdError(f"image size must be one of {IMAGE_SIZES}, got {self.image_size}")
        if self.channels not in (1, 3):
            raise GankdError(f"channels must be 1 or 3, got {self.channels}")
        if self.latent_dim < 1:
            raise GankdError(f"latent size must be positive, got {self.latent_dim}")

    @property
    def num_blocks(self) -> int:
        """L = log2(S) - 2 up-sampling stages between the 4x4 seed and the image."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Architecture":
        unknown = set(data) - {"depth", "image_size", "channels", "latent_dim"}
        if unknown:
            raise GankdError(f"unknown architecture keys {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in data.items()})


def _up(c_in: int, c_out: int, first: bool) -> list[nn.Module]:
    stride, pad = (1, 0) if first else (2, 1)
    return [
        nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=True),
        nn.BatchNorm2d(c_out, affine=False),
        nn.ReLU(inplace=True),
    ]


class Generator(nn.Module):
    """z (N, latent_dim) ~ N(0, I) -> images (N, C, S, S) in [-1, 1]."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        d, L = arch.depth, arch.num_blocks
        width = d * 2 ** (L - 1)
        layers = _up(arch.latent_dim, width, first=True)
        while width > d:
            layers += _up(width, width // 2, first=False)
            width //= 2
        layers += [nn.ConvTranspose2d(d, arch.channels, 4, 2, 1, bias=True), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class Critic(nn.Module):
    """Mirror of the generator: image -> one unbounded score per image (a logit for ``dcgan``).

    BatchNorm is used only with the ``dcgan`` loss: the WGAN-GP gradient penalty is defined per
    sample, which batch statistics would break (Gulrajani et al., 2017).
    """

    def __init__(self, arch: Architecture, batch_norm: bool):
        super().__init__()
        self.arch = arch
        d, L = arch.depth, arch.num_blocks
        layers: list[nn.Module] = [nn.Conv2d(arch.channels, d, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = d
        for _ in range(L - 1):
            layers.append(nn.Conv2d(width, width * 2, 4, 2, 1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def generator_parameters(depth: int, image_size: int = 64, channels: int = 1, latent_dim: int = 100) -> int:
    """Parameter count of the generator, computed by building it (on the meta device: no memory)."""
    with torch.device("meta"):
        return count_parameters(Generator(Architecture(depth, image_size, channels, latent_dim)))


def multiply_adds(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulate operations of one forward pass for one input of ``input_shape``.

    Counts convolutions and transposed convolutions (everything else is negligible here):
    a conv costs out_elements * in_channels * k_h * k_w, a transposed conv
    in_elements * out_channels * k_h * k_w (each input pixel is scattered over a k x k window).
    """
    total = 0

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, nn.ConvTranspose2d):
            total += inputs[0][0].numel() * layer.out_channels * kernel // layer.groups
        else:
            total += output[0].numel() * layer.in_channels * kernel // layer.groups

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        device = next(module.parameters()).device
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device))
        module.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total
