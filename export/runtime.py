"""The generation loop over an export folder, shared by the ONNX Runtime and TensorRT backends.

It reads nothing but the folder, in the order a C++ runtime would: the manifest's layout
(export/layout.py), the tokenizer file, image preprocessing from the manifest's numbers, then
embed -> vision (image tokens copied into their slots) -> prefill -> decode steps on K/V buffers
of prompt + answer slots (the manifest's state rule), the adapter tensors passed through
unchanged. A backend only runs one graph on numpy arrays (`run`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from eas.data.prompt import PromptFormat
from eas.errors import CheckpointError, UsageError
from eas.io.files import read_json
from eas.model.image import expand2square, pixel_array
from eas.model.tokenizer import Tokenizer
from export.layout import decode_buffers, prompts_layout
from export.manifest import FORMAT, VERSION

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def load_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise CheckpointError(f"engine folder {folder} does not exist")
    manifest = read_json(path, "export manifest")
    if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise CheckpointError(f"{path} is not a {FORMAT} version {VERSION} manifest (export merged.pt again with "
                              f"python export/to_trt.py)")
    return manifest


def preprocess(image: Image.Image, spec: dict) -> np.ndarray:
    """PIL image -> [3, S, S] as the manifest's "image" section says (eas/model/image.py's code)."""
    if spec.get("pad_to_square") is not None:  # LLaVA (absent from exports made before LLaVA's)
        image = expand2square(image.convert("RGB"), tuple(spec["pad_to_square"]))
    return pixel_array(image, spec["size"], spec["mean"], spec["std"], spec["divisor"])


class Runtime(ABC):
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.tokenizer = Tokenizer(self.folder / self.manifest["tokenizer"]["file"])
        try:
            self.prompt_format = PromptFormat.from_json(self.manifest["prompt"]["format"], str(self.folder / "manifest.json"))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{self.folder / 'manifest.json'}: bad prompt section: {e}") from e
        self.float = NUMPY_DTYPES[self.manifest["graphs"]["embed"]["outputs"][0]["dtype"]]

    def generate(self, prompts: Sequence[str], images: Sequence[Image.Image | None], max_new_tokens: int) -> list[list[int]]:
        """Greedy new tokens per prompt (without the EOS that ended it); images[i] None = text only."""
        encode = lambda text: self.tokenizer.encode(text, bos=False, eos=False)  # noqa: E731
        layout = prompts_layout(self.manifest["sequence"], encode, prompts, [im is not None for im in images])
        pixels = [preprocess(im, self.manifest["image"]) for im in images if im is not None]
        return self.generate_layout(layout, np.stack(pixels) if pixels else None, max_new_tokens)

    def ask(self, question: str | None, images: Sequence[Image.Image | None], raw: bool = False,
            max_new_tokens: int | None = None) -> list[str]:
        """The answer to one question about each image (None: text only), the question wrapped in the
        tuned prompt template (eas.data.prompt.PromptFormat.prompt); budget: the task's by default."""
        prompt = self.prompt_format.prompt(question, raw)
        budget = self.prompt_format.max_new_tokens if max_new_tokens is None else max_new_tokens
        return [self.tokenizer.decode(t) for t in self.generate([prompt] * len(images), images, budget)]

    def check_limits(self, batch: int, slots: int) -> None:
        profiles = self.manifest["profiles"]
        if batch > profiles["batch"][2]:
            raise UsageError(f"batch of {batch} exceeds the export's --max-batch {profiles['batch'][2]}")
        if slots > profiles["seq"][2]:
            raise UsageError(f"prompt and answer need {slots} slots, more than the export's --max-seq "
                             f"{profiles['seq'][2]}")

    @abstractmethod
    def run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs, in manifest order."""

    def run_into(self, graph: str, feed: dict[str, np.ndarray], into: dict[str, str]) -> dict[str, np.ndarray]:
        """run, with the outputs named in `into` (output -> input of the same shape and dtype)
        written into that input's array instead of returned: the decode graph's present K/V into
        its past buffers. This default copies; ONNX Runtime writes them there directly."""
        out = dict(zip([t["name"] for t in self.manifest["graphs"][graph]["outputs"]], self.run(graph, feed)))
        for output, name in into.items():
            np.copyto(feed[name], out.pop(output), casting="no")
        return out

    def generate_layout(self, layout: dict[str, np.ndarray], pixels: np.ndarray | None, max_new_tokens: int
                        ) -> list[list[int]]:
        """The greedy loop of eas.model.generate.generate over the graphs."""
        B, T = layout["tokens"].shape
        self.check_limits(B, T + max_new_tokens)
        out: list[list[int]] = [[] for _ in range(B)]
        if max_new_tokens == 0:
            return out
        embed_inputs = [t["name"] for t in self.manifest["graphs"]["embed"]["inputs"]]
        embeds = self.run("embed", {n: layout[n] for n in embed_inputs})[0]
        if pixels is not None:
            images = self.run("vision", {"pixels": pixels.astype(self.float)})[0]
            embeds[layout["image_slots"]] = images.reshape(-1, images.shape[-1])
        logits, *state = self.run("prefill", {"embeds": embeds, **{n: layout[n] for n in
                                                                   ("positions", "key_mask", "prompt_mask")}})
        kv = self.manifest["state"]["kv"]
        n = len(kv["past"])  # the last new token is never fed back: T + max_new_tokens - 1 slots
        buffers, key_mask = decode_buffers(state[:n], layout["key_mask"], T + max_new_tokens - 1)
        past, adapters = dict(zip(kv["past"], buffers)), dict(zip(self.manifest["state"]["adapters"], state[n:]))
        first = layout["positions"][:, -1] + 1
        done = [False] * B
        for step in range(max_new_tokens):
            token = logits.argmax(-1)
            for b, t in enumerate(token.tolist()):
                if not done[b]:
                    done[b] = t == self.manifest["tokenizer"]["eos_id"]
                    if not done[b]:
                        out[b].append(t)
            if all(done) or step == max_new_tokens - 1:
                break
            key_mask[:, T + step] = True
            feed = {"token": token.astype(np.int64), "position": first + step, "length": np.array(T + step),
                    "key_mask": key_mask, **past, **adapters}
            logits = self.run_into("decode", feed, dict(zip(kv["present"], kv["past"])))["logits"]
        return out
