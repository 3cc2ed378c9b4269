"""python export/to_trt.py merged.pt [--out DIR] [--dtype fp32|fp16] [--max-batch B] [--max-seq S] [--onnx-only]

Exports the merged model's graphs to ONNX, verifies them against PyTorch in ONNX Runtime, writes
manifest.json and, when a TensorRT module is importable, the engines. See docs/DEPLOY.md.
Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from eas.errors import exit_status  # noqa: E402
from export.pipeline import default_out, export_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="merged.pt -> verified ONNX graphs, manifest.json, TensorRT engines")
    p.add_argument("merged", type=Path, help="merged.pt written by `python run.py tune`")
    p.add_argument("--out", type=Path, help="output folder (default: <merged>-export next to merged.pt)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--max-batch", type=int, default=4, help="largest batch of the engines' profiles")
    p.add_argument("--max-seq", type=int, help="most slots (prompt + generated) per example (default: the "
                                                "model's max_seq_len)")
    p.add_argument("--onnx-only", action="store_true", help="stop after the verified ONNX graphs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(export_model, args.merged, args.out or default_out(args.merged), args.dtype,
                       args.max_batch, args.max_seq, args.onnx_only, lambda line: print(line, file=sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
