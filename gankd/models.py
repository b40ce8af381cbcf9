"""DCGAN-family generator and critic of depth ``d``, and their size and cost figures.

The generator is exactly the paper's (Aguinaldo et al., 2019, Table 1): at 64x64 with one
channel it has 28,351 parameters at d=2 and 47,324,929 at d=256. Its BatchNorm layers have no
learnable affine, which is what makes those counts come out to the parameter.

In eval mode, when no parameter needs a gradient (a frozen teacher, sampling, evaluation), the
generator runs as a :class:`FoldedGenerator`: each BatchNorm, an affine map with its running
statistics, is folded into the transposed convolution before it, and the first layer (a 1x1
input) is one matrix product. Same images to float rounding, less work per image.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gankd.config import CHANNELS, DEFAULT_IMAGE_SIZE, DEFAULT_LATENT_DIM, IMAGE_SIZES, MAX_DEPTH, MAX_LATENT_DIM
from gankd.errors import GankdError


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a network; stored as JSON in every checkpoint."""

    depth: int
    image_size: int = DEFAULT_IMAGE_SIZE
    channels: int = 1
    latent_dim: int = DEFAULT_LATENT_DIM

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise GankdError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.depth <= MAX_DEPTH:
            raise GankdError(f"depth must be in 1..{MAX_DEPTH}, got {self.depth}")
        if self.image_size not in IMAGE_SIZES:
            raise GankdError(f"image size must be one of {IMAGE_SIZES}, got {self.image_size}")
        if self.channels not in CHANNELS:
            raise GankdError(f"channels must be one of {CHANNELS}, got {self.channels}")
        if not 1 <= self.latent_dim <= MAX_LATENT_DIM:
            raise GankdError(f"latent size must be in 1..{MAX_LATENT_DIM}, got {self.latent_dim}")

    @property
    def num_blocks(self) -> int:
        """L = log2(S) - 2 up-sampling stages between the 4x4 seed and the image."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Architecture":
        """From JSON: exact integer fields only (no strings, floats or bools), each within range."""
        if not isinstance(data, dict):
            raise GankdError(f"an architecture must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"depth", "image_size", "channels", "latent_dim"}
        if unknown:
            raise GankdError(f"unknown architecture keys {sorted(unknown)}")
        if "depth" not in data:
            raise GankdError("the architecture has no depth")
        return cls(**data)


def _up(c_in: int, c_out: int, first: bool) -> list[nn.Module]:
    stride, pad = (1, 0) if first else (2, 1)
    return [
        nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=True),
        nn.BatchNorm2d(c_out, affine=False),
        nn.ReLU(inplace=True),
    ]


class Generator(nn.Module):
    """z (N, latent_dim) ~ N(0, I) -> images (N, C, S, S) in [-1, 1]."""

    __jit_ignored_attributes__ = ["_folded"]
    __jit_unused_properties__ = ["block_widths"]

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
        self._folded: tuple[tuple, FoldedGenerator] | None = None  # (weights' identity, folded copy)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.jit.is_scripting() and not torch.jit.is_tracing():  # export the plain network
            return self._eval_forward(z)
        return self.net(z.view(z.shape[0], -1, 1, 1))

    @property
    def block_widths(self) -> list[int]:
        """Channels of each block's activation (after its ReLU), from 4x4 up to S/2 x S/2."""
        return [m.out_channels for m in self.net if isinstance(m, nn.ConvTranspose2d)][:-1]

    @torch.jit.unused
    def _eval_forward(self, z: torch.Tensor) -> torch.Tensor:
        """The folded network, unless a parameter gradient is wanted or a layer that folding
        would skip has a forward hook (``multiply_adds`` counts through such hooks)."""
        wants_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self.net)
        global_hooks = any(getattr(nn.modules.module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks"))
        if wants_grad or hooked or global_hooks:
            return self.net(z.view(z.shape[0], -1, 1, 1))
        return self.folded()(z)

    def folded(self) -> "FoldedGenerator":
        """The eval-mode network with BatchNorm folded in, rebuilt whenever a weight or running
        statistic has changed since the last call (an optimiser step, ``load_state_dict``, ``.to``)."""
        tensors = list(itertools.chain(self.parameters(), self.buffers()))
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: usable with autograd on z
                self._folded = (key, FoldedGenerator(self))
        return self._folded[1]


class BlockTap:
    """Keeps the block activations of the latest forward pass of ``generator`` (forward hooks on
    its ReLUs, so it works through DistributedDataParallel); :meth:`take` hands them over."""

    def __init__(self, generator: Generator):
        self._kept: list[torch.Tensor] = []
        relus = [layer for layer in generator.net if isinstance(layer, nn.ReLU)]
        for index, layer in enumerate(relus):
            layer.register_forward_hook(self._keeper(index))

    def _keeper(self, index: int) -> Callable:
        def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if index == 0:  # a new forward pass
                self._kept = []
            self._kept.append(output)
        return keep

    def take(self) -> list[torch.Tensor]:
        kept, self._kept = self._kept, []
        return kept


# Measured on a 2-core AVX-512 CPU (benchmarks/README.md): up to this many output channels a
# transposed convolution runs faster as a sub-pixel 3x3 convolution (memory-bound layers), and
# batches of this many rows keep a small generator's activations in cache.
SUBPIXEL_MAX_CHANNELS = 8
CPU_CHUNK_ROWS = 64


def subpixel_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 4x4, stride-2, padding-1 transposed convolution's weight (C_in, C_out, 4, 4) as the
    weight (4 C_out, C_in, 3, 3) of a padding-1 convolution giving its four output phases.

    Output pixel (2i + a, 2j + b) sums input pixels (i + dy, j + dx) times kernel tap
    (a + 1 - 2 dy, b + 1 - 2 dx) for dy, dx in {-1, 0, 1}; taps outside 0..3 are zero. Output
    channel (2a + b) C_out + c of the convolution holds phase (a, b) of channel c.
    """
    taps = torch.tensor([[a + 1 - 2 * (t - 1) for t in range(3)] for a in range(2)], device=weight.device)  # (phase, 3x3 row)
    valid = ((taps >= 0) & (taps <= 3)).to(weight.dtype)
    taps = taps.clamp(0, 3)
    k = weight[:, :, taps[:, None, :, None], taps[None, :, None, :]]  # (C_in, C_out, a, b, 3, 3)
    k = k * (valid[:, None, :, None] * valid[None, :, None, :])
    c_in, c_out = weight.shape[:2]
    return k.permute(2, 3, 1, 0, 4, 5).reshape(4 * c_out, c_in, 3, 3)


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1, in place: on the CPU ``torch.tanh`` is about 5x slower than
    ``torch.sigmoid`` (2.2 ms against 0.45 ms per million values), and for a small student the
    final tanh was 13% of generation. Absolute error below 2e-7. Exact tanh where autograd
    needs the input."""
    return torch.tanh(x) if x.requires_grad else x.mul_(2).sigmoid_().mul_(2).sub_(1)


def fold_batchnorm(generator: Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each transposed convolution with the eval-mode BatchNorm after it folded
    in: y = (x - mean) / sqrt(var + eps) makes weight W * s and bias (b - mean) * s,
    s = 1 / sqrt(var + eps) per output channel. Detached tensors on the generator's device."""
    convs = [m for m in generator.net if isinstance(m, nn.ConvTranspose2d)]
    norms = [m for m in generator.net if isinstance(m, nn.BatchNorm2d)]
    layers = []
    for i, conv in enumerate(convs):
        w, b = conv.weight.detach(), conv.bias.detach()
        if i < len(norms):
            scale = torch.rsqrt(norms[i].running_var + norms[i].eps)
            w, b = w * scale.view(1, -1, 1, 1), (b - norms[i].running_mean) * scale
        layers.append((w, b))
    return layers


class FoldedGenerator(nn.Module):
    """A frozen copy of an eval-mode :class:`Generator` with its BatchNorms folded away.

    Each BatchNorm is folded into the transposed convolution before it (:func:`fold_batchnorm`).
    The first layer maps a 1x1 input to 4x4, a plain matrix product z @ W.

    On the CPU the activations are kept channels-last (oneDNN's fast layout), the batch is run
    in chunks of ``CPU_CHUNK_ROWS`` (activations stay in cache), layers with few output channels
    run as sub-pixel convolutions (:func:`subpixel_kernel`), and the final tanh is computed
    through a sigmoid. The images come back contiguous either way.
    """

    def __init__(self, generator: Generator):
        super().__init__()
        self.arch = generator.arch
        weight = generator.net[0].weight
        self.on_cpu = weight.device.type == "cpu"
        self.channels_last = self.on_cpu or weight.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.subpixel: list[bool] = []
        layers = fold_batchnorm(generator)
        for i, (w, b) in enumerate(layers):
            subpixel = i > 0 and self.on_cpu and w.shape[1] <= SUBPIXEL_MAX_CHANNELS
            if i == 0:  # (latent, C, 4, 4) -> (latent, C * 16): z @ w is the first layer's output
                w, b = w.reshape(w.shape[0], -1), b.repeat_interleave(w.shape[2] * w.shape[3])
            elif subpixel:
                w, b = subpixel_kernel(w), b.repeat(4)
            self.subpixel.append(subpixel)
            self.register_buffer(f"weight{i}", w.contiguous(memory_format=layout if i else torch.contiguous_format), persistent=False)
            self.register_buffer(f"bias{i}", b.contiguous(), persistent=False)
        self.num_layers = len(layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(z.shape[0], -1)
        if not self.on_cpu:
            return self._run(z)
        if z.requires_grad:  # autograd on z: each chunk keeps its own graph
            return torch.cat([self._run(part) for part in z.split(CPU_CHUNK_ROWS)])
        a = self.arch
        out = torch.empty((z.shape[0], a.channels, a.image_size, a.image_size), dtype=self.weight0.dtype, device=z.device)
        for start, part in zip(range(0, len(z), CPU_CHUNK_ROWS), z.split(CPU_CHUNK_ROWS)):
            self._run(part, out[start:start + CPU_CHUNK_ROWS])
        return out

    def _run(self, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Images for latents ``z``; written into ``out`` (a contiguous batch slice) when given."""
        n = z.shape[0]
        x = torch.addmm(self.bias0, z, self.weight0).view(n, -1, 4, 4).relu_()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for i in range(1, self.num_layers):
            last = i == self.num_layers - 1
            weight, bias = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
            if self.subpixel[i]:
                y = F.conv2d(x, weight, bias, padding=1)  # channels-last: the four phases of each pixel
                x = _interleave_phases(_tanh(y) if last else y.relu_(), out if last else None)
            else:
                x = F.conv_transpose2d(x, weight, bias, stride=2, padding=1)
                x = _tanh(x) if last else x.relu_()
        if out is None:
            return x.contiguous()
        return x if x is out else out.copy_(x)


def _interleave_phases(y: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Sub-pixel output (n, 4C, h, w), channels-last, channel (2a + b) C + c -> images
    (n, C, 2h, 2w) with pixel (2i + a, 2j + b) from position (i, j): channels-last, or written
    straight into the contiguous ``out`` (one copy either way)."""
    n, c4, h, w = y.shape
    c = c4 // 4
    phases = y.permute(0, 2, 3, 1).view(n, h, w, 2, 2, c)  # [n, i, j, a, b, c]
    if out is not None:
        out.view(n, c, h, 2, w, 2).copy_(phases.permute(0, 5, 1, 3, 2, 4))
        return out
    return phases.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


class Critic(nn.Module):
    """Mirror of the generator: image -> one unbounded score per image (a logit for ``dcgan``).

    BatchNorm is used only with the ``dcgan`` loss: the WGAN-GP gradient penalty is defined per
    sample, which batch statistics would break (Gulrajani et al., 2017).
    """

    def __init__(self, arch: Architecture, batch_norm: bool):
        super().__init__()
        self.arch, self.batch_norm = arch, batch_norm
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

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activation after each LeakyReLU: what a perceptual distance compares."""
        out = []
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                out.append(x)
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def generator_parameters(depth: int, image_size: int = DEFAULT_IMAGE_SIZE, channels: int = 1, latent_dim: int = DEFAULT_LATENT_DIM) -> int:
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
