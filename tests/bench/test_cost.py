"""The analytic cost model against counts written out by hand, and against the real models."""
import pytest

from eas.bench import cost
from eas.bench.variants import ADAPTERS, base_model, bench_config, variants
from eas.model.config import LlamaConfig

# dim 8, 2 layers, 2 heads of 4 (1 K/V head), FFN 16, vocab 10.
CFG = LlamaConfig(dim=8, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=10, hidden_dim=16, max_seq_len=16)
AD = cost.Adapters(adapter_dim=2, skip_dim=4, groups=2)

# Per layer by hand: wq 8x8=64, wk 8x4=32, wv 32, wo 64 -> attention 192; FFN 3x8x16 = 384;
# two norm gains 16.  Embedding and output 10x8 = 80 each, final norm 8.
BASE_LAYER = 192 + 384 + 16                  # 592
BASE_PARAMS = 2 * BASE_LAYER + 80 + 80 + 8   # 1352
FLOOR_SKIPPED = 384 + 8                      # FFN + ffn_norm: 392
# static skipped layer: FFN + ffn_norm 8 = 392 read at decode, plus PooledShift: down_pool
# 8x4 + 4, proj 8x4, shift 8 = 76 -> 468.  Static kept layer: + the attention norm's shift 8.
STATIC_KEPT, STATIC_SKIPPED = 592 + 8, 392 + 76


def test_params_by_hand():
    assert cost.params(CFG, "base", 0, AD) == BASE_PARAMS
    assert cost.params(CFG, "floor", 1, AD) == BASE_LAYER + FLOOR_SKIPPED + 168
    assert cost.params(CFG, "static", 1, AD) == STATIC_KEPT + STATIC_SKIPPED + 168


def test_base_decode_step_by_hand():
    # context 3, batch 1: per layer 192 + 384 matmul MACs and 2 heads x 4 x 3 keys x 2 (scores,
    # values) = 48 attention MACs; output 80.  FLOPs = 2 x (2 x 576 + 2 x 48 + 80) = 2656.
    c = cost.decode_step(CFG, "base", 0, context=3, ad=AD)
    assert c.flops == 2656
    # read: 2 layers x 592 + final norm 8 + output 80 + one embedding row 8 = 1280 floats.
    assert c.weight_bytes == 1280 * 4
    # K/V: 2 layers x (k, v) x 4 values x 3 slots read, x 1 slot written.
    assert (c.kv_read_bytes, c.kv_write_bytes) == (2 * 2 * 4 * 3 * 4, 2 * 2 * 4 * 4)


def test_floor_and_static_decode_by_hand():
    floor = cost.decode_step(CFG, "floor", 1, context=3, ad=AD)
    assert floor.flops == 2 * (576 + 384 + 48 + 80)
    assert floor.weight_bytes == (592 + 392 + 96) * 4
    assert floor.kv_read_bytes == 2 * 4 * 3 * 4  # one layer keeps K/V
    static = cost.decode_step(CFG, "static", 1, context=3, ad=AD)
    assert static.flops == floor.flops  # shifts cost no matmul
    assert static.weight_bytes == (600 + 392 + 96) * 4  # PooledShift is not read at decode


def test_unmerged_and_dynamic_decode_macs_by_hand():
    # unmerged kept: PIA-A down 8x2 + two grouped ups of 8 outputs x 1 input each = 16 + 16;
    # skipped: PIA-S down 8x4 + ups 2 x 8 x 2 = 32 + 32.
    un = cost.decode_step(CFG, "unmerged", 1, context=3, ad=AD)
    assert un.flops == 2 * ((576 + 32) + (384 + 64) + 48 + 80)
    # dynamic kept: down 8x2 + up (2x2)x16 + route bias 2x16 = 16 + 64 + 32;
    # skipped: down 8x4 + up (2x4)x32 + route bias 2x32 = 32 + 256 + 64.
    dyn = cost.decode_step(CFG, "dynamic", 1, context=3, ad=AD)
    assert dyn.flops == 2 * ((576 + 112) + (384 + 352) + 48 + 80)


def test_prefill_by_hand():
    # 2 tokens: 2 x 1152 layer MACs, causal attention 2 layers x 2 heads x 4 x (1 + 2 keys) x 2,
    # logits at the last position only (80).
    assert cost.prefill(CFG, "base", 0, tokens=2, ad=AD).flops == 2 * (2304 + 96 + 80)


def test_batch_scales_flops_not_weights():
    one, four = (cost.decode_step(CFG, "static", 1, 5, b, AD) for b in (1, 4))
    assert four.flops == 4 * one.flops
    assert four.weight_bytes - one.weight_bytes == 3 * 8 * 4  # three more embedding rows
    assert four.kv_read_bytes == 4 * one.kv_read_bytes


def test_ideal_speedup_and_kv_cache():
    ideal = cost.ideal_speedup(CFG, "floor", 1, prompt=2, generated=3, ad=AD)
    base = cost.decode_step(CFG, "base", 0, 4, ad=AD).bytes  # mean decode context 2 + (3 + 1) / 2
    assert ideal["decode"] == pytest.approx(base / cost.decode_step(CFG, "floor", 1, 4, ad=AD).bytes)
    assert ideal["prefill"] > 1 and cost.ideal_speedup(CFG, "base", 0, 2, 3)["decode"] == 1
    assert cost.kv_cache_bytes(CFG, "static", 1, batch=2, slots=5) == 2 * 5 * 1 * 2 * 4 * 4


@pytest.mark.parametrize("k", [1, 2])
def test_params_match_the_real_models(k):
    cfg = bench_config("tiny", 4)
    for kind, model in variants(base_model(cfg), k).items():
        assert cost.params(cfg, kind, k, ADAPTERS) == sum(p.numel() for p in model.parameters()), kind


def test_unknown_variant_and_k_are_refused():
    with pytest.raises(ValueError, match="variant"):
        cost.decode_step(CFG, "pruned", 1, 3)
    with pytest.raises(ValueError, match="K=3"):
        cost.params(CFG, "static", 3)
