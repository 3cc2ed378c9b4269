"""PIA adapters against the straight-line reference written from the spec (helpers.naive_logits)."""
import pytest
import torch

from eas.model.config import LlamaConfig
from eas.adapters.attach import EASConfig, add_adapters, mark_trainable, set_dropout_generator
from eas.model.llama import Llama
from eas.adapters.pia import PIA
from helpers import naive_logits, random_gains, rel_err


def adapted(gen, skip, unit="attention"):
    model = random_gains(Llama(LlamaConfig.named("test")).init_weights(gen), gen)
    add_adapters(model, EASConfig(adapter_dim=4, skip_dim=8, skip_layers=skip, unit=unit))
    for m in model.modules():
        if isinstance(m, PIA):
            m.scale = 0.7
            for p in m.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.2
    return model.eval()


def prompt_first(B, T, n_prompt):
    return torch.arange(T).expand(B, T) < torch.tensor(n_prompt)[:, None]


@pytest.mark.parametrize("unit,skip", [("attention", ()), ("attention", (1,)), ("attention", (0, 2)),
                                       ("ffn", (1, 2)), ("layer", (0, 3))])
def test_adapters_match_the_spec_reference(unit, skip, gen):
    model = adapted(gen, skip, unit)
    tokens = torch.randint(1, model.cfg.vocab_size, (3, 10), generator=gen)
    prompt = prompt_first(3, 10, [4, 10, 7])
    T = tokens.shape[1]
    with torch.no_grad():
        h = model.hidden(model.tok_embeddings(tokens), torch.arange(T).expand(3, T),
                         torch.ones(3, T, dtype=torch.bool), prompt_mask=prompt)
        out = model.output(h)
        ref = naive_logits(model, tokens, prompt)
    assert rel_err(out, ref) < 1e-5


def test_training_pass_never_pools_the_answer(gen):
    """Prompt logits depend on the prompt only: the answer (and what follows) cannot leak into
    the pooled PIA-S term or the routers through training-time pooling."""
    model = adapted(gen, (1, 2))
    T, n_prompt = 12, 6
    tokens = torch.randint(1, model.cfg.vocab_size, (1, T), generator=gen)
    other_answer = tokens.clone()
    other_answer[:, n_prompt:] = torch.randint(1, model.cfg.vocab_size, (1, T - n_prompt), generator=gen)
    other_prompt = tokens.clone()
    other_prompt[:, 0] = (tokens[:, 0] % (model.cfg.vocab_size - 1)) + 1
    prompt, pos, keys = prompt_first(1, T, [n_prompt]), torch.arange(T)[None], torch.ones(1, T, dtype=torch.bool)

    def logits(t):
        with torch.no_grad():
            return model.output(model.hidden(model.tok_embeddings(t), pos, keys, prompt_mask=prompt))

    ref = logits(tokens)[:, :n_prompt]
    assert torch.allclose(logits(other_answer)[:, :n_prompt], ref, atol=1e-6, rtol=0)
    # the same comparison can fail: a changed prompt token moves every prompt position's logits
    assert rel_err(logits(other_prompt)[:, 1:n_prompt], ref[:, 1:]) > 1e-3


def test_checkpointed_backward_replays_the_dropout_generator(gen):
    """Activation checkpointing recomputes each block in backward; the recomputation must draw the
    same dropout masks from the adapters' explicit generator as the forward did."""
    model = adapted(gen, (1,))
    mark_trainable(model).train()
    tokens = torch.randint(1, model.cfg.vocab_size, (2, 9), generator=gen)
    drop = torch.Generator()
    set_dropout_generator(model, drop)
    grads = []
    for checkpointing in (False, True):
        model.grad_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        drop.manual_seed(7)
        model(tokens).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        after = drop.get_state()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    drop.manual_seed(7)
    model.grad_checkpointing = False
    model(tokens)
    assert torch.equal(drop.get_state(), after)  # the generator ends where one forward leaves it
