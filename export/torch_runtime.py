"""PyTorch eager reference backend: the same components, run by the original module.

For a component file it reads the artifact's manifest, re-loads the original model from
provenance.source with the export's adapter, wraps it in the same component module the
exporter traced (EncoderComponent, DecoderComponent, ...), and maps graph-name feeds to that
module's arguments. So `load(path, options=RuntimeOptions(backend="torch"))` runs the engine's
loop and decoding code on PyTorch: a reference for parity and a baseline for `seqport bench`.

Registered as the `torch` backend in the `seqport.runtimes` entry-point group (pyproject.toml):
engine/runtime.py finds it by that name and imports it lazily, without naming the export side.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from seqport.engine.errors import ArtifactError, ProviderError
from seqport.engine.manifest import Manifest, TensorSpec, expand_layers, load_manifest
from seqport.engine.runtime import RuntimeOptions
from seqport.export.greedy_head import GREEDY_IDS, GREEDY_LOGPROBS

logger = logging.getLogger(__name__)
DEVICES = ("cpu", "cuda")


def checkpoint_folder(artifact: Path, manifest: Manifest, override: str | None) -> Path:
    """The folder the artifact was exported from.

    A relative provenance.source is tried against the working directory, then against the
    artifact folder and each of its parents (artifacts committed beside their checkpoint).

    Raises:
        ArtifactError: no such folder; the message says how to point at the checkpoint.
    """
    source = Path(override or manifest.provenance.source)
    candidates = [source] if source.is_absolute() else [source, *(p / source for p in [artifact, *artifact.parents])]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    raise ArtifactError(
        f"the torch backend re-loads the model from its checkpoint, but {str(source)!r} "
        f"(provenance.source of {artifact}) is not a checkpoint folder here. Pass "
        "RuntimeOptions(backend='torch', torch_checkpoint=FOLDER) with the folder it was exported from."
    )


@functools.lru_cache(maxsize=2)
def _adapter(folder: str, stamp: tuple, task: str | None):
    """One model per checkpoint (encoder and decoder share it); `stamp` reloads changed files."""
    from seqport.export.families import load_adapter

    return load_adapter(Path(folder), task=task) if task else load_adapter(Path(folder))


def _stamp(folder: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


def _wrapper_and_contract(manifest: Manifest, component: str, adapter):
    """The module the exporter traced for `component`, and its contract (ordered I/O)."""
    if manifest.architecture == "encoder-only":
        from seqport.export.encoder_only import EncoderOnlyComponent, encoder_only_contract

        return EncoderOnlyComponent(adapter), encoder_only_contract(adapter.spec())
    dtype, allocation = manifest.kv.dtype, manifest.kv.allocation
    preallocated = allocation == "preallocated"
    if manifest.architecture == "decoder-only" and component == "decoder":
        from seqport.export import causal

        wrapper = causal.PreallocatedCausalDecoderComponent if preallocated else causal.CausalDecoderComponent
        return wrapper(adapter), causal.causal_contract(dtype, allocation)
    from seqport.export import components as c

    if manifest.architecture != "encoder-decoder" or component not in ("encoder", "decoder"):
        raise ProviderError(
            f"the torch backend cannot run component {component!r} of a {manifest.architecture} artifact; "
            "it runs: encoder-decoder encoder/decoder, decoder-only decoder, encoder-only encoder"
        )
    if component == "encoder":
        return c.EncoderComponent(adapter), c.encoder_contract(dtype)
    wrapper = c.PreallocatedDecoderComponent if preallocated else c.DecoderComponent
    row_positions = "position_ids" in manifest.components[component].inputs
    if row_positions:
        wrapper = c.RowPositionedDecoderComponent
    return wrapper(adapter), c.decoder_contract(dtype, allocation, row_positions)


def _device(options: RuntimeOptions) -> torch.device:
    name = options.provider.lower()
    if name not in DEVICES:
        raise ProviderError(f"the torch backend runs on {', '.join(DEVICES)}; got provider {options.provider!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ProviderError(f"provider 'cuda' asked of torch {torch.__version__}, which sees no CUDA device")
    return torch.device(name)


def _set_threads(options: RuntimeOptions) -> None:
    if options.intra_op_threads:
        torch.set_num_threads(options.intra_op_threads)
    if options.inter_op_threads:
        try:
            torch.set_num_interop_threads(options.inter_op_threads)
        except RuntimeError as exc:  # allowed once per process, before any parallel work
            logger.warning("torch inter-op threads left unchanged: %s", exc)


class TorchSession:
    """One component run by its PyTorch module; implements the engine's `Runtime` protocol."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        folder = path.parent
        manifest = load_manifest(folder)
        names = [name for name, c in manifest.components.items() if c.file == path.name]
        if not names:
            raise ArtifactError(f"{path.name} is not a component of the artifact in {folder}")
        self.path, self.component = path, names[0]
        self._device = _device(options)
        _set_threads(options)
        checkpoint = checkpoint_folder(folder, manifest, options.torch_checkpoint)
        task = _task(manifest)
        adapter = _adapter(str(checkpoint), _stamp(checkpoint), task)
        _check_geometry(adapter.spec(), manifest, checkpoint)
        module, (inputs, outputs) = _wrapper_and_contract(manifest, self.component, adapter)
        self._module = module.to(self._device).eval()
        layers = manifest.kv.num_layers if manifest.kv else 0
        spec = manifest.components[self.component]
        self._args = _argument_plan(inputs, spec.inputs, layers)
        # the greedy head (export/greedy_head.py) is no part of the module: computed here from its logits
        head = [name for name in (GREEDY_IDS, GREEDY_LOGPROBS) if name in spec.outputs]
        traced = {name: value for name, value in spec.outputs.items() if name not in head}
        self._outputs = [s.name for s in _ordered(outputs, traced, layers)]
        self._logits_at = list(outputs).index("logits") if head else -1
        self._outputs += [spec.outputs[name].name for name in head]
        self._inputs = [s.name for s in _ordered(inputs, spec.inputs, layers)]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run the module; `into` is ignored (outputs are new arrays, which the protocol allows)."""
        with torch.inference_mode():
            args = [
                [self._tensor(feeds[name]) for name in names] if is_list else self._tensor(feeds[names[0]])
                for names, is_list in self._args
            ]
            values = self._module(*args)
            values = values if isinstance(values, tuple) else (values,)
            if self._logits_at >= 0:
                values = (*values, *_greedy_head(values[self._logits_at]))
        return {name: np.ascontiguousarray(v.detach().cpu().numpy()) for name, v in zip(self._outputs, values)}

    def _tensor(self, value: np.ndarray) -> torch.Tensor:
        if not value.flags.writeable:  # torch.from_numpy warns on read-only arrays
            value = value.copy()
        return torch.from_numpy(np.ascontiguousarray(value)).to(self._device)


def _greedy_head(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy head's outputs from logits (B, L, V): the last position's argmax (B,) int64 and
    its log-softmax (B,) float32, as export/greedy_head.py's nodes compute them."""
    last = logits[:, -1, :].float()  # (B, V)
    top, ids = last.max(dim=-1)
    return ids.to(torch.int64), top - torch.logsumexp(last, dim=-1)


def _task(manifest: Manifest) -> str | None:
    if manifest.architecture != "encoder-only":
        return None
    return "feature-extraction" if manifest.pooling is not None else "sequence-classification"


def _check_geometry(spec, manifest: Manifest, checkpoint: Path) -> None:
    """The checkpoint must be the model the artifact was exported from (same sizes)."""
    ours = {"vocab_size": manifest.vocab_size}
    if manifest.kv is not None:
        ours.update(num_layers=manifest.kv.num_layers, head_dim=manifest.kv.head_dim)
    wrong = [f"{k} {getattr(spec, k)} != {v}" for k, v in ours.items() if getattr(spec, k, v) != v]
    if wrong:
        raise ArtifactError(
            f"{checkpoint} is not the model this artifact was exported from ({'; '.join(wrong)}); "
            "pass the right folder as RuntimeOptions(torch_checkpoint=...)"
        )


def _ordered(contract: dict[str, TensorSpec], manifest: dict[str, TensorSpec], layers: int) -> list[TensorSpec]:
    """The manifest's specs in the contract's order (the order of the module's arguments/results).

    Raises:
        ArtifactError: the artifact's logical names differ from the checkpoint's contract.
    """
    if set(contract) != set(manifest):
        raise ArtifactError(
            f"the artifact's names {sorted(manifest)} differ from the exporter's contract {sorted(contract)}; "
            "re-export the model with this seqport"
        )
    ordered = {logical: manifest[logical] for logical in contract}
    return list(expand_layers(ordered, layers).values())


def _argument_plan(contract, manifest, layers: int) -> list[tuple[list[str], bool]]:
    """Per module argument: the graph names that feed it and whether it is a per-layer list."""
    _ordered(contract, manifest, layers)  # same names check
    plan = []
    for logical in contract:
        spec = manifest[logical]
        if "{i}" in logical:
            plan.append(([spec.name.replace("{i}", str(i)) for i in range(layers)], True))
        else:
            plan.append(([spec.name], False))
    return plan


def open_session(
    path: Path, options: RuntimeOptions, initializers: dict | None = None, shape_ranges: dict | None = None
) -> TorchSession:
    """Load one component (the `seqport.runtimes` entry point "torch").

    `initializers` (an ONNX graph's shared weights) do not apply: the reference model has its
    own; `shape_ranges` do not either: eager PyTorch compiles nothing ahead of the shapes.
    """
    return TorchSession(path, options)
