"""EAS command line: `python run.py <command> --help`.

    tune       adapt a LaVIN-style model to a task with EAS: search, fine-tune, evaluate, merge
    generate   answer a question (optionally about images) with a tuned merged.pt, an export folder
               (--engine: ONNX Runtime or TensorRT) or any LaVIN-style/LLaMA model
    bench      prefill/decode speed of base, EAS-K unmerged/merged and the floor per backend, beside
               the ideal speed-up of the cost model (docs/BENCHMARKS.md)

Bad input ends in one line `error: ...` and exit status 2; an interrupted tune in exit status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

from eas.bench.cli import add_parser as add_bench_parser
from eas.bench.cli import bench
from eas.errors import CheckpointError, EASError, TokenizerError, UsageError
from eas.io.checkpoint import load_model
from eas.io.load_llama import detect_format, load_llama
from eas.io.merged import load_merged
from eas.model.config import LavinConfig
from eas.model.generate import generate as generate_tokens
from eas.model.tokenizer import left_pad
from eas.model.image import open_image, pixel_loader
from eas.model.lavin import Lavin, build_batch
from eas.model.llava import Llava, build_llava_batch, llava_question
from eas.model.tokenizer import Tokenizer
from eas.tune.config import DEFERRED, TINY, TuneConfig
from eas.tune.interrupts import Interrupted
from eas.tune.pipeline import tune as run_tune
from eas.tune.report import summary_lines


def load_for_generation(model: str | None, random_init: bool, tokenizer: str | None):
    """-> (model, tokenizer, description). Own-format folders, merged.pt, Meta/HF LLaMA folders."""
    tok_path = Path(tokenizer) if tokenizer else None
    if random_init:
        tok_path = tok_path or TINY / "tokenizer.model"
        net = Lavin(LavinConfig.named("tiny")).init_weights(torch.Generator().manual_seed(0))
        return net, Tokenizer(tok_path), "tiny LaVIN-style model with RANDOM weights (untrained: output is noise)"
    path = Path(model) if model else TINY
    if not path.exists():
        raise CheckpointError(f"model {path} not found (pass --model DIR|merged.pt, or --random)")
    if path.is_file():
        # fp32 on the CPU, as the tuning run scored it: a merged.pt stored in fp16 would otherwise run in fp16.
        net = load_merged(path, dtype=torch.float32)
        tok_path = tok_path or (Path(net.tokenizer_ref) if net.tokenizer_ref else None)
    elif (path / "params.json").exists() or (path / "config.json").exists():
        if detect_format(path) == "eas":
            net = load_model(path)
            tok_path = tok_path or path / "tokenizer.model"
        else:
            net, found = load_llama(path)
            tok_path = tok_path or found
    else:
        raise CheckpointError(f"{path} holds no params.json or config.json: not a model folder")
    if tok_path is None or not Path(tok_path).exists():
        raise TokenizerError(f"no tokenizer for {path}; pass --tokenizer FILE")
    return net, Tokenizer(tok_path), str(path)


def check_sampling(max_new_tokens: int | None, temperature: float, top_p: float) -> None:
    if max_new_tokens is not None and max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: expected a number of tokens >= 0")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UsageError(f"--temperature {temperature}: expected a finite number >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p {top_p}: expected a number in (0, 1]")


def check_fits(prompt_len: int, max_new_tokens: int, llama_cfg) -> None:
    """The prompt must fit the model's context, and prompt plus answer the cache's RoPE table,
    which covers 2 x max_seq_len positions (as in Meta's LLaMA)."""
    if prompt_len > llama_cfg.max_seq_len:
        raise UsageError(f"--prompt takes {prompt_len} positions, more than the model's context of "
                         f"{llama_cfg.max_seq_len}")
    if prompt_len + max_new_tokens > 2 * llama_cfg.max_seq_len:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: the {prompt_len}-position prompt leaves room for at "
                         f"most {2 * llama_cfg.max_seq_len - prompt_len} new tokens")


def prompt_text(net, question: str | None, raw: bool) -> str:
    """The text the model reads: a tuned model's merged.pt records its task's template (eas.data.prompt);
    other models take --prompt as typed."""
    fmt = getattr(net, "prompt_format", None)
    if fmt is not None:
        return fmt.prompt(question, raw)
    if question is None:
        raise UsageError("this model records no task prompt template (only a tuned merged.pt does): pass --prompt")
    return question


def answer_budget(net, max_new_tokens: int | None) -> int:
    fmt = getattr(net, "prompt_format", None)
    return max_new_tokens if max_new_tokens is not None else fmt.max_new_tokens if fmt else 32


def generate(prompt: str | None = None, image: list[str] | None = None, model: str | None = None,
             engine: str | None = None, backend: str = "ort", raw: bool = False, random_init: bool = False,
             tokenizer: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0) -> list[str]:
    """One answer per image (one text-only answer without --image), printed one per line."""
    check_sampling(max_new_tokens, temperature, top_p)
    if backend != "ort" and engine is None:
        raise UsageError(f"--backend {backend} runs an export folder: pass --engine DIR")
    t0 = time.perf_counter()
    if engine is not None:
        check_engine_flags(model, random_init, tokenizer, temperature, top_p)
        texts, what = generate_engine(engine, backend, prompt, image, raw, max_new_tokens)
    else:
        texts, what = generate_torch(prompt, image, model, raw, random_init, tokenizer, max_new_tokens,
                                     temperature, top_p, seed)
    print(f"{what}; {len(texts)} answer(s) in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    print("\n".join(texts))
    return texts


def generate_torch(prompt, images, model, raw, random_init, tokenizer, max_new_tokens, temperature, top_p,
                   seed) -> tuple[list[str], str]:
    net, tok, what = load_for_generation(model, random_init, tokenizer)
    text, budget = prompt_text(net, prompt, raw), answer_budget(net, max_new_tokens)
    gen = torch.Generator().manual_seed(seed)
    sampling = dict(eos_id=tok.eos_id, temperature=temperature, top_p=top_p, generator=gen)
    if isinstance(net, (Lavin, Llava)):
        request = [(text, None, True) for _ in images] if images else [(text, None, False)]
        check_fits(prompt_length(net, tok, request), budget, net.cfg.llama)
        load = pixel_loader(net.cfg)
        pixels = torch.stack([load(p) for p in images]) if images else None
        out = net.generate(net.build_batch(tok, request), pixels, budget, **sampling)
    else:
        if images:
            raise UsageError("--image needs a multimodal (LaVIN or LLaVA) model; this one is a text-only LLaMA")
        ids = tok.encode(text, bos=True, eos=False)
        check_fits(len(ids), budget, net.cfg)
        tokens, positions, key_mask = left_pad([ids])
        with torch.no_grad():
            out = generate_tokens(net, net.tok_embeddings(tokens), positions, key_mask, budget, **sampling)
    return [tok.decode(t) for t in out], f"model: {what}"


def prompt_length(net, tok, request) -> int:
    """Slots the prompt batch takes in the model's own layout, measured before any length check."""
    if isinstance(net, Llava):
        questions = [(llava_question(text), answer, has_image) for text, answer, has_image in request]
        return build_llava_batch(tok, questions, net.cfg.n_image_tokens).tokens.shape[1]
    return build_batch(tok, request, net.cfg.n_visual_tokens).tokens.shape[1]


def check_engine_flags(model, random_init, tokenizer, temperature, top_p) -> None:
    given = [flag for flag, value in (("--model", model), ("--random", random_init), ("--tokenizer", tokenizer))
             if value]
    if given:
        raise UsageError(f"--engine runs an export folder (its manifest names the tokenizer): drop {', '.join(given)}")
    if temperature != 0 or top_p != 1:
        raise UsageError("--engine: the export runtimes decode greedily; drop --temperature and --top-p")


def generate_engine(folder, backend, prompt, images, raw, max_new_tokens) -> tuple[list[str], str]:
    """The export runtimes (export/runtime.py), imported here so that tuning does not load onnxruntime."""
    if backend == "trt":
        from export.trt_runtime import TrtRuntime
        rt, device = TrtRuntime(folder), "TensorRT"
    else:
        from export.ort_runtime import OrtRuntime
        rt = OrtRuntime(folder, cuda=True)
        device = "ONNX Runtime on " + ", ".join(sorted(set(rt.providers.values())))
    if images and rt.manifest["image"] is None:
        raise UsageError(f"--image: the model in {folder} is text-only (its manifest has no image section)")
    pictures = [open_image(p) for p in images] if images else [None]
    return rt.ask(prompt, pictures, raw, max_new_tokens), f"engine: {folder} ({device})"


TUNE_HELP = {
    "task": "aid (synthetic AID-like data without --data-root), scienceqa or slake",
    "data_root": "the data set's folder (AID: <ClassDir>/<class>_<n>.jpg)",
    "setting": "AID train share: 20 or 50 (%%), as in the paper",
    "base": "own-format LaVIN folder (default: the tiny pretrained base in weights/tiny)",
    "llama": "Meta or Hugging Face LLaMA folder (with --clip, instead of --base)",
    "clip": "CLIP tower: OpenAI file, Hugging Face or converted folder (with --llama, or an original LLaVA --base)",
    "arch": "lavin (CLS taps, LaVIN-EAS) or llava (patch tokens + mlp2x_gelu, vicuna_v1; LLaVA-EAS); "
            "default the base's own",
    "adapter_dim": "PIA-A width r_a (default 8 for lavin; for llava 128, times dim/4096 on an LLM narrower than "
                   "LLaVA-1.5's: 8 on the tiny base)",
    "skip_dim": "PIA-S width r_s (default 32 for lavin; for llava as r_a)",
    "finetune_epochs": "epochs of the final fine-tune (default 20; 10 for the LLaVA form of an LLM narrower than "
                       "LLaVA-1.5's, as on the tiny base)",
    "projector_lr": "learning rate of the visual projector (default: --lr, as LLaVA-EAS trains mm_projector)",
    "search": "the bandit: lavin (softmax policy, reward on a val batch; eas_method.md 3.1) or llava (sigmoid "
              "policy, curriculum on K, reward on the current train batch; 3.2)",
    "nas_every": "bandit update every N steps (default 2 for --search lavin, 3 for llava)",
    "candidates": "M sub-networks scored per update (default 3 for --search lavin, 5 for llava)",
    "beta": "policy inverse temperature (default 10 for --search lavin, 1 for llava)",
    "search_lr": "bandit step size (default 2 for --search lavin, 1 for llava)",
    "out": "run folder: log.jsonl, state.pt, report.*, merged.pt (default runs/<task>)",
    "device": "cpu, cuda or cuda:N (default cuda:LOCAL_RANK when CUDA is available, else cpu)",
    "dtype": "the frozen base's dtype, float32 or bfloat16 (default bfloat16 on CUDA, float32 on CPU); "
             "adapters always train in float32",
    "recipe": "demo (CPU demo schedule, the default) or paper (the authors' LaVIN-/LLaVA-EAS schedule for 7B "
              "runs on GPUs); flags given explicitly override its values",
    "skip": "K units to skip (default: a quarter of the layers; 0 = adapter-only baseline)",
    "skip_set": "comma-separated layers to skip, no search (e.g. 1,5)",
    "unit": "what a skipped layer loses: attention (EAS), ffn, or layer (as DAS); only attention merges "
            "away completely",
    "oracle": "after the search, score the super-network with each attention skipped alone and build the "
              "greedy oracle K-set (oracle.json; Spearman rho vs the bandit in the report)",
    "warm_start": "fine-tune from the super-net's adapters instead of fresh ones",
    "merge": "the form written to merged.pt: static or dynamic",
    "max_test": "evaluate on the first N test examples only",
    "resume": "continue an interrupted run in --out from its last checkpoint",
    "save_minutes": "checkpoint at least this often",
    "save_every": "also checkpoint every N steps (0: by time only)",
}


def layer_list(text: str) -> tuple[int, ...]:
    """--skip-set 1,5 -> (1, 5); an empty list is kept, for TuneConfig's check to refuse by name."""
    return tuple(int(x) for x in text.split(",") if x.strip())


def _add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per TuneConfig field, typed from its annotation, so CLI and library cannot drift."""
    for f in dataclasses.fields(cls):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        help_ = TUNE_HELP.get(f.name, f.name.replace("_", " "))
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_)
        elif f.name == "skip_set":
            parser.add_argument(flag, type=layer_list, default=None, help=help_)
        else:
            kind = {"int | None": int, "str | None": str, "float | None": float}.get(
                str(f.type), type(default) if default is not None else str)
            shown = "from --recipe, --arch and --search" if f.name in DEFERRED else default
            parser.add_argument(flag, type=kind, default=default, help=f"{help_} (default {shown})")


def tune(**kwargs) -> dict:
    report = run_tune(TuneConfig(**kwargs))
    if report:
        print("\n".join(summary_lines(report)))
    return report


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run.py", description="EAS: parameter- and computation-efficient tuning "
                                 "of LaVIN-style multimodal LLMs (Effective Attention Skipping).")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="EAS recipe end to end: search, fine-tune, evaluate, merge -> merged.pt")
    _add_dataclass_args(t, TuneConfig)
    g = sub.add_parser("generate", help="answer a question (optionally about images) as the model was tuned")
    g.add_argument("--prompt", help="the question; a tuned merged.pt or export wraps it in its task's prompt "
                   "template (default: the task's own question, e.g. AID's)")
    g.add_argument("--raw", action="store_true", help="send --prompt as typed, without the template")
    g.add_argument("--image", nargs="+", help="image file(s), one answer each (LaVIN models only)")
    g.add_argument("--model", help=f"own-format folder, merged.pt, or Meta/HF LLaMA folder (default {TINY})")
    g.add_argument("--engine", help="export folder of python export/to_trt.py (instead of --model)")
    g.add_argument("--backend", choices=("ort", "trt"), default="ort",
                   help="with --engine: ONNX Runtime (CUDA when it really gets it, else CPU) or TensorRT engines")
    g.add_argument("--random", dest="random_init", action="store_true",
                   help="tiny LaVIN-style model with random weights (smoke test)")
    g.add_argument("--tokenizer", help="SentencePiece model (default: the one next to the model)")
    g.add_argument("--max-new-tokens", type=int, help="default: the tuned task's answer budget, else 32")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    add_bench_parser(sub)
    return ap


def main(argv=None) -> int:
    args = vars(parser().parse_args(argv))
    command = args.pop("command")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    if command == "bench":
        args["argv"] = list(argv if argv is not None else sys.argv[1:])[1:]
    try:
        {"generate": generate, "tune": tune, "bench": bench}[command](**args)
    except EASError as e:  # bad input: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
