"""The plain reference: the same work as gankd's paths, written the way most public GAN code is.

This is deliberately ordinary PyTorch, after the official DCGAN example and the common WGAN-GP
implementations: a per-sample ``Dataset`` that normalises one image per ``__getitem__`` behind a
``DataLoader(shuffle=True, drop_last=True, num_workers=0)``, separate D(real) / D(fake) / D(interp)
passes for WGAN-GP, ``.item()`` on every loss every step, float32 in the default memory format,
gradients of the critic computed in the generator step too (and cleared by the next
``zero_grad``), and a distillation teacher run with autograd on. The mathematics is exactly
gankd's: the same networks (parameter counts are checked against ``gankd.models``), losses,
optimiser settings, batch sizes and number of critic steps, and fresh latents every step.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class DCGANGenerator(nn.Module):
    """ConvTranspose-BatchNorm-ReLU blocks from a 4x4 seed to the image, then Tanh (as gankd's)."""

    def __init__(self, depth: int, image_size: int = 32, channels: int = 1, latent_dim: int = 100):
        super().__init__()
        blocks = int(np.log2(image_size)) - 2
        width = depth * 2 ** (blocks - 1)
        layers = [nn.ConvTranspose2d(latent_dim, width, 4, 1, 0), nn.BatchNorm2d(width, affine=False), nn.ReLU(True)]
        while width > depth:
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2, affine=False), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(depth, channels, 4, 2, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.size(0), -1, 1, 1))


class DCGANCritic(nn.Module):
    """Strided Conv-LeakyReLU blocks to one score per image; BatchNorm only for the dcgan loss."""

    def __init__(self, depth: int, image_size: int = 32, channels: int = 1, batch_norm: bool = False):
        super().__init__()
        blocks = int(np.log2(image_size)) - 2
        layers: list[nn.Module] = [nn.Conv2d(channels, depth, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = depth
        for _ in range(blocks - 1):
            layers.append(nn.Conv2d(width, width * 2, 4, 2, 1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


class ImageDataset(Dataset):
    """One uint8 image per index, converted and normalised to [-1, 1] on its own."""

    def __init__(self, images: np.ndarray):
        self.images = images  # (N, C, S, S) uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(self.images[index]).float() / 255.0  # ToTensor
        return (image - 0.5) / 0.5  # Normalize((0.5,), (0.5,))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(interpolates)
    gradients = torch.autograd.grad(outputs=scores, inputs=interpolates, grad_outputs=torch.ones_like(scores),
                                    create_graph=True, retain_graph=True)[0]
    return ((gradients.view(gradients.size(0), -1).norm(2, dim=1) - 1) ** 2).mean()


class Throughput:
    """Images per second over each ``every`` steps (the device synchronised before each reading)."""

    def __init__(self, device: torch.device, every: int, batch_size: int):
        self.device, self.every, self.batch_size = device, every, batch_size
        self.rates: list[float] = []
        self.start = time.perf_counter()

    def step(self, step: int) -> None:
        if step % self.every:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.rates.append(self.every * self.batch_size / (now - self.start))
        self.start = now


def train_gan(images: np.ndarray, *, depth: int, loss: str, batch_size: int, critic_steps: int, lr: float,
              betas: tuple[float, float], steps: int, log_every: int, gp_lambda: float = 10.0, latent_dim: int = 100,
              device: str | torch.device = "cpu", seed: int = 0) -> list[float]:
    """Train a GAN from scratch; returns images/s of each ``log_every``-step interval (generator
    steps x batch size / wall time), as gankd logs them."""
    device = torch.device(device)
    torch.manual_seed(seed)
    _, channels, size, _ = images.shape
    netG = DCGANGenerator(depth, size, channels, latent_dim).to(device)
    netD = DCGANCritic(depth, size, channels, batch_norm=loss == "dcgan").to(device)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=lr, betas=betas)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=lr, betas=betas)
    criterion = nn.BCEWithLogitsLoss()
    dataloader = DataLoader(ImageDataset(images), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    data_iter = iter(dataloader)
    d_losses, g_losses = [], []
    meter = Throughput(device, log_every, batch_size)
    for step in range(1, steps + 1):
        # (1) update D
        for _ in range(critic_steps):
            try:
                real = next(data_iter)
            except StopIteration:
                data_iter = iter(dataloader)
                real = next(data_iter)
            real = real.to(device)
            noise = torch.randn(batch_size, latent_dim, device=device)
            fake = netG(noise).detach()
            netD.zero_grad()
            if loss == "wgan-gp":
                d_real = netD(real).mean()
                d_fake = netD(fake).mean()
                errD = d_fake - d_real + gp_lambda * gradient_penalty(netD, real, fake)
            else:
                out_real, out_fake = netD(real), netD(fake)
                errD = criterion(out_real, torch.ones_like(out_real)) + criterion(out_fake, torch.zeros_like(out_fake))
            errD.backward()
            optimizerD.step()
            d_losses.append(errD.item())
        # (2) update G
        netG.zero_grad()
        noise = torch.randn(batch_size, latent_dim, device=device)
        output = netD(netG(noise))
        errG = -output.mean() if loss == "wgan-gp" else criterion(output, torch.ones_like(output))
        errG.backward()
        optimizerG.step()
        g_losses.append(errG.item())
        meter.step(step)
    return meter.rates


def distill_mse(teacher_state: dict[str, torch.Tensor], *, teacher_depth: int, depth: int, image_size: int, channels: int,
                batch_size: int, lr: float, betas: tuple[float, float], steps: int, log_every: int, latent_dim: int = 100,
                device: str | torch.device = "cpu", seed: int = 0) -> list[float]:
    """MSE distillation: the student regresses the teacher's image for the same fresh z, loss the
    squared L2 norm per image averaged over the batch. Returns images/s per interval."""
    device = torch.device(device)
    torch.manual_seed(seed)
    teacher = DCGANGenerator(teacher_depth, image_size, channels, latent_dim).to(device)
    teacher.load_state_dict(teacher_state)
    teacher.eval()
    student = DCGANGenerator(depth, image_size, channels, latent_dim).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr, betas=betas)
    losses = []
    meter = Throughput(device, log_every, batch_size)
    for step in range(1, steps + 1):
        z = torch.randn(batch_size, latent_dim, device=device)
        target = teacher(z)
        output = student(z)
        loss = F.mse_loss(output, target.detach(), reduction="sum") / batch_size
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        meter.step(step)
    return meter.rates


def generate(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Sampling as usually written: eval mode, ``torch.no_grad()``, one forward."""
    generator.eval()
    with torch.no_grad():
        return generator(z)


def gankd_state_to_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gankd's generator tensors (``net.*``) under the reference's names (``main.*``)."""
    return {"main." + k.split(".", 1)[1]: v for k, v in state.items()}


def digit_metrics(generator: nn.Module, classifier: nn.Module, n: int, real: dict[str, np.ndarray],
                  device: str | torch.device = "cpu", batch_size: int = 64, splits: int = 10) -> tuple[float, float]:
    """Inception Score and classifier FID of ``n`` samples as usually computed: sample a batch,
    quantise it to 8 bits (as saved PNGs are), run the classifier for its logits and again for
    its features, then softmax / entropy for IS and scipy's ``sqrtm`` for FID (pytorch-fid)."""
    from scipy import linalg

    device = torch.device(device)
    generator.eval()
    g = torch.Generator().manual_seed(0)
    probs, feats = [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - start), 100, generator=g).to(device)
            images = generator(z)
            images = ((images + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
            probs.append(F.softmax(classifier.logits(images), dim=1).double().cpu().numpy())
            feats.append(classifier.features(images).cpu().numpy())
    p, x = np.concatenate(probs), np.concatenate(feats).astype(np.float64)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = part * (np.log(part + 1e-12) - np.log(py + 1e-12))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    mu, sigma = x.mean(axis=0), np.cov(x, rowvar=False)
    covmean, _ = linalg.sqrtm(sigma @ real["sigma"], disp=False)
    fid = ((mu - real["mu"]) ** 2).sum() + np.trace(sigma) + np.trace(real["sigma"]) - 2 * np.trace(covmean.real)
    return float(np.mean(scores)), float(fid)
