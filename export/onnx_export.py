"""torch.onnx (dynamo) export of one component with the contract's dynamic axes."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from seqport.engine.errors import ExportError
from seqport.engine.manifest import TensorSpec, expand_layers

logger = logging.getLogger(__name__)
OPSET = 18


def graph_names(specs: dict[str, TensorSpec], num_layers: int) -> list[str]:
    return [spec.name for spec in expand_layers(specs, num_layers).values()]


def dynamic_axes(spec: TensorSpec) -> dict[int, str]:
    """Symbolic dims of one tensor by axis, for torch.onnx's dynamic_shapes."""
    return {
        axis: str(dim)
        for axis, dim in enumerate(spec.shape)
        if isinstance(dim, str) and dim not in ("d_model", "num_kv_heads", "head_dim", "vocab_size")
    }


def export_component(
    module: torch.nn.Module,
    args: tuple,
    dynamic_shapes: tuple,
    inputs: dict[str, TensorSpec],
    outputs: dict[str, TensorSpec],
    num_layers: int,
    path: Path,
    translations: dict | None = None,
) -> None:
    """Export `module(*args)` to `path`, its weights as external data in `<path>.data`.

    `translations`: torch.onnx's custom_translation_table, {torch op: onnxscript function}
    (the fused attention operators of export/attention.py).

    Raises:
        ExportError: torch.onnx could not export the module (with its first error line).
    """
    buffer = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")  # local to this block: exporter chatter, not ours
            program = torch.onnx.export(
                module.eval(),
                args,
                input_names=graph_names(inputs, num_layers),
                output_names=graph_names(outputs, num_layers),
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
                custom_translation_table=translations,
            )
    except Exception as exc:  # torch.export raises many types; keep the first line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx could not export {path.stem}: {first}") from exc
    logger.debug("torch.onnx output for %s:\n%s", path.name, buffer.getvalue())
    # weights streamed to <file>.data tensor by tensor: saving inline first builds the whole
    # protobuf in memory (twice the weights at peak); export/weights_layout.py lays them out last
    program.save(str(path), external_data=True)
    del program
    onnx.checker.check_model(str(path))


def inline_weights(path: Path) -> None:
    """Rewrite `path` with its external data (`<path>.data`) inline, as the post-processing steps
    (--optimize, --quantize, --dtype) expect; export/weights_layout.py externalizes them last."""
    data = path.with_name(path.name + ".data")
    if not data.is_file():
        return
    onnx.save_model(onnx.load(str(path)), str(path))
    data.unlink()
