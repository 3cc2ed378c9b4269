"""The paper's trainable shares for LaVIN-7B, on a meta-device model (nothing allocated)."""
import pytest
import torch

from eas.model.config import LavinConfig
from eas.adapters.attach import EASConfig, add_adapters, set_skipped
from eas.model.lavin import Lavin
from eas.adapters.params import trainable_report

PIA_A, PIA_S, SHARED = 81_930, 409_666, 1_159_536  # eas_method.md §1.6


@pytest.fixture(scope="module")
def lavin_7b():
    with torch.device("meta"):
        model = Lavin(LavinConfig.named("lavin-7b"))
        add_adapters(model, EASConfig(adapter_dim=8, skip_dim=32))
    return model


@pytest.mark.parametrize("k,paper", [(0, "0.06"), (4, "0.08"), (8, "0.10"), (12, "0.11"), (16, "0.13")])
def test_paper_shares(lavin_7b, k, paper):
    set_skipped(lavin_7b.llama, range(k))
    rep = trainable_report(lavin_7b)
    assert rep["trainable"] == k * PIA_S + (32 - k) * PIA_A + SHARED
    assert rep["llm"] == 6_738_415_616  # LLaMA-7B
    assert f"{100 * rep['share_of_llm']:.2f}" == paper
    assert rep["frozen"] - rep["llm"] == 303_966_208  # CLIP ViT-L/14 visual tower, proj included


@pytest.mark.parametrize("unit,k,paper", [("ffn", 4, "0.08"), ("ffn", 12, "0.13"), ("layer", 4, "0.08")])
def test_ffn_and_layer_units_count_what_runs(lavin_7b, unit, k, paper):
    """A skipped FFN keeps its layer's PIA-A and adds PIA-S (Table 5's FFN rows: 0.08 % at 4 and
    0.13 % at 12; its 0.11 % at 8 we get as 0.10 %); a skipped layer swaps PIA-A for PIA-S."""
    lavin_7b.llama.eas.unit = unit
    try:
        set_skipped(lavin_7b.llama, range(k))
        rep = trainable_report(lavin_7b)
    finally:
        lavin_7b.llama.eas.unit = "attention"
    kept_attention = 32 if unit == "ffn" else 32 - k
    assert rep["trainable"] == k * PIA_S + kept_attention * PIA_A + SHARED
    assert f"{100 * rep['share_of_llm']:.2f}" == paper
