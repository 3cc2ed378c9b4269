"""Convert an OpenAI CLIP checkpoint (e.g. ViT-L-14.pt) into the eas format.

    python weights/convert_clip.py ViT-L-14.pt clip-vit-l14/ [--dtype float16]

DST (new, or an empty folder) gets model.safetensors (the visual tower only; the text tower is
dropped) and config.json. Load it with eas.io.load_clip.load_vision(DST). Any failure is one line
naming the file at fault, exit status 2, and no DST left behind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from anywhere

import torch  # noqa: E402

from eas.errors import exit_status  # noqa: E402
from eas.io.checkpoint import save_model  # noqa: E402
from eas.io.files import new_folder  # noqa: E402
from eas.io.load_clip import load_openai_clip  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def convert(src: Path, dst: Path, dtype: str = "float16") -> Path:
    with new_folder(dst) as tmp:  # refuses a non-empty DST before any reading
        model = load_openai_clip(src, DTYPES[dtype])
        save_model(model, tmp)
    cfg = model.cfg
    print(f"{src} -> {dst}: ViT {cfg.layers} blocks, width {cfg.width}, {cfg.heads} heads, "
          f"{cfg.image_size}px / patch {cfg.patch_size}, {dtype}")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="OpenAI CLIP checkpoint (.pt TorchScript, state dict or .safetensors)")
    parser.add_argument("dst", type=Path, help="output folder (created; must not hold files)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="stored dtype (OpenAI ships float16; default %(default)s)")
    args = parser.parse_args(argv)
    return exit_status(convert, args.src, args.dst, args.dtype)


if __name__ == "__main__":
    sys.exit(main())
