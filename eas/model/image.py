"""Image files to model input: decoding, LaVIN's preprocessing (bicubic square resize, ImageNet
statistics) and LLaVA-1.5's (expand2square, then CLIP's resize and statistics).

LaVIN normalises with ImageNet's mean/std, not CLIP's own (eas_method.md §5.2); a model tuned
LaVIN-style must see the same statistics at inference.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eas.errors import ImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_image(path: str | Path) -> Image.Image:
    """Decode one image file to RGB; a corrupt or unreadable file raises ImageError naming it."""
    try:
        with Image.open(path) as image:
            # convert() forces a full decode, so truncated files fail here and not in a batch.
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


PIXEL_DIVISOR = 255  # 8-bit values to [0, 1]; a division, as torchvision's ToTensor (a multiply by float32(1/255) differs)


def pixel_array(image: Image.Image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                divisor: float = PIXEL_DIVISOR) -> np.ndarray:
    """PIL image -> float32 numpy [3, size, size]: the one implementation of the preprocessing, which
    the export runtime (export/runtime.py) calls with the manifest's numbers."""
    # Resize even when already square: PIL's bicubic filter with antialiasing is what LaVIN's
    # torchvision Resize runs on PIL inputs, so the pixels match its pipeline.
    rgb = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / np.float32(divisor)
    mean, std = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (mean, std))
    return (x - mean) / std


def preprocess(image: Image.Image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """PIL image -> float32 [3, size, size], normalised with `mean`/`std` (LaVIN: ImageNet's)."""
    return torch.from_numpy(pixel_array(image, size, mean, std))


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's padding: the image centred on a square canvas of its longer side, filled with
    `background` (the processor's mean colour), so that the crop that follows loses nothing."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def llava_preprocess(image: Image.Image, size: int, mean, std) -> torch.Tensor:
    """LLaVA-1.5's pipeline: expand2square with the mean colour, then CLIPImageProcessor (bicubic
    resize of the shorter side to `size`, centre crop, which a square image no longer needs, CLIP
    normalisation)."""
    square = expand2square(image.convert("RGB"), tuple(int(m * 255) for m in mean))
    return preprocess(square, size, mean, std)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Read and preprocess one image file; unreadable or corrupt files raise ImageError naming it."""
    return preprocess(open_image(path), size)


def pixel_loader(cfg) -> Callable[[str | Path], torch.Tensor]:
    """The image-file -> pixels function a model config was trained with (LLaVA's or LaVIN's)."""
    size = cfg.vision.image_size
    if hasattr(cfg, "image_mean"):  # LlavaConfig
        return lambda path: llava_preprocess(open_image(path), size, cfg.image_mean, cfg.image_std)
    return lambda path: load_image(path, size)
