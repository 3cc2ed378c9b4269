"""Convert Meta or Hugging Face LLaMA weights to the eas format (config.json + model.safetensors).

    python weights/convert_llama.py SRC DST [--dtype bf16|fp16|fp32]

SRC is a Meta folder (params.json + consolidated.NN.pth) or a Hugging Face folder (config.json +
safetensors). DST must be new or empty; tokenizer.model is copied when found. The default fp16 is
lossless for Meta's releases and the usual Hugging Face LLaMA-1 exports, which are stored in fp16.
Any failure is one line naming the file at fault, exit status 2, and no DST left behind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script without installing eas

from eas.errors import exit_status  # noqa: E402
from eas.io.checkpoint import save_model  # noqa: E402
from eas.io.files import new_folder  # noqa: E402
from eas.io.load_llama import detect_format, load_llama  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def convert(src: Path, dst: Path, dtype: str = "fp16") -> None:
    with new_folder(dst) as tmp:  # refuses a non-empty DST (the source itself included) before any reading
        fmt = detect_format(src)
        model, tokenizer = load_llama(src, DTYPES[dtype])
        save_model(model, tmp, tokenizer)
    cfg = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    print(f"read {fmt} checkpoint {src}: {cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_heads} heads "
          f"({cfg.n_kv_heads} kv), ffn {cfg.hidden_dim}, vocab {cfg.vocab_size}, {n_params / 1e6:.1f}M parameters")
    print(f"wrote {dst}/: model.safetensors ({dtype}), config.json"
          + (f", tokenizer.model (from {tokenizer})" if tokenizer else "; no tokenizer.model found"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="Meta or Hugging Face LLaMA folder")
    parser.add_argument("dst", type=Path, help="output folder (created; must not hold files)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="stored dtype (default fp16)")
    args = parser.parse_args(argv)
    return exit_status(convert, args.src, args.dst, args.dtype)


if __name__ == "__main__":
    sys.exit(main())
