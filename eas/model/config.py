"""Model configurations: one dataclass per model, saved next to every checkpoint."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from eas.errors import CheckpointError
from eas.io.files import read_json, write_text_atomic


@dataclass
class LlamaConfig:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None  # SwiGLU width; derived Meta-style when None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Llama-3 frequency scaling, {"rope_type": "llama3", **LLAMA3_ROPE_KEYS}; None: plain RoPE.
    rope_scaling: dict | None = None
    max_seq_len: int = 2048
    # Layers whose attention / FFN is physically absent (a merged EAS model, or a deleted unit).
    no_attention: tuple[int, ...] = ()
    no_ffn: tuple[int, ...] = ()
    # q/k/v biases, for bases that have them (a merge adds none: eas/adapters/merged.py).
    qkv_bias: bool = False

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            hidden = int(2 * 4 * self.dim / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.hidden_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)
        self.no_attention = tuple(sorted(set(int(i) for i in self.no_attention)))
        self.no_ffn = tuple(sorted(set(int(i) for i in self.no_ffn)))
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        for name in ("no_attention", "no_ffn"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.n_layers]
            if bad:
                raise ValueError(f"{name} {bad} outside 0..{self.n_layers - 1}")
        if self.rope_scaling is not None:
            check_llama3_rope(self.rope_scaling)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The layers that have an attention, hence K/V state."""
        return tuple(i for i in range(self.n_layers) if i not in self.no_attention)

    @classmethod
    def named(cls, name: str, **overrides) -> "LlamaConfig":
        if name not in LLAMA_SIZES:
            raise KeyError(f"unknown LLaMA size {name!r}; known: {sorted(LLAMA_SIZES)}")
        return cls(**{**LLAMA_SIZES[name], **overrides})


LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_llama3_rope(scaling: dict) -> None:
    """The one RoPE scaling implemented (eas.model.llama.llama3_frequencies); anything else is refused."""
    if scaling.get("rope_type") != "llama3" or set(scaling) != {"rope_type", *LLAMA3_ROPE_KEYS}:
        raise ValueError(f"rope_scaling {scaling!r}: only Llama-3's is supported, with exactly the keys "
                         f"rope_type='llama3', {', '.join(LLAMA3_ROPE_KEYS)}")
    if not all(isinstance(scaling[k], (int, float)) for k in LLAMA3_ROPE_KEYS):
        raise ValueError(f"rope_scaling {scaling!r}: {', '.join(LLAMA3_ROPE_KEYS)} must be numbers")
    if not 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"] or scaling["factor"] <= 0:
        raise ValueError(f"rope_scaling {scaling!r}: need factor > 0 and 0 < low_freq_factor < high_freq_factor")


LLAMA_SIZES: dict[str, dict] = {
    "llama-7b": dict(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-6),
    "llama-13b": dict(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-6),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-5, max_seq_len=4096),
    "tiny": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=2000, multiple_of=64,
                 max_seq_len=512),
    "test": dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=16,
                 max_seq_len=128, norm_eps=1e-5),
}


@dataclass
class VisionConfig:
    """OpenAI CLIP visual tower."""
    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    output_dim: int = 768  # CLIP joint-embedding projection (unused by LaVIN, kept for loading); 0: none
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} not divisible by patch_size={self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} not divisible by heads={self.heads}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def named(cls, name: str, **overrides) -> "VisionConfig":
        if name not in VISION_SIZES:
            raise KeyError(f"unknown ViT size {name!r}; known: {sorted(VISION_SIZES)}")
        return cls(**{**VISION_SIZES[name], **overrides})


VISION_SIZES: dict[str, dict] = {
    "vit-l/14": dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
    "vit-l/14-336": dict(image_size=336, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
    "vit-b/16": dict(image_size=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512),
    "tiny": dict(image_size=64, patch_size=8, width=192, layers=6, heads=3, output_dim=192),
    "test": dict(image_size=32, patch_size=8, width=48, layers=6, heads=2, output_dim=32),
}


@dataclass
class LavinConfig:
    """LLaMA + CLIP ViT wired LaVIN-style (eas_method.md §5.2-5.3)."""
    llama: LlamaConfig = field(default_factory=LlamaConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    n_visual_tokens: int = 6      # CLS taps, evenly spaced over the ViT blocks
    projector_hidden: int = 128   # AdapterMLP width -> 128 -> LLaMA width

    def __post_init__(self):
        if isinstance(self.llama, dict):
            self.llama = LlamaConfig(**self.llama)
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if self.vision.layers % self.n_visual_tokens:
            raise ValueError(f"ViT depth {self.vision.layers} is not a multiple of "
                             f"n_visual_tokens={self.n_visual_tokens}")

    @property
    def tap_blocks(self) -> tuple[int, ...]:
        """0-based indices of the ViT blocks whose CLS output is tapped (LaVIN: 4, 8, ..., 24)."""
        step = self.vision.layers // self.n_visual_tokens
        return tuple(range(step - 1, self.vision.layers, step))

    @classmethod
    def named(cls, name: str) -> "LavinConfig":
        llama, vision = {"lavin-7b": ("llama-7b", "vit-l/14"), "lavin-13b": ("llama-13b", "vit-l/14"),
                         "tiny": ("tiny", "tiny"), "test": ("test", "test")}[name]
        return cls(llama=LlamaConfig.named(llama), vision=VisionConfig.named(vision))


# CLIP's preprocessing statistics (CLIPImageProcessor), which LLaVA keeps.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class LlavaConfig:
    """LLaMA/Vicuna + CLIP ViT wired as LLaVA-1.5 (eas_method.md §4.2): the patch tokens of one
    ViT layer -> mlp2x_gelu projector -> image tokens at the <image> position of the prompt."""
    llama: LlamaConfig = field(default_factory=LlamaConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    # Hugging Face hidden_states index the features come from (mm_vision_select_layer): 0 is the
    # embedding output, i the output of block i, negatives count from the end (-2: penultimate).
    feature_layer: int = -2
    image_mean: tuple[float, float, float] = CLIP_MEAN  # also the padding colour of expand2square
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        if isinstance(self.llama, dict):
            self.llama = LlamaConfig(**self.llama)
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        n = self.vision.layers
        if not -(n + 1) <= self.feature_layer <= n:
            raise ValueError(f"feature_layer {self.feature_layer} outside -{n + 1}..{n} for a {n}-block ViT")

    @property
    def feature_blocks(self) -> int:
        """How many ViT blocks run before the features are read."""
        return self.feature_layer % (self.vision.layers + 1)

    @property
    def n_image_tokens(self) -> int:
        return self.vision.grid ** 2

    @classmethod
    def named(cls, name: str) -> "LlavaConfig":
        llama, vision = {"llava-7b": ("llama-7b", "vit-l/14-336"), "tiny": ("tiny", "tiny"),
                         "test": ("test", "test")}[name]
        return cls(llama=LlamaConfig.named(llama), vision=VisionConfig.named(vision))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    write_text_atomic(path, json.dumps({"type": type(cfg).__name__, **to_dict(cfg)}, indent=2) + "\n")


def load_config(path: str | Path):
    path = Path(path)
    data = read_json(path, "model config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a model config must be a JSON object")
    kinds = {"LlamaConfig": LlamaConfig, "VisionConfig": VisionConfig, "LavinConfig": LavinConfig,
             "LlavaConfig": LlavaConfig}
    kind = data.pop("type", None)
    if kind not in kinds:
        raise CheckpointError(f"{path}: 'type' must be one of {sorted(kinds)}, got {kind!r}")
    try:
        return kinds[kind](**data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad {kind} fields: {e}") from e


def dtype_name(dtype) -> str:
    """A torch dtype as users write it: float16, bfloat16, float32."""
    return str(dtype).removeprefix("torch.")
