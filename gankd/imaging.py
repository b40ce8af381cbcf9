"""Image grids as PNG files (Pillow): sample sheets and labelled side-by-side comparisons."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gankd.files import atomic_write_bytes


def grid_array(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] -> one (rows*H, cols*W, C) uint8 array with a white border."""
    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), 255, np.uint8)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        r, k = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        sheet[y : y + h, x : x + w] = image
    return sheet


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")


def save_png(image: Image.Image, path: str | Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> None:
    image = _to_pil(grid_array(images, nrow))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    save_png(image, path)


def save_comparison(panels: list[tuple[str, torch.Tensor]], path: str | Path, nrow: int | None = None, scale: int = 1) -> None:
    """Several grids side by side, each under a caption (e.g. teacher | student d=4)."""
    font = ImageFont.load_default()
    grids = [_to_pil(grid_array(images, nrow)) for _, images in panels]
    if scale > 1:
        grids = [g.resize((g.width * scale, g.height * scale), Image.NEAREST) for g in grids]
    caption_h, gap = 16, 8
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    sheet = Image.new("RGB", (width, max(g.height for g in grids) + caption_h), "white")
    draw = ImageDraw.Draw(sheet)
    x = 0
    for (caption, _), grid in zip(panels, grids):
        draw.text((x + 2, 2), caption, fill="black", font=font)
        sheet.paste(grid, (x, caption_h))
        x += grid.width + gap
    save_png(sheet, path)
