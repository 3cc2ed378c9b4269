"""Every exported graph against the PyTorch module it was traced from, in ONNX Runtime (CPU).

Two input sets per graph: random (shapes other than the traced ones, batch 1 and 3) and real
(a real photo and prompts through the manifest's layout, one greedy decode step after a real
prefill). Each output must have the declared shape and a relative error (Frobenius) within the
tolerance; the first that is not stops the export, naming graph, tensor, input set and error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from eas.errors import EASError
from eas.model.image import preprocess
from eas.model.tokenizer import Tokenizer
from export.layout import decode_buffers, prompts_layout
from export.onnx_export import GraphSpec, example_inputs

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
RANDOM_DIMS = [{"batch": 1, "images": 1, "seq": 3, "slots": 1}, {"batch": 3, "images": 3, "seq": 11, "slots": 6}]
REAL_PROMPTS = [("What is the label for this image?", True), ("Describe the scene.", False)]


class VerificationError(EASError):
    """An exported graph does not compute what the PyTorch model computes."""


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def real_photo(size: int) -> torch.Tensor:
    """A real photograph (scikit-learn ships it) through the model's own preprocessing."""
    from sklearn.datasets import load_sample_image
    return preprocess(Image.fromarray(load_sample_image("china.jpg")), size)[None]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    scale = np.linalg.norm(ref)
    return float(np.linalg.norm(got - ref) / (scale if scale > 0 else 1.0))


@torch.no_grad()
def check(spec: GraphSpec, session: ort.InferenceSession, inputs: list[torch.Tensor], which: str,
          tolerance: float, errors: dict[str, float]) -> list[torch.Tensor]:
    """Compare one graph on one input set; record the worst error per output; return PyTorch's outputs."""
    ref = spec.module(*[x.clone() for x in inputs])  # the decode step writes its state in place
    ref = list(ref) if isinstance(ref, tuple) else [ref]
    got = session.run(None, {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)})
    for t, g, r in zip(spec.outputs, got, ref):
        if g.shape != tuple(r.shape):
            raise VerificationError(f"{spec.file}: output {t.name} has shape {g.shape} in ONNX Runtime, "
                                    f"{tuple(r.shape)} in PyTorch ({which} inputs)")
        err = rel_err(g, r.float().numpy())
        if not err <= tolerance:  # also catches NaN
            raise VerificationError(f"{spec.file}: output {t.name} differs from PyTorch by relative error "
                                    f"{err:.3g} > {tolerance:g} ({which} inputs)")
        errors[t.name] = max(errors.get(t.name, 0.0), err)
    return ref


def real_inputs(model, specs: dict[str, GraphSpec], tok: Tokenizer, sequence: dict) -> dict[str, list[torch.Tensor]]:
    """Inputs of every graph along one real generation step, computed by the PyTorch graphs."""
    vision = "vision" in specs
    prompts = REAL_PROMPTS if vision else [(p, False) for p, _ in REAL_PROMPTS]
    lay = prompts_layout(sequence, lambda text: tok.encode(text, bos=False, eos=False), [p for p, _ in prompts],
                         [i for _, i in prompts])
    lay = {k: torch.from_numpy(v) for k, v in lay.items()}
    out = {"embed": [lay[t.name] for t in specs["embed"].inputs]}
    with torch.no_grad():
        embeds = specs["embed"].module(*out["embed"])
        if vision:
            out["vision"] = [real_photo(model.cfg.vision.image_size).to(embeds.dtype)]
            embeds[lay["image_slots"]] = specs["vision"].module(*out["vision"]).flatten(0, 1)
        out["prefill"] = [embeds, lay["positions"], lay["key_mask"], lay["prompt_mask"]]
        logits, *state = specs["prefill"].module(*out["prefill"])
    # the runtime's hand-over: K/V into buffers of T + 2 slots, the step writing slot T
    n_kv = sum(t.name.startswith("present.") for t in specs["prefill"].outputs)
    T = lay["key_mask"].shape[1]
    kv, key_mask = decode_buffers([x.numpy() for x in state[:n_kv]], lay["key_mask"].numpy(), T + 2)
    out["decode"] = [logits.argmax(-1), lay["positions"][:, -1] + 1, torch.tensor(T), torch.from_numpy(key_mask),
                     *map(torch.from_numpy, kv), *state[n_kv:]]
    return out


def verify(model, specs: list[GraphSpec], folder: Path, tok: Tokenizer, sequence: dict, dtype: str) -> dict:
    """{graph: {output: worst relative error}} over the random and real input sets."""
    tolerance, vocab = TOLERANCE[dtype], model_vocab(specs)
    by_name = {s.name: s for s in specs}
    real = real_inputs(model, by_name, tok, sequence)
    report = {}
    for spec in specs:
        session, errors = cpu_session(folder / spec.file), {}
        for i, dims in enumerate(RANDOM_DIMS):
            check(spec, session, example_inputs(spec, dims, vocab, torch.Generator().manual_seed(i)),
                  f"random, batch {dims['batch']}", tolerance, errors)
        check(spec, session, real[spec.name], "real", tolerance, errors)
        report[spec.name] = errors
    return report


def model_vocab(specs: list[GraphSpec]) -> int:
    return next(t.shape[1] for s in specs for t in s.outputs if t.name == "logits")
