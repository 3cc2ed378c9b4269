"""Convert an OpenAI CLIP checkpoint (e.g. ViT-L-14.pt) into our vision format.

    python weights/convert_clip.py ViT-L-14.pt clip-vit-l14/ [--dtype float16]

DST gets vision.safetensors (the visual tower only; the text tower is dropped) and config.json.
Load it with eas.load_clip.load_vision(DST).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from anywhere

import torch  # noqa: E402

from eas.io.load_clip import load_openai_clip, save_vision  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def convert(src: Path, dst: Path, dtype: str = "float16") -> Path:
    model = load_openai_clip(src, DTYPES[dtype])
    save_vision(model, dst)
    cfg = model.cfg
    print(f"{src} -> {dst}: ViT {cfg.layers} blocks, width {cfg.width}, {cfg.heads} heads, "
          f"{cfg.image_size}px / patch {cfg.patch_size}, {dtype}")
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="OpenAI CLIP checkpoint (.pt TorchScript, state dict or .safetensors)")
    parser.add_argument("dst", type=Path, help="output folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="stored dtype (OpenAI ships float16; default %(default)s)")
    args = parser.parse_args(argv)
    convert(args.src, args.dst, args.dtype)


if __name__ == "__main__":
    main()
