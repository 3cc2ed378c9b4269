"""Image files to model input: decoding and LaVIN's preprocessing (bicubic square resize, ImageNet statistics).

LaVIN normalises with ImageNet's mean/std, not CLIP's own (eas_method.md §5.2); a model tuned
LaVIN-style must see the same statistics at inference.
"""
from __future__ import annotations

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


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> float32 [3, size, size]."""
    # Resize even when already square: PIL's bicubic filter with antialiasing is what LaVIN's
    # torchvision Resize runs on PIL inputs, so the pixels match its pipeline.
    rgb = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Read and preprocess one image file; unreadable or corrupt files raise ImageError naming it."""
    return preprocess(open_image(path), size)
