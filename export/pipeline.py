"""`seqport export`: load → wrap components → export ONNX → validate → write the manifest.

The manifest is written last, only after validation passed, so a folder with a seqport.json
is always an artifact whose components were checked against PyTorch.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path

import onnx
import torch
from seqport.engine.errors import ArtifactError
from seqport.engine.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Component,
    KVGeometry,
    Manifest,
    Provenance,
    SpecialIds,
    TokenizerSpec,
    sha256_of,
)
from seqport.export.adapter import EncoderDecoderAdapter, ModelSpec
from seqport.export.components import (
    DecoderComponent,
    EncoderComponent,
    decoder_contract,
    encoder_contract,
    flat_kv,
)
from seqport.export.families import load_adapter
from seqport.export.onnx_export import OPSET, dynamic_axes, export_component
from seqport.export.validate import validate
from tqdm import tqdm

logger = logging.getLogger(__name__)
TOKENIZER_FILE = "tokenizer.json"


def _example_sources(spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    # sizes >= 2 everywhere: torch.export specialises dims that are 0 or 1 in the example.
    ids = torch.full((2, 5), (spec.pad or 0) + 5, dtype=torch.long) % spec.vocab_size
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    return ids, mask


def _export_encoder(adapter, spec: ModelSpec, folder: Path) -> Component:
    inputs, outputs = encoder_contract("float32")
    dyn = tuple(dynamic_axes(inputs[name]) for name in ("input_ids", "attention_mask"))
    path = folder / "encoder.onnx"
    export_component(
        EncoderComponent(adapter), _example_sources(spec), dyn, inputs, outputs, spec.num_layers, path
    )
    return Component(file=path.name, sha256=sha256_of(path), inputs=inputs, outputs=outputs)


def _export_decoder(adapter, spec: ModelSpec, folder: Path) -> Component:
    inputs, outputs = decoder_contract("float32")
    ids, mask = _example_sources(spec)
    with torch.inference_mode():
        _, cross = adapter.encode(ids, mask)
        prefix = torch.full((2, 4), 5 % spec.vocab_size, dtype=torch.long)
        _, past = adapter.decode_step(prefix, mask, cross, adapter.empty_past(2))
    cross, past = [t.clone() for t in flat_kv(cross)], [t.clone() for t in flat_kv(past)]
    n = spec.num_layers
    args = (prefix[:, :3], mask, torch.tensor([1, 2]), cross[:n], cross[n:], past[:n], past[n:])

    def per_layer(name):
        return [dynamic_axes(inputs[name])] * n

    dyn = (
        dynamic_axes(inputs["input_ids"]),
        dynamic_axes(inputs["encoder_attention_mask"]),
        dynamic_axes(inputs["logits_positions"]),
        per_layer("cross_key.{i}"),
        per_layer("cross_value.{i}"),
        per_layer("past_key.{i}"),
        per_layer("past_value.{i}"),
    )
    path = folder / "decoder.onnx"
    export_component(DecoderComponent(adapter), args, dyn, inputs, outputs, n, path)
    return Component(file=path.name, sha256=sha256_of(path), inputs=inputs, outputs=outputs)


def export_model(
    source: str | Path,
    out: str | Path,
    family: str | None = None,
    progress: bool = True,
) -> Manifest:
    """Export the checkpoint in `source` to a validated seqport artifact in `out`.

    Args:
        source: a model folder (config.json, weights, tokenizer.json).
        out: the artifact folder to write; created if needed.
        family: force the adapter instead of reading config.json's model_type.
        progress: show a progress bar on stderr.

    Returns:
        The manifest written to `out/seqport.json`.

    Raises:
        ArtifactError: missing source folder, config or tokenizer.
        ExportError: unsupported family, or torch.onnx could not export a component.
        ParityError: a component disagrees with PyTorch beyond tolerance.
    """
    source, out = Path(source), Path(out)
    adapter: EncoderDecoderAdapter = load_adapter(source, family)
    tokenizer = source / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise ArtifactError(f"{tokenizer} not found: the engine needs a tokenizers tokenizer.json")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # a failed export must not look valid
    spec = adapter.spec()
    steps = ["encoder", "decoder", "validate"]
    components: dict[str, Component] = {}
    with tqdm(steps, desc="export", unit="step", disable=not progress, leave=False) as bar:
        for step in bar:
            bar.set_postfix_str(step)
            if step == "encoder":
                components["encoder"] = _export_encoder(adapter, spec, out)
            elif step == "decoder":
                components["decoder"] = _export_decoder(adapter, spec, out)
            else:
                fixed = {
                    "num_kv_heads": spec.num_kv_heads,
                    "head_dim": spec.head_dim,
                    "vocab_size": spec.vocab_size,
                }
                validation = validate(adapter, out, components, fixed)
    shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        architecture=spec.architecture,
        family=spec.family,
        vocab_size=spec.vocab_size,
        max_positions=spec.max_positions,
        components=components,
        kv=KVGeometry(spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim),
        special_ids=SpecialIds(
            eos=list(spec.eos), pad=spec.pad, bos=spec.bos, decoder_start=spec.decoder_start, unk=spec.unk
        ),
        tokenizer=TokenizerSpec(file=TOKENIZER_FILE),
        provenance=_provenance(source),
        validation=validation,
        generation=dict(spec.generation),
    )
    manifest.save(out)
    return manifest


def _provenance(source: Path) -> Provenance:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return ""

    seqport = installed("seqport")
    return Provenance(
        source=str(source.resolve()),
        exporter=f"seqport {seqport}",
        torch=torch.__version__,
        onnx=onnx.__version__,
        onnxruntime=installed("onnxruntime") or installed("onnxruntime-gpu"),
        opset=OPSET,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
