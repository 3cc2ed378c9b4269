"""The probe ceiling of the study: a linear probe on the frozen tiny base's image features (eas/probe.py)."""
from __future__ import annotations

import torch

from eas.data.aid import AID_LABELS
from eas.data.tasks import load_pixels, load_task
from eas.io.checkpoint import load_model
from eas.probe import image_features, probe
from eas.tune.config import TINY, TuneConfig


def features(model, examples, batch: int = 128) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    parts, labels = [], []
    for i in range(0, len(examples), batch):
        kept, pixels = load_pixels(examples[i:i + batch], model.cfg.vision.image_size, [])
        parts.append(image_features(model, pixels))
        labels += [AID_LABELS.index(e.target) for e in kept]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, torch.tensor(labels)


def probe_seed(seed: int, data_root: str | None) -> dict:
    """{kind: probe result} for the seed's split: trained on train + val (what the fine-tune reads),
    scored on the whole test split. The base's own weights, no adapter."""
    cfg = TuneConfig(data_root=data_root, seed=seed)
    model = load_model(TINY).eval()
    task = load_task("aid", data_root, cache_dir=cfg.cache_dir, setting=cfg.setting, seed=seed,
                     image_size=model.cfg.vision.image_size, synthetic_per_class=cfg.synthetic_per_class)
    print(f"probe seed {seed}: features of {len(task.train) + len(task.val)} train / {len(task.test)} test images",
          flush=True)
    x_train, y_train = features(model, list(task.train) + list(task.val))
    x_test, y_test = features(model, task.test)
    return {kind: probe(x_train[kind], y_train, x_test[kind], y_test, len(AID_LABELS)) for kind in x_train}
