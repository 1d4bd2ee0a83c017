"""The HuggingFace exporters state the transformers versions they support and check them up front."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from seqport.engine.errors import ExportError  # noqa: E402


@pytest.mark.parametrize("version", ["4.44.2", "4.56.1", "6.0.0", "nightly"])
def test_unsupported_transformers_is_one_line_naming_both_versions(tmp_path, monkeypatch, version):
    from test_hf_causal import _write_checkpoint

    from seqport.export.hf_common import SUPPORTED_TRANSFORMERS
    from seqport.export.pipeline import export_model

    folder = _write_checkpoint("gpt2", tmp_path / "ckpt")
    # the module now in sys.modules: transformers' lazy loading may have replaced the one imported above
    monkeypatch.setattr(sys.modules["transformers"], "__version__", version)
    with pytest.raises(ExportError) as failure:
        export_model(folder, tmp_path / "out", progress=False)
    message = str(failure.value)
    assert "\n" not in message
    assert f"transformers {version} is installed" in message and SUPPORTED_TRANSFORMERS in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("version", ["4.57.6", "5.0.0", "5.24.0.dev0"])
def test_supported_versions_pass_the_check(version):
    from seqport.export.hf_common import check_transformers_version

    check_transformers_version(version)


@pytest.mark.parametrize("weights, inverse", [(True, False), (True, True), (False, True)])
def test_gpt2_scaling_is_computed_as_transformers_does(weights, inverse):
    """transformers 4.57's GPT2Attention has no `scaling`: the adapter computes it from the config."""
    from seqport.export.gpt2 import attention_scaling

    config = transformers.GPT2Config(
        n_embd=24, n_head=3, n_layer=3, scale_attn_weights=weights, scale_attn_by_inverse_layer_idx=inverse
    )
    model = transformers.GPT2LMHeadModel(config)
    for i, block in enumerate(model.transformer.h):
        if hasattr(block.attn, "scaling"):  # transformers 5
            assert attention_scaling(config, i) == pytest.approx(block.attn.scaling)
        expected = (8**-0.5 if weights else 1.0) / ((i + 1) if inverse else 1)
        assert attention_scaling(config, i) == pytest.approx(expected)
