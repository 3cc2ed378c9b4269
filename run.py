"""EAS command line: `python run.py <command> --help`.

    tune       adapt a LaVIN-style model to a task with EAS: search, fine-tune, evaluate, merge
    generate   answer a prompt (optionally about an image) with a LaVIN-style model
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from eas.model.config import LavinConfig
from eas.model.image import load_image
from eas.model.lavin import Lavin
from eas.model.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent
TINY = ROOT / "weights" / "tiny"


def load_for_generation(model: str | None, random_init: bool, tokenizer: str | None):
    """-> (model, tokenizer, description). Own-format folders, merged.pt, Meta/HF LLaMA folders."""
    tok_path = Path(tokenizer) if tokenizer else None
    if random_init:
        tok_path = tok_path or TINY / "tokenizer.model"
        net = Lavin(LavinConfig.named("tiny")).init_weights(torch.Generator().manual_seed(0))
        return net, Tokenizer(tok_path), "tiny LaVIN-style model with RANDOM weights (untrained: output is noise)"
    path = Path(model) if model else TINY
    if not path.exists():
        raise SystemExit(f"error: model {path} not found (pass --model DIR|merged.pt, or --random)")
    if path.is_file():
        from eas.io.merged import load_merged
        net = load_merged(path)
        tok_path = tok_path or (Path(net.tokenizer_ref) if net.tokenizer_ref else None)
    elif (path / "params.json").exists() or (path / "config.json").exists():
        from eas.io.load_llama import detect_format, load_llama
        if detect_format(path) == "eas":
            from eas.io.checkpoint import load_model
            net = load_model(path)
            tok_path = tok_path or path / "tokenizer.model"
        else:
            net, found = load_llama(path)
            tok_path = tok_path or found
    else:
        raise SystemExit(f"error: {path} holds no params.json or config.json: not a model folder")
    if tok_path is None or not Path(tok_path).exists():
        raise SystemExit(f"error: no tokenizer for {path}; pass --tokenizer FILE")
    return net, Tokenizer(tok_path), str(path)


def generate(prompt: str, image: str | None = None, model: str | None = None, random_init: bool = False,
             tokenizer: str | None = None, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0) -> str:
    net, tok, what = load_for_generation(model, random_init, tokenizer)
    net.eval()
    print(f"model: {what}", file=sys.stderr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    if isinstance(net, Lavin):
        pixels = None
        if image is not None:
            pixels = load_image(image, net.cfg.vision.image_size)[None]
        batch = net.build_batch(tok, [(prompt, None, image is not None)])
        out = net.generate(batch, pixels, max_new_tokens, eos_id=tok.eos_id, temperature=temperature,
                           top_p=top_p, generator=gen)[0]
    else:
        if image is not None:
            raise SystemExit("error: --image needs a multimodal (LaVIN) model; this one is a text-only LLaMA")
        from eas.model.generate import generate as generate_tokens, left_pad
        tokens, positions, key_mask = left_pad([tok.encode(prompt, bos=True, eos=False)])
        with torch.no_grad():
            out = generate_tokens(net, net.tok_embeddings(tokens), positions, key_mask, max_new_tokens,
                                  eos_id=tok.eos_id, temperature=temperature, top_p=top_p, generator=gen)[0]
    text = tok.decode(out)
    print(f"{len(out)} tokens in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    print(text)
    return text


TUNE_HELP = {
    "task": "aid (synthetic AID-like data without --data-root), scienceqa or slake",
    "data_root": "the data set's folder (AID: <ClassDir>/<class>_<n>.jpg)",
    "setting": "AID train share: 20 or 50 (%%), as in the paper",
    "base": "own-format LaVIN folder (default: the tiny pretrained base in weights/tiny)",
    "llama": "Meta or Hugging Face LLaMA folder (with --clip, instead of --base)",
    "clip": "OpenAI CLIP checkpoint or converted folder (with --llama)",
    "out": "run folder: log.jsonl, state.pt, report.*, merged.pt",
    "skip": "K units to skip (default: a quarter of the layers; 0 = adapter-only baseline)",
    "skip_set": "comma-separated layers to skip, no search (e.g. 1,5)",
    "unit": "what a skipped layer loses: attention (EAS), ffn, or layer (as DAS); only attention merges "
            "away completely",
    "warm_start": "fine-tune from the super-net's adapters instead of fresh ones",
    "merge": "the form written to merged.pt: static or dynamic",
    "max_test": "evaluate on the first N test examples only",
    "resume": "continue an interrupted run in --out from its last checkpoint",
    "save_minutes": "checkpoint at least this often",
    "save_every": "also checkpoint every N steps (0: by time only)",
}


def _add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per TuneConfig field, typed from its default, so CLI and library cannot drift."""
    import dataclasses
    for f in dataclasses.fields(cls):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        help_ = TUNE_HELP.get(f.name, f.name.replace("_", " "))
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_)
        elif f.name == "skip_set":
            parser.add_argument(flag, type=lambda v: tuple(int(x) for x in v.split(",") if x.strip()),
                                default=None, help=help_)
        else:
            kind = {"int | None": int, "str | None": str}.get(str(f.type), type(default) if default is not None else str)
            parser.add_argument(flag, type=kind, default=default, help=f"{help_} (default {default})")


def tune(**kwargs) -> dict:
    from eas.tune.report import summary_lines
    from eas.tune.pipeline import TuneConfig, tune as run_tune
    report = run_tune(TuneConfig(**kwargs))
    if report:
        print("\n".join(summary_lines(report)))
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="run.py", description="EAS: parameter- and computation-efficient tuning "
                                 "of LaVIN-style multimodal LLMs (Effective Attention Skipping).")
    sub = ap.add_subparsers(dest="command", required=True)
    from eas.tune.pipeline import TuneConfig
    t = sub.add_parser("tune", help="EAS recipe end to end: search, fine-tune, evaluate, merge -> merged.pt")
    _add_dataclass_args(t, TuneConfig)
    g = sub.add_parser("generate", help="answer a prompt (optionally about an image)")
    g.add_argument("--prompt", default="Question: What is the label for this image?\nResponse:")
    g.add_argument("--image", help="image file (LaVIN models only)")
    g.add_argument("--model", help=f"own-format folder, merged.pt, or Meta/HF LLaMA folder (default {TINY})")
    g.add_argument("--random", dest="random_init", action="store_true",
                   help="tiny LaVIN-style model with random weights (smoke test)")
    g.add_argument("--tokenizer", help="SentencePiece model (default: the one next to the model)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    args = vars(ap.parse_args(argv))
    command = args.pop("command")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    from eas.io.checkpoint import CheckpointError
    from eas.data import DataError
    from eas.model.image import ImageError
    from eas.model.tokenizer import TokenizerError
    try:
        {"generate": generate, "tune": tune}[command](**args)
    except (CheckpointError, DataError, ImageError, TokenizerError) as e:  # bad input: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
