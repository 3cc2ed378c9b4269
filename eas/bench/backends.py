"""Runtimes a benchmark times, each behind one small interface (a `Session` per model).

    session.prefill(tokens [B, T] int64 numpy, slots) -> first generated token [B]   (greedy;
                                               the K/V hold `slots` = T + tokens to generate)
    session.decode(token [B], steps)           -> the last token               (greedy, `steps` steps)
    session.kv_bytes()                         -> bytes of the K/V tensors of the state it holds

eager    PyTorch, Llama.prefill / decode_step on the preallocated state (eas/model/state.py)
compile  the same, decode step through torch.compile (CPU: inductor; CUDA: CUDA graphs)
ort      ONNX Runtime on the exported embed/prefill/decode graphs (export/onnx_export.py)
ort-cpp  the same graphs run by the C++ app's loop in a child process (eas/bench/cpp.py; batch 1)
llama.cpp lives in eas/bench/llamacpp.py (base model only).
"""
from __future__ import annotations

import copy
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from eas.bench.ort_weights import SharedWeights
from eas.model.state import kv_bytes

BACKENDS = ("eager", "compile", "ort", "ort-cpp", "llama.cpp-f32", "llama.cpp-f16")
BATCH_1 = ("ort-cpp", "llama.cpp-f32", "llama.cpp-f16")  # backends that run one prompt at a time


class Eager:
    def __init__(self, model):
        self.model = model
        self.step = model.decode_step
        self.device = model.tok_embeddings.weight.device
        self.state = None

    @torch.inference_mode()
    def prefill(self, tokens: np.ndarray, slots: int) -> np.ndarray:
        t = torch.from_numpy(tokens).to(self.device)
        B, T = t.shape
        self.position = torch.full((B,), T - 1, device=self.device)
        self.state = self.model.new_state(B, slots)
        logits, self.state = self.model.prefill(self.model.tok_embeddings(t), torch.arange(T, device=self.device)
                                                .expand(B, T), torch.ones(B, T, dtype=torch.bool, device=self.device),
                                                self.state)
        return logits.argmax(-1).cpu().numpy()

    @torch.inference_mode()
    def decode(self, token: np.ndarray, steps: int) -> np.ndarray:
        tok = torch.from_numpy(token).to(self.device)
        for _ in range(steps):
            self.position = self.position + 1
            logits, self.state = self.step(tok, self.position, self.state)
            tok = logits.argmax(-1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return tok.cpu().numpy()

    def kv_bytes(self) -> int:
        return kv_bytes(self.state)


class Compiled(Eager):
    """The decode step compiled once per state size; CUDA graphs on a GPU ("reduce-overhead").

    Dynamo keeps compiled graphs on the code object and, at a call, tries the guards of its
    entries in turn. Every model's decode_step is the same code, so sessions of one process
    would share one cache, and a session would first fail the guards of the entries ahead of its
    own. Each session compiles a copy of the code instead, a cache of one entry, as a deployed
    model has. Dynamo moves the entry it hits to the front, so the walk is paid when sessions
    switch: five tiny sessions switching every step cost +540 us per step on the shared code,
    +370 us with a copy each (the rest of the switching cost: eas/bench/runner.py, CHUNK_S_COMPILED).

    A call pays Python per graph input twice over: inductor asserts sizes and strides (~1 us
    each; 73 per tiny K=4 floor step, one per input, weights included, and one per attention
    output) and dynamo checks its guards (35 us there). OPTIONS drops what the session already
    fixes: the guards on the arguments (tokens, positions, every state tensor) check their sizes
    and strides before the graph runs, so a new state size still compiles its own graph; the
    weights and the module's attributes never change under a session, so their guards go; the
    graph is checked against eager (tests/bench/test_bench_cli.py), so the asserts go. Tiny K=4,
    sessions interleaved on this project's 2-core CPU: each cut ~5 % of a step, and static
    merged's 8 inputs more than the floor's (its shifts) went from +2.0 % to +0.6 % against it."""

    OPTIONS = {"size_asserts": False, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}

    def __init__(self, model):
        super().__init__(model)
        cuda_graphs = {"triton.cudagraphs": True} if self.device.type == "cuda" else {}  # mode "reduce-overhead"
        self.step = torch.compile(own_code(model.decode_step), dynamic=False, options={**self.OPTIONS, **cuda_graphs})


def own_code(method):
    """`method` as a function on a copy of its code object, bound to the same instance."""
    f = method.__func__
    copy_ = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return types.MethodType(copy_, method.__self__)


def ort_options(threads: int, level: str = "all", profile: bool = False):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.enable_profiling = profile
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "eas-bench-ort-profile")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Each session has its own worker pool and a benchmark holds several: workers spin while a run
    # is in flight (quick hand-offs between a decode step's many small operators) and stop when it
    # returns, so an idle pool never takes the cores from the next session. Tiny model, sessions
    # interleaved: spinning that outlived the run 3.3-4.5 ms, no spinning 2.0-2.8 ms (an earlier
    # graph); no spinning 2.14 ms, spinning within runs 1.88 ms (this graph, minutes apart).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    return opts


class Ort:
    """The model's exported graphs in ONNX Runtime (CPU provider); exported to a temporary folder,
    their large weights held once in `shared` (eas/bench/ort_weights.py) for all graphs and variants.
    Decode runs on one IOBinding made at prefill: every input and output is bound to a numpy buffer
    the loop updates in place, and each present K/V to its past buffer, so a step writes one slot
    of the cache instead of copying it (export/graphs.py)."""

    def __init__(self, model, threads: int, level: str = "all", profile: bool = False,
                 shared: SharedWeights | None = None):
        from export.external_data import FILE, ExternalData
        from export.onnx_export import export_graph, graph_specs
        specs, self.layout = graph_specs(model)
        shared = shared if shared is not None else SharedWeights()
        self.sessions, self.held = {}, set()  # held: the pooled tensors its graphs read
        with tempfile.TemporaryDirectory(prefix="eas-bench-ort-") as tmp:
            data = ExternalData(Path(tmp) / FILE)  # large graphs: their weights written once
            for spec in specs:
                path = Path(tmp) / spec.file
                export_graph(spec, path, model.cfg.vocab_size, data)
                self.sessions[spec.name], used = shared.session(path, ort_options(threads, level, profile),
                                                                ["CPUExecutionProvider"])
                self.held.update(used)
        self.weights = sum(t.array.nbytes for t in self.held)  # distinct weights read, as for eager
        self.past: list[np.ndarray] = []

    def prefill(self, tokens: np.ndarray, slots: int) -> np.ndarray:
        from onnxruntime import OrtValue

        from export.layout import decode_buffers
        B, T = tokens.shape
        embeds = self.sessions["embed"].run(None, {"tokens": tokens})[0]
        mask = np.ones((B, T), dtype=bool)
        logits, *state = self.sessions["prefill"].run(None, {
            "embeds": embeds, "positions": np.broadcast_to(np.arange(T), (B, T)).copy(), "key_mask": mask,
            "prompt_mask": mask})
        n = len(self.layout.past())
        self.past, self.key_mask = decode_buffers(state[:n], mask, slots)
        self.token, self.position, self.length = np.zeros(B, np.int64), np.full(B, T - 1), np.array(T - 1)
        self.logits = np.empty_like(logits)
        inputs = {"token": self.token, "position": self.position, "length": self.length, "key_mask": self.key_mask,
                  **dict(zip(self.layout.past(), self.past)), **dict(zip(self.layout.adapter_names, state[n:]))}
        # OrtValues over the numpy buffers (shared, not copied), kept alive with the binding
        self.values = {name: OrtValue.ortvalue_from_numpy(a) for name, a in {**inputs, "logits": self.logits}.items()}
        bind = self.binding = self.sessions["decode"].io_binding()
        for name in inputs:
            bind.bind_ortvalue_input(name, self.values[name])
        bind.bind_ortvalue_output("logits", self.values["logits"])
        for present, past in zip(self.layout.present(), self.layout.past()):
            bind.bind_ortvalue_output(present, self.values[past])
        return logits.argmax(-1)

    def decode(self, token: np.ndarray, steps: int) -> np.ndarray:
        """Greedy steps on the bound buffers (no allocation, conversion or copy of the state)."""
        run = self.sessions["decode"].run_with_iobinding
        for _ in range(steps):
            self.token[:] = token
            self.position += 1
            self.length += 1
            self.key_mask[:, self.length] = True
            run(self.binding)
            token = self.logits.argmax(-1)
        return token

    def kv_bytes(self) -> int:
        return sum(p.nbytes for p in self.past)


def session(backend: str, model, slots: int, threads: int, shared: SharedWeights | None = None):
    """A timed session of `model` on `backend` (llama.cpp: eas.bench.llamacpp, its context `slots`
    long); ONNX Runtime sessions given one `shared` hold each distinct weight once."""
    if backend == "eager":
        return Eager(model)
    if backend == "compile":
        return Compiled(model)
    if backend.startswith("ort"):  # ONNX Runtime runs on the CPU: export a CPU copy of a GPU model
        cpu = model if model.tok_embeddings.weight.is_cpu else copy.deepcopy(model).cpu()
        if backend == "ort":
            return Ort(cpu, threads, shared=shared)
        from eas.bench.cpp import CppOrt
        return CppOrt(cpu, slots, threads)
    from eas.bench.llamacpp import LlamaCpp
    return LlamaCpp(model, slots, threads, backend.rsplit("-", 1)[1])
