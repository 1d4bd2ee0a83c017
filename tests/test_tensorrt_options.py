"""The shape ranges the engine derives from the manifest (engine/shape_ranges.py), the TensorRT
provider options the onnxruntime backend builds from them (runtimes/tensorrt.py), and the error
a CPU-only installation gives for the tensorrt provider. No GPU needed."""

from __future__ import annotations

import pytest

import seqport.engine as sp
from seqport.engine.errors import ProviderError
from seqport.engine.manifest import load_manifest
from seqport.engine.runtime import RuntimeOptions
from seqport.engine.shape_ranges import ShapeRange, shape_ranges
from seqport.runtimes.tensorrt import profile_shapes, tensorrt_provider_options


def _profile(manifest, component: str, max_batch: int) -> dict[str, str]:
    return profile_shapes(shape_ranges(manifest, component, max_batch))


def tensorrt_options(manifest, component: str, options: RuntimeOptions) -> RuntimeOptions:
    ranges = shape_ranges(manifest, component, options.trt_max_batch)
    return RuntimeOptions(provider_options=tensorrt_provider_options(ranges, options))


def _shapes(text: str) -> dict[str, str]:
    return dict(item.split(":") for item in text.split(","))


def test_tensorrt_without_onnxruntime_gpu_says_what_to_install(tiny_artifact):
    with pytest.raises(ProviderError, match=r"seqport\[gpu\] \(onnxruntime-gpu\).*pip install tensorrt"):
        sp.load(tiny_artifact, provider="tensorrt")


def test_profile_covers_prefill_and_every_step(tiny_artifact):
    manifest = load_manifest(tiny_artifact)  # 3 layers, 3 kv heads, head_dim 8, 40 positions
    shapes = _profile(manifest, "decoder", max_batch=4)
    low, opt, high = (_shapes(shapes[f"trt_profile_{w}_shapes"]) for w in ("min", "opt", "max"))
    assert len(low) == 3 + 4 * 3  # ids, mask, logits_positions + past/cross key/value per layer
    assert low["past_key_values.2.decoder.key"] == "1x3x0x8"  # empty past at the first step
    assert high["past_key_values.2.decoder.key"] == "4x3x40x8"
    assert (low["input_ids"], opt["input_ids"], high["input_ids"]) == ("1x1", "4x1", "4x40")
    assert high["past_key_values.0.encoder.value"] == "4x3x40x8"
    assert _shapes(_profile(manifest, "encoder", 4)["trt_profile_max_shapes"]) == {
        "input_ids": "4x40",
        "attention_mask": "4x40",
    }


def test_engine_cache_fp16_and_user_options(tiny_artifact, tmp_path):
    manifest = load_manifest(tiny_artifact)
    options = RuntimeOptions(provider="tensorrt", engine_cache_dir=str(tmp_path), trt_fp16=True)
    filled = tensorrt_options(manifest, "decoder", options).provider_options
    assert filled["trt_engine_cache_enable"] == "True" and filled["trt_engine_cache_path"] == str(tmp_path)
    assert filled["trt_fp16_enable"] == "True" and "trt_profile_opt_shapes" in filled
    mine = RuntimeOptions(provider="tensorrt", provider_options={"trt_fp16_enable": "False"}, trt_fp16=True)
    assert tensorrt_options(manifest, "encoder", mine).provider_options["trt_fp16_enable"] == "False"
    assert "trt_engine_cache_path" not in tensorrt_options(manifest, "encoder", RuntimeOptions()).provider_options


def test_trt_max_batch_is_validated():
    with pytest.raises(ProviderError, match="trt_max_batch must be >= 1"):
        RuntimeOptions(trt_max_batch=0)


def test_profile_of_a_preallocated_decoder_covers_the_buffers(tiny_artifact):
    """cache_length (request-sized buffers) spans 1..max_positions+1; cache_position is per new token."""
    import dataclasses

    from seqport.engine.manifest import Component, TensorSpec

    manifest = load_manifest(tiny_artifact)
    decoder = manifest.components["decoder"]
    buffer = ["batch_size", "num_kv_heads", "cache_length", "head_dim"]
    inputs = {k: dataclasses.replace(v, shape=buffer) if "past_" in k else v for k, v in decoder.inputs.items()}
    inputs["cache_position"] = TensorSpec("cache_position", "int64", ["sequence_length"])
    manifest = dataclasses.replace(manifest, components={**manifest.components, "decoder": Component(
        decoder.file, decoder.sha256, inputs, decoder.outputs)})  # fmt: skip
    shapes = _profile(manifest, "decoder", max_batch=4)
    low, high = (_shapes(shapes[f"trt_profile_{w}_shapes"]) for w in ("min", "max"))
    assert (low["past_key_values.1.decoder.value"], high["past_key_values.1.decoder.value"]) == ("1x3x1x8", "4x3x41x8")
    assert (low["cache_position"], high["cache_position"]) == ("1", "40")


def test_shape_ranges_are_provider_neutral(tiny_artifact):
    """The engine hands (min, opt, max) per axis; the summed dim of a present is capped at max_positions."""
    manifest = load_manifest(tiny_artifact)
    ranges = shape_ranges(manifest, "decoder", max_batch=2)
    assert ranges["past_key_values.0.decoder.key"] == ShapeRange((1, 3, 0, 8), (2, 3, 20, 8), (2, 3, 40, 8))
    assert ranges["logits_positions"] == ShapeRange((1,), (1,), (40,))
    assert set(ranges) == {spec.name for spec in _expanded_inputs(manifest, "decoder")}


def test_an_unknown_dim_leaves_the_input_to_the_backend(tiny_artifact):
    import dataclasses

    from seqport.engine.manifest import TensorSpec

    manifest = load_manifest(tiny_artifact)
    encoder = manifest.components["encoder"]
    inputs = {**encoder.inputs, "extra": TensorSpec("extra", "int64", ["batch_size", "my_own_dim"])}
    encoder = dataclasses.replace(encoder, inputs=inputs)
    manifest = dataclasses.replace(manifest, components={**manifest.components, "encoder": encoder})
    assert set(shape_ranges(manifest, "encoder", 4)) == {"input_ids", "attention_mask"}


def _expanded_inputs(manifest, component: str):
    from seqport.engine.manifest import expand_layers

    return expand_layers(manifest.components[component].inputs, manifest.kv.num_layers).values()
