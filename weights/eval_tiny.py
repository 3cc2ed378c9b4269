"""Held-out evaluation of the tiny base, and its model card (weights/tiny/CARD.md).

    python weights/eval_tiny.py [--model weights/tiny] [--text-blocks 200] [--qa 1000]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_data  # noqa: E402
from pretrain_tiny import BLOCK_LEN, IMAGE_BATCH, TEXT_BATCH, image_batch, text_blocks  # noqa: E402
from eas.errors import EASError  # noqa: E402
from eas.io.checkpoint import load_model  # noqa: E402
from eas.io.files import read_json, write_text_atomic  # noqa: E402
from eas.model.tokenizer import Tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def model_perplexity(model, blocks: torch.Tensor, batch: int = 16) -> float:
    nll, n = 0.0, 0
    for i in range(0, blocks.shape[0], batch):
        x = blocks[i:i + batch]
        logits = model.llama(x[:, :-1]).float()
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        n += x[:, 1:].numel()
    return math.exp(nll / n)


def unigram_perplexity(train: torch.Tensor, heldout: torch.Tensor, vocab: int) -> float:
    """Add-one smoothed unigram model of the same tokenizer, fitted on the training blocks."""
    counts = torch.bincount(train.flatten(), minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[heldout[:, 1:].flatten()].mean().item())


def first_word(text: str) -> str:
    words = text.strip().lower().rstrip(".").split()
    return words[0].strip(".,!?") if words else ""


@torch.no_grad()
def qa_accuracy(model, tok, exs, batch: int = 50) -> dict[str, tuple[int, int]]:
    """Greedy answers to single-word questions -> {qtype: (correct, total)}."""
    exs = [e for e in exs if e.qtype != "caption"]
    score: dict[str, list[int]] = {}
    for i in range(0, len(exs), batch):
        chunk = exs[i:i + batch]
        b, pixels = image_batch(model, tok, chunk, with_answers=False)
        outs = model.generate(b, pixels, 4, eos_id=tok.eos_id)
        for e, out in zip(chunk, outs):
            s = score.setdefault(e.qtype, [0, 0])
            s[0] += first_word(tok.decode(out)) == e.answer
            s[1] += 1
    return {k: tuple(v) for k, v in sorted(score.items())}


@torch.no_grad()
def samples(model, tok, seed: int) -> list[tuple[str, str, str]]:
    exs = list(tiny_data.examples(seed + 1, "heldout", 6, mix={"shapes_caption": 1, "digits": 1, "shapes_qa": 1}))
    b, pixels = image_batch(model, tok, exs, with_answers=False)
    outs = model.generate(b, pixels, 32, eos_id=tok.eos_id)
    return [(e.prompt, e.answer, tok.decode(o)) for e, o in zip(exs, outs)]


def evaluate(model_dir: Path, n_blocks: int, n_qa: int, seed: int = 0) -> dict:
    model = load_model(model_dir, dtype=torch.float32).eval()
    tok = Tokenizer(model_dir / "tokenizer.model")
    heldout = text_blocks(tok, "heldout", seed)[:n_blocks]
    train = text_blocks(tok, "train", seed)
    qa = qa_accuracy(model, tok, list(tiny_data.examples(seed, "heldout", n_qa)))
    return {"text_ppl": model_perplexity(model, heldout), "unigram_ppl": unigram_perplexity(train, heldout, tok.vocab_size),
            "text_tokens": heldout[:, 1:].numel(), "qa": qa, "chance": tiny_data.chance_levels(),
            "majority": tiny_data.majority_rates(tiny_data.examples(seed, "heldout", n_qa)),
            "samples": samples(model, tok, seed)}


def card(res: dict, log: dict, model_dir: Path) -> str:
    cfg = read_json(model_dir / "config.json", "model config")
    total_c = sum(c for c, _ in res["qa"].values())
    total_n = sum(n for _, n in res["qa"].values())
    rows = "\n".join(f"| {q} | {c}/{n} = {c / n:.2f} | {res['chance'][q][1]:.2f} | {res['majority'][q][1]:.2f} |"
                     for q, (c, n) in res["qa"].items())
    samp = "\n".join(f"- `{p!r}` → expected `{a}`, generated `{g!r}`" for p, a, g in res["samples"])
    ll, vv = cfg["llama"], cfg["vision"]
    return f"""# Tiny LaVIN-style base (`weights/tiny/`)

A small **pretrained** multimodal base so that `python run.py tune --task aid` can demonstrate EAS
on a 2-core CPU with no downloads. It is *not* a LLaMA/CLIP checkpoint: it is the project's own
LLaMA and CLIP-ViT modules at a small size, trained from scratch by `weights/pretrain_tiny.py`.

## Architecture
- LLaMA decoder: dim {ll['dim']}, {ll['n_layers']} layers, {ll['n_heads']} heads ({ll['n_kv_heads']} KV heads),
  SwiGLU width {ll['hidden_dim']}, vocab {ll['vocab_size']}, RoPE θ {ll['rope_theta']}.
- CLIP-style ViT: {vv['image_size']} px, patch {vv['patch_size']}, width {vv['width']}, {vv['layers']} blocks,
  {vv['heads']} heads; LaVIN taps the CLS token after every block → 6 visual tokens → AdapterMLP → LLaMA width.
- Stored in fp16 safetensors (`model.safetensors`), config in `config.json`, tokenizer `tokenizer.model`
  (SentencePiece BPE, 2000 pieces, exact round trip; `weights/train_tokenizer.py`).

## Data (all offline, generated or read from installed packages)
- Text: CPython's `pydoc_data.topics` and stdlib docstrings (collected with `ast`), deduplicated, split
  ~90/10 by a hash of the text.
- Images (64 px, none of them aerial or scene-like): procedurally drawn shapes with captions and
  single-word questions (count, colour, shape, position, size, background), scikit-learn's bundled
  handwritten digits, scikit-image's bundled textures (brick, grass, gravel) and photos.
  Held-out layouts, digit bitmaps and texture regions never appear in training (`weights/tiny_data.py`).
- The downstream AID task (synthetic remote-sensing scenes, 30 labels) is never seen here.

## Training
Full-parameter AdamW (β 0.9/0.95, lr {1.5e-3}, warm-up 100 steps then cosine to 10 %, weight decay 0.05,
grad-clip 1.0), {log['steps']} steps; each step = {TEXT_BATCH} text blocks of {BLOCK_LEN} tokens + {IMAGE_BATCH}
image–text examples. {log['minutes']:.0f} minutes on 2 CPU cores. Loss (text, image) every 50 steps is in
`train_log.json`; first/last: {tuple(round(x, 3) for x in log['losses'][0])} → {tuple(round(x, 3) for x in log['losses'][-1])}.

## Held-out metrics
- Text perplexity on {res['text_tokens']} held-out tokens: **{res['text_ppl']:.1f}**, against
  {res['unigram_ppl']:.1f} for an add-one unigram model of the same tokenizer
  ({res['unigram_ppl'] / res['text_ppl']:.1f}× better).
- Single-word image questions on held-out images (greedy, first word, exact match):
  **{total_c}/{total_n} = {total_c / total_n:.2f}** overall.

| question type | accuracy | uniform chance | always-majority |
|---|---|---|---|
{rows}

## Sample generations (held-out)
{samp}

## Regenerate
```bash
python weights/train_tokenizer.py                      # weights/tiny/tokenizer.model (seconds)
python weights/pretrain_tiny.py                        # weights/tiny/model.safetensors (~{log['minutes']:.0f} min, resumable)
python weights/eval_tiny.py                            # this card
python weights/pretrain_tiny.py --steps 3 --check weights/tiny/recipe_check.json   # reproducibility check
```
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=HERE / "tiny")
    ap.add_argument("--text-blocks", type=int, default=200)
    ap.add_argument("--qa", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    try:
        res = evaluate(args.model, args.text_blocks, args.qa)
        text = card(res, read_json(args.model / "train_log.json", "training log"), args.model)
        write_text_atomic(args.model / "CARD.md", text)
        write_text_atomic(args.model / "metrics.json",
                          json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))
    except EASError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
