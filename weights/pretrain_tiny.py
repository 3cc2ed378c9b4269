"""Recipe for the tiny pretrained LaVIN-style base shipped in weights/tiny/.

Full-parameter pretraining on CPU of the project's own LLaMA (dim 256, 8 layers) + CLIP-style ViT
(64 px, 6 blocks) + projector, mixing (a) language modelling on offline text (CPython's
pydoc topics and stdlib docstrings) and (b) image-text tasks on images that are NOT aerial scenes
(drawn shapes, scikit-learn digits, scikit-image textures and photos; weights/tiny_data.py).
Everything is a function of --seed. Resumable: a checkpoint is written atomically every few
minutes; run the same command again to continue.

    python weights/pretrain_tiny.py                 # full recipe (about 45 min on 2 cores)
    python weights/pretrain_tiny.py --steps 3 --check weights/tiny/recipe_check.json
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_data  # noqa: E402
from eas.errors import CheckpointError, EASError  # noqa: E402
from eas.io.checkpoint import save_model  # noqa: E402
from eas.io.files import atomic_write, read_json, write_text_atomic  # noqa: E402
from eas.model.config import LavinConfig, LlamaConfig  # noqa: E402
from eas.model.image import preprocess  # noqa: E402
from eas.model.lavin import Lavin, lm_loss  # noqa: E402
from eas.model.tokenizer import Tokenizer  # noqa: E402
from eas.tune.train import lr_at, make_optimizer, set_lr  # noqa: E402

HERE = Path(__file__).resolve().parent
BLOCK_LEN, TEXT_BATCH, IMAGE_BATCH = 128, 8, 24
LR, WARMUP, WEIGHT_DECAY = 1.5e-3, 100, 0.05


def build_model(tok: Tokenizer, seed: int) -> Lavin:
    base = LavinConfig.named("tiny")
    cfg = LavinConfig(llama=LlamaConfig(**{**base.llama.__dict__, "vocab_size": tok.vocab_size}), vision=base.vision)
    return Lavin(cfg).init_weights(torch.Generator().manual_seed(seed))


def text_blocks(tok: Tokenizer, split: str, seed: int) -> torch.Tensor:
    docs = [d.text for d in tiny_data.text_documents(split)]
    blocks = tiny_data.token_blocks(docs, lambda t: tok.encode(t, False, False), BLOCK_LEN, tok.bos_id, tok.eos_id,
                                    seed=seed)
    return torch.from_numpy(np.stack(list(blocks)))


def image_batch(model: Lavin, tok: Tokenizer, exs, with_answers: bool = True):
    pixels = torch.stack([preprocess(Image.fromarray(e.image), model.cfg.vision.image_size) for e in exs])
    batch = model.build_batch(tok, [(e.prompt, e.answer if with_answers else None, True) for e in exs])
    return batch, pixels


def schedule(step: int, total: int) -> float:
    """Linear warm-up over WARMUP steps, then a half-cycle cosine down to 10 % of LR.

    Step k is the (k + 1)-th update, so the first one already moves the weights. A run shorter
    than the warm-up (a --check) sees the same warm-up rates as the full recipe.
    """
    return lr_at(step + 1, max(total, WARMUP), WARMUP, LR, min_lr=0.1 * LR)


def train_step(model, opt, tok, blocks, step, total, seed):
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, blocks.shape[0], (TEXT_BATCH,), generator=g)
    tokens = blocks[idx]
    text_loss = lm_loss(model.llama(tokens[:, :-1]), tokens[:, 1:])
    exs = list(tiny_data.examples(seed, "train", IMAGE_BATCH, start=step * IMAGE_BATCH))
    batch, pixels = image_batch(model, tok, exs)
    image_loss = lm_loss(model(batch, pixels), batch.labels)
    set_lr(opt, schedule(step, total))
    opt.zero_grad(set_to_none=True)
    (text_loss + image_loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return text_loss.item(), image_loss.item()


def load_state(path: Path, model, opt) -> tuple[int, list]:
    """Resume from a state.pt this script wrote; anything else is a CheckpointError naming it."""
    try:
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        return state["step"], state["history"]
    except (OSError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot resume from {path} ({reason}); delete it to start over") from e


def pretrain(args) -> list:
    """Run (or resume) the recipe up to --steps; returns the (text, image) loss of every step."""
    tok = Tokenizer(args.out / "tokenizer.model")
    model = build_model(tok, args.seed)
    opt = make_optimizer(model, LR, WEIGHT_DECAY)
    blocks = text_blocks(tok, "train", args.seed)
    print(f"text: {blocks.shape[0]} blocks of {BLOCK_LEN} tokens; model: "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    ckpt_path, step, history = args.work / "state.pt", 0, []
    if args.check is None and ckpt_path.exists():
        step, history = load_state(ckpt_path, model, opt)
        print(f"resumed at step {step}", flush=True)
    last_save = time.time()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="pretrain", mininterval=5)
    model.train()
    for step in bar:
        history.append(train_step(model, opt, tok, blocks, step, args.steps, args.seed))
        bar.set_postfix(text=f"{history[-1][0]:.3f}", image=f"{history[-1][1]:.3f}")
        if time.time() - last_save > 180 and args.check is None:
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1, "history": history}
            atomic_write(ckpt_path, lambda f: torch.save(state, f))
            last_save = time.time()
    if args.check is None:
        save_model(model.half(), args.out, tokenizer=None)
    return history


def check(path: Path, history: list) -> int:
    """Compare the losses of the steps run with those recorded in `path`; prints the comparison."""
    recorded = read_json(path, "recipe check")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("losses"), list):
        raise CheckpointError(f"{path}: expected an object with a 'losses' list")
    expected = recorded["losses"][: len(history)]
    got = history[: len(expected)]
    ok = all(abs(a - b) < 1e-3 for e, g in zip(expected, got) for a, b in zip(e, g))
    print(json.dumps({"expected": expected, "got": got, "match": ok}))
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "tiny")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=HERE.parent / ".cache" / "pretrain_tiny",
                    help="resumable checkpoints (not shipped)")
    ap.add_argument("--check", type=Path, help="compare the first --steps losses with this JSON and stop")
    ap.add_argument("--record", type=int, default=5, help="first-step losses to record for --check")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        history = pretrain(args)
        if args.check is not None:
            return check(args.check, history)
        write_text_atomic(args.out / "recipe_check.json", json.dumps(
            {"command": "python weights/pretrain_tiny.py --steps 3 --check weights/tiny/recipe_check.json",
             "seed": args.seed, "threads": args.threads, "losses": history[: args.record]}, indent=1) + "\n")
        write_text_atomic(args.out / "train_log.json", json.dumps(
            {"steps": args.steps, "minutes": (time.time() - t0) / 60, "losses": history[::50]}) + "\n")
    except EASError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
