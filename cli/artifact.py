"""`seqport export` and `seqport info`: write an artifact, describe one.

`export` imports the export side (torch) only when it runs, so a runtime-only install still
answers --help and runs `info`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging

from seqport.engine.errors import SeqportError

EXPORT_HINT = "`seqport export` needs the export extra: pip install 'seqport[export]'"


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    """Add the info subcommand to `sub`."""
    p = sub.add_parser(
        "info",
        help="describe an artifact and the available providers",
        description="Print an artifact's manifest summary and parity figures, "
        "and the runtimes and execution providers this installation can use.",
    )
    p.add_argument("artifact", nargs="?", help="artifact folder (optional)")
    p.set_defaults(run=_info)


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Add the export subcommand to `sub`."""
    p = sub.add_parser(
        "export",
        help="export a checkpoint folder to a validated artifact",
        description="Split a PyTorch checkpoint into encoder and decoder-step "
        "ONNX graphs, validate each against PyTorch (per output atol + rtol·max|ref|; fp32 1e-4 + 1e-4) "
        "and on greedy decoding of real sentences, and write seqport.json. Fails (exit 1) if validation "
        "fails, leaving any previous artifact in OUT as it was. " + EXPORT_HINT,
    )
    p.add_argument(
        "source", help="checkpoint folder (config.json, weights, tokenizer.json), or a .gguf file or a folder with one"
    )
    p.add_argument("out", help="artifact folder to write (created if needed)")
    p.add_argument("--family", help="adapter to use instead of config.json's model_type")
    p.add_argument(
        "--task",
        choices=("feature-extraction", "sequence-classification"),
        help="encoder-only models (BERT, RoBERTa, ...): export hidden states for `seqport embed` "
        "(pooling as the sentence-transformers folder declares) or logits for `seqport classify`; "
        "default: what the checkpoint is (a *ForSequenceClassification head or not)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--optimize",
        action="store_true",
        help="apply onnxruntime's transformer fusions offline, validate again, record them in the manifest",
    )
    p.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        help="int8: dynamic int8 weights; int4: blockwise int4 weights (MatMulNBits); both gated on greedy "
        "token agreement with fp32",
    )
    p.add_argument("--block-size", type=int, default=None, help="--quantize int4: weights per scale (default 32)")
    p.add_argument(
        "--accuracy-level", type=int, default=None, help="--quantize int4: MatMulNBits compute type 0-4 (default 4)"
    )
    p.add_argument(
        "--int4-projection",
        choices=["int4", "int8", "float"],
        default=None,
        help="--quantize int4: the vocabulary projection in int4 like the layers, in int8 blocks, or kept "
        "float32 (default int8)",
    )
    p.add_argument(
        "--int4-scheme",
        choices=["offset", "asymmetric", "symmetric"],
        default=None,
        help="--quantize int4: offset (min/max blocks with an exact float offset; weights already on a "
        "4-bit grid, e.g. from a GGUF, come back exactly; default), asymmetric (integer zero points) or "
        "symmetric (scales only)",
    )
    p.add_argument(
        "--attention",
        choices=["portable", "fused"],
        default="portable",
        help="portable: plain ONNX attention (any runtime); fused: onnxruntime's contrib attention, "
        "GroupQueryAttention and RotaryEmbedding for GPT-2, Llama, Mistral, Qwen2, MultiHeadAttention for the "
        "encoder-decoder families (seqport-transformer, T5, mT5, BART, mBART, Marian); onnxruntime only; "
        "docs/runtimes.md",
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: weights and activations in float16 (float32 graph I/O), gated on greedy token "
        "agreement with fp32; T5 stays fp32 (docs/gpu.md)",
    )
    p.add_argument(
        "--kv-cache",
        choices=["auto", "growing", "preallocated"],
        default="auto",
        help="growing: the decoder returns past + new K/V each step (concatenation, continuous batching); "
        "preallocated: the engine sizes one buffer per request and the decoder writes the new K/V into it in "
        "place; auto (default): preallocated with a decoder-only --attention fused, growing otherwise "
        "(docs/manifest.md; benchmarks/kv_growth.py measures both)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="multiply every validation tolerance (>1 loosens, <1 tightens; default 1); a failed "
        "validation names the smallest value that would pass",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing seqport artifact in OUT (swapped in only once the new one is complete "
        "and validated; a folder that is not an artifact is never written into)",
    )
    p.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    try:
        from seqport.export.pipeline import export_model
    except ImportError as exc:
        raise SeqportError(f"{EXPORT_HINT} ({exc.name} is missing)") from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # exporter chatter about torchvision
    # onnxruntime's optimizer imports its modules top-level: symbolic-dim chatter of its shape inference
    logging.getLogger("symbolic_shape_infer").setLevel(logging.ERROR)
    manifest = export_model(
        args.source,
        args.out,
        family=args.family,
        progress=not args.quiet,
        task=args.task,
        optimize=args.optimize,
        quantize=args.quantize,
        dtype=args.dtype,
        kv_cache=args.kv_cache,
        overwrite=args.overwrite,
        tolerance=args.tolerance,
        attention=args.attention,
        int4=_int4_options(args),
    )
    print(f"exported {manifest.family} to {args.out}")
    print_validation(manifest)
    return 0


def _int4_options(args: argparse.Namespace):
    """Int4Options from the int4 flags, or None when none is given (the export's defaults)."""
    given = {
        "block_size": args.block_size,
        "accuracy_level": args.accuracy_level,
        "projection": args.int4_projection,
        "scheme": args.int4_scheme,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if not given and args.quantize != "int4":
        return None
    from seqport.export.int4 import Int4Options

    return Int4Options(**given)


def print_validation(manifest) -> None:
    """The parity figures of a manifest, then its --optimize and --quantize sections."""
    v = manifest.validation
    print(f"validation against PyTorch ({len(v.cases)} cases), max abs diff:")
    for component, outputs in sorted(v.max_abs_diff.items()):
        figures = ", ".join(f"{name} {diff:.2e}" for name, diff in sorted(outputs.items()))
        print(f"  {component}: {figures}")
    rtol = getattr(v, "rtol", {}) or {}
    bounds = ", ".join(f"{k} {t:g} + {rtol.get(k, 0):g}·max|ref|" for k, t in sorted(v.tolerance.items()))
    print(f"  tolerance (atol + rtol·max|ref|, x{getattr(v, 'scale', 1.0):g}): {bounds}")
    text = getattr(v, "text", None)
    if text is not None:
        print(
            f"  real text: {text.greedy_equal}/{len(text.prompts)} prompts greedy-equal over {text.steps} steps "
            f"({text.near_ties} near ties), top-{text.top_k} agreement {text.top_k_agreement:.3f}"
        )
    _print_optimization(getattr(manifest, "optimization", None))
    _print_quantization(getattr(manifest, "quantization", None))


def _print_optimization(o) -> None:
    if o is None:
        return
    for component, fused in sorted(o.fusions.items()):
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(fused.items())) or "no pattern matched"
        print(f"optimized {component} ({o.tool}, {o.model_type} patterns): {ops}")
    worst = max((d for t in o.validation.max_abs_diff.values() for d in t.values()), default=0.0)
    print(f"  re-validated against PyTorch ({len(o.validation.cases)} cases): max abs diff {worst:.2e}")


def _print_quantization(q) -> None:
    if q is None:
        return
    scales = "per-channel" if q.per_channel else "per-tensor"
    print(f"quantized {q.method} ({scales}, {', '.join(q.op_types)}): {q.inputs}")
    print(
        f"  greedy token agreement with fp32 {q.token_agreement:.3f} (gate {q.min_agreement:g}), "
        f"identical outputs {q.sequence_match:.2f}"
    )
    for component, outputs in sorted(q.max_abs_diff.items()):
        figures = ", ".join(f"{name} {diff:.2e}" for name, diff in sorted(outputs.items()))
        print(f"  {component} max abs diff vs fp32 (information): {figures}")


def _info(args: argparse.Namespace) -> int:
    if args.artifact:
        _print_manifest(args.artifact)
    _print_runtimes()
    return 0


def _print_manifest(artifact: str) -> None:
    from seqport.engine.manifest import load_manifest

    m = load_manifest(artifact)
    print(f"artifact: {artifact}")
    print(f"  {m.architecture} · family {m.family} · format_version {m.format_version}")
    print(f"  vocab {m.vocab_size} · max positions {m.max_positions}")
    if m.kv:
        print(
            f"  decoder: {m.kv.num_layers} layers · {m.kv.num_heads} heads "
            f"({m.kv.num_kv_heads} kv) · head_dim {m.kv.head_dim} · {m.kv.dtype} · {m.kv.allocation} KV cache"
        )
    if m.pooling:
        modes = "+".join(m.pooling.modes)
        print(f"  embeddings: {modes} pooling · dimension {m.pooling.dimension} · normalized {m.pooling.normalize}")
    if m.labels:
        print(f"  labels: {', '.join(m.labels)}")
    if m.tokenizer.chat_template or m.tokenizer.special_tokens:
        special = ", ".join(f"{name} {text!r}" for name, text in m.tokenizer.special_tokens.items()) or "none"
        print(f"  chat template: {m.tokenizer.chat_template or 'none'} · special tokens: {special}")
    for name, c in sorted(m.components.items()):
        print(f"  component {name}: {c.file} (sha256 {c.sha256[:12]}…)")
    p = m.provenance
    print(f"  exported by {p.exporter} · torch {p.torch} · onnx {p.onnx} · opset {p.opset}")
    print_validation(m)


def _huge_pages() -> str:
    """Whether `load()` can move the weights onto huge pages here (RuntimeOptions.huge_pages)."""
    from seqport.engine.huge_pages import unavailable

    reason = unavailable()
    return "yes (RuntimeOptions.huge_pages, --no-huge-pages)" if reason is None else f"no: {reason}"


def _print_runtimes() -> None:
    """Each backend of RuntimeOptions.backend: installed or not, its version and providers/devices."""
    from importlib.metadata import PackageNotFoundError, version

    print("runtimes (RuntimeOptions.backend / --runtimes):")
    try:
        from seqport.runtimes.onnxruntime import available_providers, ort
    except ImportError:
        print("  onnxruntime: not installed (pip install 'seqport[cpu]' or 'seqport[gpu]')")
    else:
        print(f"  onnxruntime {ort.__version__}: providers {', '.join(available_providers())}")
    print(f"  weights on huge pages after load: {_huge_pages()}")
    if importlib.util.find_spec("torch") is None:  # found without importing it: the CLI stays torch-free
        print("  torch (reference): not installed (pip install 'seqport[export]')")
        return
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "(version unknown)"
    devices = "cpu" if "+cpu" in torch_version else "cpu, cuda (if torch sees a GPU)"
    print(f"  torch {torch_version} (reference; loads the checkpoint from provenance.source): devices {devices}")
