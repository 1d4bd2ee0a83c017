"""`load()`: the one entry point from an artifact folder to a model object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from seqport.engine.causal_lm import CausalLMModel
from seqport.engine.encoder_only import EncoderModel
from seqport.engine.errors import ManifestError
from seqport.engine.huge_pages import anonymous_regions, collapse_new_regions, unavailable
from seqport.engine.manifest import artifact_file, component_path, load_manifest
from seqport.engine.manifest_checks import check_files
from seqport.engine.placement import open_placement
from seqport.engine.runtime import RuntimeOptions, open_runtime
from seqport.engine.seq2seq import Seq2SeqModel
from seqport.engine.shape_ranges import shape_ranges
from seqport.engine.tokenizer import TextTokenizer
from seqport.engine.weights import open_shared_weights, release_pages

_MODELS = {"encoder-decoder": Seq2SeqModel, "encoder-only": EncoderModel, "decoder-only": CausalLMModel}


def load(
    path: str | Path,
    provider: str | None = None,
    options: RuntimeOptions | None = None,
    verify: bool = True,
) -> Seq2SeqModel | EncoderModel | CausalLMModel:
    """Load an artifact folder written by `seqport export`.

    Args:
        path: the artifact folder (holds seqport.json).
        provider: execution provider: "cpu", "cuda", "tensorrt", ... (see `seqport info`);
            None uses `options.provider` ("cpu" by default).
        options: backend knobs (threads, graph optimization); a `provider` given here wins.
        verify: check the sha256 of each component and weights file against the manifest
            (catches corrupt files).

    Raises:
        ArtifactError: the folder, manifest, a component, a weights file or the tokenizer is
            missing, or a path in the manifest leads outside the folder.
        ManifestError: the manifest is invalid, of an unknown format version, or does not
            match its files (graph names, vocabulary).
        IntegrityError: a component or weights file does not match its sha256.
        ProviderError: the provider is not available in this installation.
        RuntimeFailure: onnxruntime cannot load a component.
    """
    folder = Path(path)
    manifest = load_manifest(folder)
    model_class = _MODELS.get(manifest.architecture)
    if model_class is None:
        raise ManifestError(
            f"this engine cannot run {manifest.architecture} artifacts yet; supported: {', '.join(_MODELS)}"
        )
    options = options or RuntimeOptions()
    if provider is not None:
        options = dataclasses.replace(options, provider=provider)
    paths = {name: component_path(folder, manifest, name, verify) for name in manifest.components}
    tokenizer_file = artifact_file(folder, manifest.tokenizer.file, "$.tokenizer.file")
    tokenizer = TextTokenizer(tokenizer_file, manifest.tokenizer.add_special_tokens)
    # the shapes the engine will feed: a compiling provider (TensorRT) builds its profiles from them
    ranges = {name: shape_ranges(manifest, name, options.trt_max_batch) for name in paths}
    shared = open_shared_weights(folder, manifest, verify)  # mapped once, used by each session
    # where the platform cannot collapse, not even the snapshot (a read of /proc/self/maps)
    before = anonymous_regions() if options.huge_pages and unavailable() is None else None
    built = {}
    # The decoder first: building it prepacks the tied projection, reading the shared table
    # whole; dropping those pages before the encoder loads keeps the two off each other's peak.
    for name in sorted(paths, key=lambda name: name != "decoder"):
        built[name] = open_runtime(paths[name], options.for_component(name), shared.get(name), ranges[name])
        release_pages(shared)  # keep only the pages later steps touch
    runtimes = {name: built[name] for name in paths}
    if before is not None:
        collapse_new_regions(before)  # the weights the sessions allocated, onto huge pages
    check_files(manifest, runtimes, tokenizer.vocab_size)  # graph names and vocabulary as the files have them
    model = model_class(folder, manifest, tokenizer, runtimes)
    if model_class is not EncoderModel:  # host numpy, or a device the backend keeps values on
        model.placement = open_placement(runtimes, options)
    return model
