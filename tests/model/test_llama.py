"""The stateful prefill/decode path against one full pass and a naive, state-free reference."""
import pytest
import torch

from eas.model.config import LlamaConfig
from eas.model.llama import Llama
from eas.model.state import kv_bytes
from helpers import naive_logits, rel_err


@pytest.mark.parametrize("kv_heads,skip,skip_ffn", [(4, (), ()), (2, (), ()), (2, (1, 2), ()), (1, (0,), ()),
                                                   (2, (1,), (1, 3))])
def test_cached_decode_matches_full_pass_and_naive(kv_heads, skip, skip_ffn, gen):
    cfg = LlamaConfig.named("test", n_kv_heads=kv_heads, no_attention=skip, no_ffn=skip_ffn)
    model = Llama(cfg).init_weights(gen).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=gen)
    with torch.no_grad():
        full = model(tokens)
        naive = naive_logits(model, tokens)
        state = model.new_state(2, 12)
        pos = torch.arange(12).expand(2, 12)
        logits, state = model.prefill(model.tok_embeddings(tokens[:, :5]), pos[:, :5],
                                      torch.ones(2, 5, dtype=torch.bool), state)
        steps = [logits]
        for t in range(5, 12):
            logits, state = model.decode_step(tokens[:, t], pos[:, t], state)
            steps.append(logits)
    cached = torch.stack(steps, 1)
    assert rel_err(full, naive) < 1e-5
    assert rel_err(cached, full[:, 4:]) < 1e-5


def test_left_padding_does_not_change_logits(gen):
    cfg = LlamaConfig.named("test")
    model = Llama(cfg).init_weights(gen).eval()
    seq = torch.randint(1, cfg.vocab_size, (1, 7), generator=gen)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], 1)
    visible = torch.tensor([[False] * 3 + [True] * 7])
    positions = (visible.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(seq)[:, -1]
        out = model(padded, positions, visible)[:, -1]
    assert rel_err(out, ref) < 1e-5


def test_state_holds_kv_only_for_layers_with_attention():
    full = kv_bytes(Llama(LlamaConfig.named("test")).new_state(3, 40))
    for k in (1, 2, 3):
        cfg = LlamaConfig.named("test", no_attention=tuple(range(k)))
        state = Llama(cfg).new_state(3, 40)
        assert kv_bytes(state) * cfg.n_layers == full * (cfg.n_layers - k)
        assert sorted(n for n in state if n.startswith("k.")) == [f"k.{i}" for i in range(k, cfg.n_layers)]
        assert all(isinstance(t, torch.Tensor) for t in state.values())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="no_attention"):
        LlamaConfig.named("test", no_attention=(9,))
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaConfig.named("test", n_kv_heads=3)
    assert LlamaConfig.named("llama-7b").hidden_dim == 11008
