"""Hugging Face config reading for newer LLaMAs: where rope_theta lives, Llama-3 RoPE scaling, refusals."""
import json
import math

import pytest
import torch

from eas.errors import CheckpointError, TokenizerError
from eas.io.load_llama import find_tokenizer, hf_config
from eas.model.config import LlamaConfig
from eas.model.llama import Llama
from eas.model.tokenizer import Tokenizer

BASE = dict(model_type="llama", hidden_size=64, intermediate_size=176, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=2, vocab_size=96, max_position_embeddings=128)
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=512)


def test_rope_theta_read_from_rope_parameters(tmp_path):
    cfg = hf_config({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, tmp_path)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling is None
    assert hf_config({**BASE, "rope_theta": 1234.0}, tmp_path).rope_theta == 1234.0
    assert hf_config(BASE, tmp_path).rope_theta == 10000.0


def test_llama3_frequencies_equal_hand_computed_table(tmp_path):
    """head_dim 8, θ = 500000: base frequencies θ^(-i/4), wavelengths 2π/f = 6.28, 167.1, 4443, 118100.
    Against original context 512 (low/high wavelength bounds 512 and 128): the first is kept, the
    second interpolated with smooth = (512/λ - 1)/(4 - 1), the last two divided by 8."""
    cfg = hf_config({**BASE, "hidden_size": 32, "rope_parameters": {"rope_theta": 500000.0, **LLAMA3}}, tmp_path)
    assert cfg.rope_scaling == LLAMA3
    f = [500000.0 ** (-i / 4) for i in range(4)]
    smooth = (512 / (2 * math.pi / f[1]) - 1) / 3
    expected = [f[0], (1 - smooth) * f[1] / 8 + smooth * f[1], f[2] / 8, f[3] / 8]
    assert 0 < smooth < 1
    model = Llama(cfg)
    # the tables hold each angle twice, sin signed (-, +) per channel pair: the odd channels read it plainly
    angle_at_1 = torch.atan2(model.rope_sin[1, 1::2], model.rope_cos[1, 1::2]).double()
    assert torch.allclose(angle_at_1, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    plain = Llama(LlamaConfig(**{**cfg.__dict__, "rope_scaling": None}))
    assert not torch.allclose(plain.rope_sin[1], model.rope_sin[1])


@pytest.mark.parametrize("config,needle", [
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "yarn"),
    ({"rope_parameters": {**LLAMA3, "factor": None}} | {"rope_theta": 10.0}, "factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
    ({"rope_theta": 10.0, "rope_parameters": {"rope_theta": 20.0}}, "rope_theta differs"),
])
def test_unknown_rope_refused(config, needle, tmp_path):
    with pytest.raises(CheckpointError, match=needle) as err:
        hf_config({**BASE, **config}, tmp_path / "config.json")
    assert "config.json" in str(err.value)


def test_tokenizer_json_only_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(TokenizerError, match="only tokenizer.json, not a SentencePiece tokenizer.model"):
        find_tokenizer(tmp_path, "hf")
    (tmp_path / "tokenizer.model").write_text("#tiktoken-style base64 ranks\nIQ== 0\n")
    assert find_tokenizer(tmp_path, "hf") == tmp_path / "tokenizer.model"
    with pytest.raises(TokenizerError, match="not a readable SentencePiece model"):
        Tokenizer(tmp_path / "tokenizer.model")
