"""`seqport export`: load → wrap components → export ONNX → validate → write the manifest.

The manifest is written last, only after validation passed, so a folder with a seqport.json
is always an artifact whose components were checked against PyTorch.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import tempfile
from pathlib import Path

import onnx
import torch
from tqdm import tqdm

from seqport.engine.errors import ArtifactError, ExportError
from seqport.engine.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Component,
    KVGeometry,
    Manifest,
    Provenance,
    SpecialIds,
    load_manifest,
    sha256_of,
)
from seqport.export import gguf
from seqport.export.adapter import EncoderDecoderAdapter
from seqport.export.atomic import atomic_folder
from seqport.export.attention import check_attention
from seqport.export.attention_seq2seq import check_seq2seq_attention
from seqport.export.causal import export_decoder_only
from seqport.export.encoder_only import EncoderOnlyAdapter, EncoderSpec, export_encoder_only, validate_encoder_only
from seqport.export.families import load_adapter
from seqport.export.greedy_head import add_greedy_head
from seqport.export.int4 import Int4Options
from seqport.export.memory import release_weights
from seqport.export.onnx_export import OPSET, inline_weights
from seqport.export.seq2seq_graphs import KV_CACHE_CHOICES, export_decoder, export_encoder, resolve_allocation
from seqport.export.text_check import real_text_check
from seqport.export.tokenizer_files import gguf_tokenizer, source_tokenizer, write_tokenizer_files
from seqport.export.validate import check_scale, validate, validate_decoder_only
from seqport.export.weights_layout import externalize_weights

logger = logging.getLogger(__name__)


def export_model(
    source: str | Path,
    out: str | Path,
    family: str | None = None,
    progress: bool = True,
    task: str | None = None,
    optimize: bool = False,
    quantize: str | None = None,
    dtype: str = "fp32",
    kv_cache: str = "auto",
    overwrite: bool = False,
    attention: str = "portable",
    int4: Int4Options | None = None,
    tolerance: float = 1.0,
) -> Manifest:
    """Export the checkpoint in `source` to a validated seqport artifact in `out`.

    The artifact is built in a temporary sibling folder and moved into place only once it is
    complete and validated (export/atomic.py): a failed or killed export never leaves a
    half-written `out`, and never touches files that are not its own.

    Args:
        source: a model folder (config.json, weights, tokenizer.json or files the family's
            adapter converts into one, e.g. a HuggingFace spiece.model), or a GGUF checkpoint:
            a .gguf file or a folder holding one (export/gguf.py).
        out: the artifact folder to write; created if needed. It must be new, empty, or (with
            `overwrite`) an existing seqport artifact.
        family: force the adapter instead of reading config.json's model_type.
        progress: show a progress bar on stderr.
        task: encoder-only families: "feature-extraction" (last_hidden_state, pooled by the
            engine) or "sequence-classification" (logits); None: what the checkpoint is.
        optimize: apply onnxruntime's transformer fusions offline and validate again
            (export/optimize.py); the manifest records the fusions and the figures.
        quantize: "int8": dynamic int8 weights, gated on greedy token agreement with fp32
            (export/quantize.py); the manifest records the figures. "int4": blockwise int4
            weights (MatMulNBits), gated the same way (export/int4.py).
        dtype: "fp32", or "fp16": weights and activations in float16 (float32 graph I/O),
            gated on greedy token agreement with fp32 (export/fp16.py); T5 must stay fp32.
        kv_cache: "growing" (past + new concatenated each step), "preallocated" (the engine
            sizes one buffer per request and the decoder writes into it; see
            export/cache_slots.py and docs/manifest.md), or "auto": preallocated for a
            decoder-only fused graph, growing otherwise (seq2seq_graphs.resolve_allocation).
        overwrite: replace an existing artifact in `out` (once the new one is complete).
        attention: "portable" (plain ONNX) or "fused": onnxruntime's GroupQueryAttention for
            decoder-only GPT-2/Llama/Mistral/Qwen2 (export/attention.py), MultiHeadAttention for
            encoder-decoder families (export/attention_seq2seq.py).
        int4: block size, accuracy level and projection of --quantize int4 (default Int4Options()).
        tolerance: multiplies every validation tolerance (atol, rtol, near-tie margin, allowed
            top-k disagreement; export/validate.py): > 1 loosens, < 1 tightens.

    Returns:
        The manifest written to `out/seqport.json`.

    Raises:
        ArtifactError: missing source folder, config or tokenizer.
        ExportError: unsupported family, torch.onnx could not export a component, or `out`
            cannot take the artifact (a file, a non-empty non-artifact folder, an artifact
            without `overwrite`, an unwritable place).
        ParityError: a component disagrees with PyTorch beyond tolerance.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ExportError(f"--quantize {quantize!r} is not supported; supported: {', '.join(QUANTIZE_MODES)}")
    if int4 is not None and quantize != "int4":
        raise ExportError("int4 options (block size, accuracy level, projection) need --quantize int4")
    if dtype not in ("fp32", "fp16") or (dtype == "fp16" and quantize is not None):
        raise ExportError(f"--dtype must be fp32 or fp16 (fp16 without --quantize), got {dtype!r}")
    if kv_cache not in KV_CACHE_CHOICES:
        raise ExportError(f"--kv-cache must be one of {', '.join(KV_CACHE_CHOICES)}, got {kv_cache!r}")
    with atomic_folder(out, overwrite) as target, tempfile.TemporaryDirectory(prefix="seqport-tokenizer-") as staging:
        folder = gguf.stage(Path(source), Path(staging, "source"))  # a .gguf file: a folder linking it
        # a GGUF's tokenizer first: rebuilding it takes memory that should not add to the weights'
        tokenizer = gguf_tokenizer(folder, Path(staging))
        adapter = load_adapter(folder, family, task)
        tokenizer = tokenizer or source_tokenizer(adapter, folder, Path(staging))
        manifest = _export_inline(
            adapter,
            tokenizer,
            target,
            progress=progress,
            source=Path(source),
            kv_cache=kv_cache,
            attention=attention,
            tolerance=tolerance,
            release=not optimize,  # nothing after validation needs PyTorch but --optimize's re-validation
        )
        manifest = finish_artifact(target, _post_process(adapter, target, manifest, optimize, quantize, dtype, int4))
    return manifest


QUANTIZE_MODES = ("int8", "int4")


def _post_process(
    adapter,
    out: Path,
    manifest: Manifest,
    optimize: bool,
    quantize: str | None,
    dtype: str = "fp32",
    int4: Int4Options | None = None,
) -> Manifest:
    """--optimize, then --quantize or --dtype fp16: rewrite the components in place, re-validate, re-save."""
    if not optimize and quantize is None and dtype == "fp32":
        return manifest
    (out / MANIFEST_FILE).unlink()  # the components change below: a half-done folder must not look valid
    for component in manifest.components.values():
        inline_weights(out / component.file)
    components = {n: dataclasses.replace(c, sha256=sha256_of(out / c.file)) for n, c in manifest.components.items()}
    manifest = dataclasses.replace(manifest, components=components)
    if optimize:
        from seqport.export.optimize import optimize_artifact

        manifest = optimize_artifact(adapter, out, manifest)
    if quantize == "int4":
        from seqport.export.int4 import quantize_int4_artifact

        manifest = quantize_int4_artifact(out, manifest, int4)
    elif quantize is not None:
        from seqport.export.quantize import quantize_artifact

        manifest = quantize_artifact(out, manifest)
    if dtype == "fp16":
        from seqport.export.fp16 import fp16_artifact

        manifest = fp16_artifact(out, manifest)
    manifest.save(out)
    return manifest


def finish_artifact(out: Path, manifest: Manifest) -> Manifest:
    """Last step of every export: a generating decoder's greedy head (export/greedy_head.py,
    on the final graph), weights as external data, shared tensors once, then the manifest, read
    back as the engine will before the folder is moved into place.

    Args:
        out: the artifact folder being written (the staging folder of an atomic export).
        manifest: its manifest so far.

    Returns:
        The manifest as saved in `out`.
    """
    manifest = add_greedy_head(out, manifest)
    manifest = externalize_weights(out, manifest)
    manifest.save(out)
    load_manifest(out)
    return manifest


def export_adapter(
    adapter: EncoderDecoderAdapter | EncoderOnlyAdapter,
    tokenizer: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    source: str | Path | None = None,
    kv_cache: str = "growing",
    overwrite: bool = False,
    tolerance: float = 1.0,
) -> Manifest:
    """Export a model you wrapped yourself (see docs/own-model.md) with the same validation.

    Args:
        adapter: an object following EncoderDecoderAdapter (export/adapter.py) or, for an
            encoder-only model, EncoderOnlyAdapter (export/encoder_only.py).
        tokenizer: the model's tokenizers tokenizer.json; copied into the artifact.
        out: the artifact folder to write; created if needed.
        progress: show a progress bar on stderr.
        source: recorded as the manifest's provenance source (default: the adapter's class).
        kv_cache: "growing" or "preallocated" (as for export_model); preallocated needs a
            decode_step that takes `cache_position` (see export/cache_slots.py).
        overwrite: replace an existing artifact in `out` (as for export_model).
        tolerance: multiplies every validation tolerance (as for export_model).

    Returns:
        The manifest written to `out/seqport.json`.

    Raises:
        ArtifactError: the tokenizer file is missing.
        ExportError: torch.onnx could not export a component, or `out` cannot take the
            artifact (as for export_model).
        ParityError: a component disagrees with PyTorch beyond tolerance.
    """
    with atomic_folder(out, overwrite) as folder:
        manifest = _export_inline(
            adapter, tokenizer, folder, progress=progress, source=source, kv_cache=kv_cache, tolerance=tolerance
        )
        manifest = finish_artifact(folder, manifest)
    return manifest


def _export_inline(
    adapter: EncoderDecoderAdapter | EncoderOnlyAdapter,
    tokenizer: str | Path,
    out: str | Path,
    *,
    progress: bool,
    source: str | Path | None,
    kv_cache: str,
    attention: str = "portable",
    tolerance: float = 1.0,
    release: bool = False,
) -> Manifest:
    """export_adapter without the weights layout: inline components, validated, manifest saved
    (the post-processing steps rewrite these files with onnx.load/save). `release`: a
    decoder-only adapter's PyTorch weights are let go once PyTorch's side of validation is
    done (export_model's own model, when nothing later needs it; never a caller's adapter)."""
    tokenizer, out = Path(tokenizer), Path(out)
    source = source if source is not None else f"{type(adapter).__module__}.{type(adapter).__qualname__}"
    if not tokenizer.is_file():
        raise ArtifactError(f"{tokenizer} not found: the engine needs a tokenizers tokenizer.json")
    out.mkdir(parents=True, exist_ok=True)
    spec, scale = adapter.spec(), check_scale(tolerance)
    if isinstance(spec, EncoderSpec):
        return _export_encoder_only(adapter, spec, tokenizer, out, source, progress, scale)
    decoder_only = spec.architecture == "decoder-only"  # one `decoder` graph, no encoder
    kv_cache = resolve_allocation(adapter, kv_cache, decoder_only, attention)  # "auto" → an allocation, checked
    if decoder_only:
        check_attention(adapter, spec.head_dim, attention)
    else:
        check_seq2seq_attention(adapter, attention)
    if decoder_only and spec.states:
        raise ExportError("ModelSpec.states is supported for encoder-decoder adapters; a decoder-only one has K/V only")
    steps = ["decoder", "validate"] if decoder_only else ["encoder", "decoder", "validate"]
    components: dict[str, Component] = {}
    with tqdm(steps, desc="export", unit="step", disable=not progress, leave=False) as bar:
        for step in bar:
            bar.set_postfix_str(step)
            if step == "encoder":
                components["encoder"] = export_encoder(adapter, spec, out, attention)
            elif step == "decoder":
                if decoder_only:
                    components["decoder"] = export_decoder_only(adapter, spec, out, kv_cache, attention)
                else:
                    components["decoder"] = export_decoder(adapter, spec, out, kv_cache, attention)
            else:
                fixed = {
                    "num_kv_heads": spec.num_kv_heads,
                    "head_dim": spec.head_dim,
                    "vocab_size": spec.vocab_size,
                }
                if decoder_only:
                    validation = validate_decoder_only(
                        adapter,
                        out,
                        components,
                        fixed,
                        allocation=kv_cache,
                        attention=attention,
                        text_check=real_text_check(tokenizer, True, attention),
                        scale=scale,
                        release=functools.partial(release_weights, adapter) if release else None,
                    )
                else:
                    validation = validate(
                        adapter,
                        out,
                        components,
                        fixed,
                        allocation=kv_cache,
                        text_check=real_text_check(tokenizer, False),
                        scale=scale,
                    )
    tokenizer_spec = write_tokenizer_files(tokenizer, out)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        architecture=spec.architecture,
        family=spec.family,
        vocab_size=spec.vocab_size,
        max_positions=spec.max_positions,
        components=components,
        kv=KVGeometry(spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim, allocation=kv_cache),
        special_ids=SpecialIds(
            eos=list(spec.eos), pad=spec.pad, bos=spec.bos, decoder_start=spec.decoder_start, unk=spec.unk
        ),
        tokenizer=tokenizer_spec,
        provenance=_provenance(source),
        validation=validation,
        generation=dict(spec.generation),
        attention=attention,
        states=dict(getattr(spec, "states", {})),
    )
    manifest.save(out)
    return manifest


def _export_encoder_only(
    adapter: EncoderOnlyAdapter,
    spec: EncoderSpec,
    tokenizer: Path,
    out: Path,
    source: str | Path,
    progress: bool,
    scale: float = 1.0,
) -> Manifest:
    """One `encoder` graph (last_hidden_state or logits), validated; pooling and labels in the manifest."""
    with tqdm(total=2, desc="export", unit="step", disable=not progress, leave=False) as bar:
        component = export_encoder_only(adapter, spec, out)
        bar.update()
        validation = validate_encoder_only(adapter, out, component, scale=scale)
        bar.update()
    tokenizer_spec = write_tokenizer_files(tokenizer, out)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        architecture=spec.architecture,
        family=spec.family,
        vocab_size=spec.vocab_size,
        max_positions=spec.max_positions,
        components={"encoder": component},
        kv=None,
        special_ids=SpecialIds(eos=list(spec.eos), pad=spec.pad, bos=spec.bos, unk=spec.unk),
        tokenizer=tokenizer_spec,
        provenance=_provenance(source),
        validation=validation,
        pooling=spec.pooling,
        labels=list(spec.labels),
    )
    manifest.save(out)
    return manifest


def _provenance(source: str | Path) -> Provenance:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return ""

    seqport = installed("seqport")
    return Provenance(
        source=str(source.resolve()) if isinstance(source, Path) else source,
        exporter=f"seqport {seqport}",
        torch=torch.__version__,
        onnx=onnx.__version__,
        onnxruntime=installed("onnxruntime") or installed("onnxruntime-gpu"),
        opset=OPSET,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
