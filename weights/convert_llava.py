"""Convert a LLaVA-1.5 checkpoint (original release + its CLIP tower, or llava-hf) into the eas format.

    python weights/convert_llava.py llava-v1.5-7b/ llava-7b/ --clip clip-vit-large-patch14-336/
    python weights/convert_llava.py llava-1.5-7b-hf/ llava-7b/

DST (new, or an empty folder) gets config.json (a LlavaConfig), model.safetensors and
tokenizer.model. Load it with eas.io.checkpoint.load_model(DST). Any failure is one line naming
the file at fault, exit status 2, and no DST left behind.
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
from eas.io.load_llava import load_llava  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def convert(src: Path, dst: Path, clip: Path | None = None, dtype: str = "float16") -> Path:
    with new_folder(dst) as tmp:  # refuses a non-empty DST before any reading
        model, tokenizer = load_llava(src, clip, DTYPES[dtype])
        save_model(model, tmp, tokenizer)
    cfg = model.cfg
    print(f"{src} -> {dst}: LLaMA {cfg.llama.n_layers} layers x {cfg.llama.dim}, ViT {cfg.vision.layers} blocks "
          f"at {cfg.vision.image_size}px, features of hidden state {cfg.feature_layer}, {dtype}")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="LLaVA folder (original release or llava-hf)")
    parser.add_argument("dst", type=Path, help="output folder (created; must not hold files)")
    parser.add_argument("--clip", type=Path, help="the CLIP tower of an original release (Hugging Face folder)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="stored dtype (default %(default)s)")
    args = parser.parse_args(argv)
    return exit_status(convert, args.src, args.dst, args.clip, args.dtype)


if __name__ == "__main__":
    sys.exit(main())
