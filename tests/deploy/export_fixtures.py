"""Small merged models saved as merged.pt, for the export tests: LaVIN-style, LLaVA-style or
text-only, static or dynamic, adapters set as after training (non-zero everywhere) so the merge changes the model."""
from __future__ import annotations

import atexit
import pydoc_data.topics
import shutil
import tempfile
from pathlib import Path

import torch

from eas.adapters.attach import EASConfig, add_adapters
from eas.adapters.calibrate import calibrate_routes
from eas.adapters.merge import merge
from eas.adapters.pia import PIA
from eas.data.aid import AID_FORMAT, AID_LLAVA_FORMAT
from eas.io.merged import save_merged
from eas.model.config import LavinConfig, LlamaConfig, LlavaConfig, VisionConfig
from eas.model.lavin import Lavin
from eas.model.llava import Llava
from eas.model.llama import Llama
from eas.model.tokenizer import Tokenizer, left_pad, train_tokenizer

VOCAB = 400
SKIP = (0, 2)
PROMPTS = [("What is the label for this image?\nResponse:", True), ("Hi there", False), ("Name it:", True)]


def make_tokenizer(folder: Path) -> Tokenizer:
    corpus = list(pydoc_data.topics.topics.values())[:8]
    return train_tokenizer(corpus, folder / "tokenizer.model", vocab_size=VOCAB)


def encode_batch(tok: Tokenizer, prompts: list[str]):
    """Text-only prompts -> left-padded (tokens, positions, key_mask), as run.py's text-only path builds them."""
    return left_pad([tok.encode(p, bos=True, eos=False) for p in prompts], tok.pad_id)


def pixels(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make_merged(folder: Path, tok: Tokenizer, kind: str, mode: str, seed: int = 0) -> Path:
    """Write folder/merged.pt (tokenizer referenced as ../tokenizer.model) and return its path."""
    gen = torch.Generator().manual_seed(seed)
    llama_cfg = LlamaConfig.named("test", vocab_size=VOCAB)
    if kind == "lavin":
        model = Lavin(LavinConfig(llama=llama_cfg, vision=VisionConfig.named("test"))).init_weights(gen)
    elif kind == "llava":
        llama_cfg = LlamaConfig.named("test", vocab_size=VOCAB, max_seq_len=256)  # vicuna_v1's system prompt is long
        model = Llava(LlavaConfig(llama=llama_cfg, vision=VisionConfig.named("test"))).init_weights(gen)
    else:
        model = Llama(llama_cfg).init_weights(gen)
    model = add_adapters(model, EASConfig(adapter_dim=4, skip_dim=8, skip_layers=SKIP)).eval()
    for m in model.modules():
        if isinstance(m, PIA):
            for p in m.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.2
    if mode == "static":
        if kind != "text":
            batch = model.build_batch(tok, [(p, None, img) for p, img in PROMPTS])
            calibrate_routes(model, [(batch, pixels(3, model.cfg.vision.image_size))], forward=lambda m, b: m(*b))
        else:
            tokens, positions, mask = encode_batch(tok, [p for p, _ in PROMPTS])
            calibrate_routes(model, [(model.tok_embeddings(tokens), positions, mask, mask)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "merged.pt"
    save_merged(merge(model, mode), path, AID_LLAVA_FORMAT if kind == "llava" else AID_FORMAT,
                tokenizer="../tokenizer.model")
    return path


_ROOT: Path | None = None
_EXPORTS: dict[tuple[str, str], Path] = {}


def exported(kind: str, mode: str) -> Path:
    """The verified ONNX export folder of a (kind, mode) test model, made once per test session
    (every export test file reads the same folders; exporting is the slow part)."""
    global _ROOT
    from export.pipeline import export_model
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="eas-export-tests-"))
        atexit.register(shutil.rmtree, _ROOT, True)
        make_tokenizer(_ROOT)
    if (kind, mode) not in _EXPORTS:
        tok = Tokenizer(_ROOT / "tokenizer.model")
        merged = make_merged(_ROOT / f"{kind}-{mode}", tok, kind, mode)
        export_model(merged, merged.parent / "export", onnx_only=True, log=lambda line: None)
        _EXPORTS[kind, mode] = merged.parent / "export"
    return _EXPORTS[kind, mode]
