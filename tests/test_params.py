"""The paper's trainable shares for LaVIN-7B, on a meta-device model (nothing allocated)."""
import pytest
import torch

from eas.config import LavinConfig
from eas.eas_model import EASConfig, add_adapters, set_skipped
from eas.lavin import Lavin
from eas.params import trainable_report

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
