"""The models a benchmark compares: base, EAS-K unmerged, static / dynamic merged, and the floor.

Random weights (SYNTHETIC): the speed of a matmul does not depend on its values. The merge and
the floor load the tensors they do not change by assignment, shared with the base. Below
OWN_STORAGE_BYTES each merged variant and the floor then take their own copy, as separately
deployed models have: a floor sharing every tensor with the base, which runs in the same rotation,
decoded 1-4 % faster than its own copy on this project's 2-core CPU, more than the gap it is
compared with. Above it weights stream from memory either way, and a 7B-width benchmark holds one
base plus the merged q/k/v and W1/W3 copies, not five models.

The A/A control (CONTROL) is a second copy of the floor with storage of its own at every size: two
identical models timed side by side, whose gap is this machine's resolution for the static-vs-floor
check (copies of one tiny or dim-1024 model differed by -1.9 to +3.4 % in their medians here).
"""
from __future__ import annotations

import copy

import torch

from eas.adapters.attach import add_adapters
from eas.adapters.blocks import EASConfig
from eas.adapters.calibrate import calibrate_routes, clear_routes
from eas.adapters.merge import delete_attention, merge
from eas.adapters.pia import PIA
from eas.bench.cost import Adapters
from eas.errors import UsageError
from eas.io.checkpoint import load_state_strict
from eas.model.config import LlamaConfig
from eas.model.llama import Llama

# Benchmark shapes; contexts up to 2k need max_seq_len >= 1024 (the RoPE table covers twice it).
SIZES = {
    "tiny": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=2000, multiple_of=64, max_seq_len=1024),
    "bench": dict(dim=512, n_layers=8, n_heads=8, vocab_size=4000, multiple_of=64, max_seq_len=1024),
    "bench-1024": dict(dim=1024, n_layers=8, n_heads=16, vocab_size=4000, multiple_of=64, max_seq_len=1024),
    "7b-width": dict(dim=4096, n_layers=4, n_heads=32, vocab_size=32000, hidden_dim=11008, max_seq_len=1024),
}
CONTROL = "control"  # not a model variant: timed, never costed (the floor's cost is its own)
OWN_STORAGE_BYTES = 1 << 30  # below it, compared variants do not share weight storage (see above)
ADAPTERS = Adapters(adapter_dim=8, skip_dim=32, groups=2)  # LaVIN-7B's widths


def bench_config(size: str, layers: int | None = None) -> LlamaConfig:
    if size not in SIZES:
        raise UsageError(f"--size {size!r}: expected one of {sorted(SIZES)} or a merged.pt path")
    fields = dict(SIZES[size])
    if layers is not None:
        if layers < 1:
            raise UsageError(f"--layers {layers}: expected at least 1")
        fields["n_layers"] = layers
    return LlamaConfig(**fields)


def skip_layers(n_layers: int, k: int) -> tuple[int, ...]:
    """K attentions spread over the depth, starting at layer 1 (layer 0 is rarely skippable)."""
    if not 0 <= k < n_layers:
        raise UsageError(f"--skip {k}: choose 0..{n_layers - 1} for a {n_layers}-layer model")
    if k == 0:
        return ()
    return tuple(range(1, n_layers, max(1, n_layers // k)))[:k]


def base_model(cfg: LlamaConfig, seed: int = 0) -> Llama:
    return Llama(cfg).init_weights(torch.Generator().manual_seed(seed)).eval()


@torch.no_grad()
def eas_model(base: Llama, skip: tuple[int, ...], ad: Adapters = ADAPTERS, seed: int = 1) -> Llama:
    """The EAS super-network on `base`'s own tensors (shared), adapters random (not the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        eas = add_adapters(Llama(base.cfg), EASConfig(ad.adapter_dim, ad.skip_dim, ad.groups, skip_layers=skip,
                                                      dropout=0.0))
    state = dict(base.state_dict())
    for name, p in eas.named_parameters():
        if name not in state:
            state[name] = torch.randn(p.shape, generator=gen) * 0.02
    load_state_strict(eas, state, "eas_model")
    for pia in eas.modules():
        if isinstance(pia, PIA):
            pia.fixed_route = None
    eas.init_buffers(base.tok_embeddings.weight.device)
    return eas.eval()


@torch.no_grad()
def variants(base: Llama, k: int, kinds=("base", "unmerged", "static", "dynamic", "floor"),
             ad: Adapters = ADAPTERS) -> dict[str, Llama]:
    """{kind: model} for EAS-K; static routes calibrated on random prompts (SYNTHETIC); kinds may
    name CONTROL, a copy of the floor (which it needs) on storage of its own."""
    cfg = base.cfg
    skip = skip_layers(cfg.n_layers, k)
    out: dict[str, Llama] = {"base": base}
    if k == 0:
        return {kind: base for kind in kinds if kind == "base"}
    eas = eas_model(base, skip, ad)
    if "dynamic" in kinds:
        out["dynamic"] = merge(eas, "dynamic")
    if "static" in kinds:
        gen = torch.Generator().manual_seed(2)
        calib = torch.randint(1, cfg.vocab_size, (2, 16), generator=gen)
        vis = torch.ones(2, 16, dtype=torch.bool)
        calibrate_routes(eas, [(eas.tok_embeddings(calib), torch.arange(16).expand(2, 16), vis, vis)])
        out["static"] = merge(eas, "static")
        clear_routes(eas)  # the unmerged model routes per example, as it trains
    out["unmerged"] = eas
    if "floor" in kinds:
        out["floor"] = delete_attention(base, skip)
    if weight_bytes(base) < OWN_STORAGE_BYTES:
        out.update({kind: copy.deepcopy(out[kind]) for kind in ("static", "dynamic", "floor") if kind in out})
    if CONTROL in kinds and "floor" in out:
        out[CONTROL] = copy.deepcopy(out["floor"])
    return {kind: out[kind] for kind in kinds if kind in out}


def weight_bytes(model) -> int:
    """Bytes of the distinct parameter storages of a model."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total
