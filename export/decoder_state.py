"""An encoder-decoder step over declared state: recurrent cells, explicit positions.

An adapter whose ModelSpec declares `states` (StateSpec: a shape rule and an initial value per
state) carries, per layer, one tensor per declared state from step to step instead of the
self-attention (key, value) pair; an adapter whose decode_step takes `position_ids` gets each
new token's position (int64 (B, T)). Both export here, with graph names past_key_values.{i}.
decoder.{name} → present.{i}.decoder.{name} (the optimum names for "key" and "value"), after
the adapter's own steps were checked against the declared rules: a wrong rule is an
ExportError naming the state, never an onnxruntime error at the user's first step.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqport.engine.errors import ExportError
from seqport.engine.manifest import Component, StateSpec, TensorSpec, sha256_of
from seqport.engine.runtime import RuntimeOptions, open_runtime
from seqport.export.adapter import ModelSpec
from seqport.export.components import PT, B, K, P, S, T, flat_kv
from seqport.export.onnx_export import dynamic_axes, export_component

Layers = list[tuple[torch.Tensor, ...]]  # per layer, one tensor per state in declaration order


def state_rules(spec: ModelSpec) -> dict[str, StateSpec]:
    """The declared states, or the self-attention K/V an undeclared adapter carries."""
    if spec.states:
        return dict(spec.states)
    kv = StateSpec(["batch", spec.num_kv_heads, "steps", spec.head_dim])
    return {"key": kv, "value": kv}


def takes_positions(adapter) -> bool:
    return "position_ids" in inspect.signature(adapter.decode_step).parameters


def needs_state_path(adapter, spec: ModelSpec) -> bool:
    """Declared states or explicit positions export here; every other adapter as before (the
    built-in families' per-row positions and mask for continuous batching, `row_positions`,
    go through seq2seq_graphs.export_decoder)."""
    return bool(spec.states) or (takes_positions(adapter) and not getattr(adapter, "row_positions", False))


def positions(start: int, shape: tuple[int, ...]) -> torch.Tensor:
    """int64 (B, T): start + arange(T) in every row (the engine's seq2seq.step_positions)."""
    return (torch.arange(shape[1]) + start).expand(shape[0], -1).contiguous()


def decode(adapter, ids, mask, cross, past, start: int):
    """adapter.decode_step, given position_ids = start + arange(T) when it takes them (a
    `row_positions` adapter takes them with a mask, and defaults to rows in lockstep)."""
    if takes_positions(adapter) and not getattr(adapter, "row_positions", False):
        return adapter.decode_step(ids, mask, cross, past, position_ids=positions(start, tuple(ids.shape)))
    return adapter.decode_step(ids, mask, cross, past)


def state_values(prefix: str, layers: Layers, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Logical {prefix}_{name}.{i} → numpy, e.g. past_cell.0 (past_key.{i} for K/V)."""
    names = list(state_rules(spec))
    return {
        f"{prefix}_{n}.{i}": t.detach().cpu().numpy() for i, layer in enumerate(layers) for n, t in zip(names, layer)
    }


def position_feed(adapter, start: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {"position_ids": positions(start, shape).numpy()} if takes_positions(adapter) else {}


def _dims(rule: list[str | int], steps: str) -> list[str | int]:
    return [B if d == "batch" else steps if d == "steps" else d for d in rule]


def state_contract(
    dtype: str, rules: dict[str, StateSpec], with_positions: bool
) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """The decoder's contract, inputs in the order StateDecoderComponent takes them."""
    kv = [B, "num_kv_heads", S, "head_dim"]
    inputs = {
        "input_ids": TensorSpec("input_ids", "int64", [B, T]),
        "encoder_attention_mask": TensorSpec("encoder_attention_mask", "int64", [B, S]),
        "logits_positions": TensorSpec("logits_positions", "int64", [K]),
        "cross_key.{i}": TensorSpec("past_key_values.{i}.encoder.key", dtype, kv),
        "cross_value.{i}": TensorSpec("past_key_values.{i}.encoder.value", dtype, kv),
    }
    outputs = {"logits": TensorSpec("logits", "float32", [B, K, "vocab_size"])}
    for name, rule in rules.items():
        past, present = f"past_key_values.{{i}}.decoder.{name}", f"present.{{i}}.decoder.{name}"
        inputs[f"past_{name}.{{i}}"] = TensorSpec(past, rule.dtype, _dims(rule.shape, P))
        outputs[f"present_{name}.{{i}}"] = TensorSpec(present, rule.dtype, _dims(rule.shape, PT))
    if with_positions:
        inputs["position_ids"] = TensorSpec("position_ids", "int64", [B, T])
    return inputs, outputs


class StateDecoderComponent(nn.Module):
    """One decoder step over declared states; `states` holds every layer of the first state,
    then every layer of the next (the contract's "{i}" expansion order)."""

    def __init__(self, adapter, num_states: int) -> None:
        super().__init__()
        self.adapter, self.num_states = adapter, num_states
        if isinstance(getattr(adapter, "model", None), nn.Module):
            self.model = adapter.model  # registers the weights so export sees parameters

    def step(self, input_ids, encoder_attention_mask, logits_positions, cross_keys, cross_values, states, **extra):
        n = len(states) // self.num_states
        past = list(zip(*(states[k * n : (k + 1) * n] for k in range(self.num_states))))  # per layer
        cross = list(zip(cross_keys, cross_values))
        hidden, present = self.adapter.decode_step(input_ids, encoder_attention_mask, cross, past, **extra)
        logits = self.adapter.logits(hidden.index_select(1, logits_positions))  # (B, K, V)
        return (logits.float(), *(layer[k] for k in range(self.num_states) for layer in present))

    def forward(self, input_ids, encoder_attention_mask, logits_positions, cross_keys, cross_values, states):
        return self.step(input_ids, encoder_attention_mask, logits_positions, cross_keys, cross_values, states)


class PositionedStateDecoderComponent(StateDecoderComponent):
    """StateDecoderComponent that also takes position_ids int64 (B, T)."""

    def forward(self, input_ids, encoder_attention_mask, logits_positions, cross_keys, cross_values, states, positions):
        head = (input_ids, encoder_attention_mask, logits_positions)
        return self.step(*head, cross_keys, cross_values, states, position_ids=positions)


def check_layers(what: str, layers, rules: dict[str, StateSpec], num_layers: int, batch: int, steps: int) -> list[str]:
    """Problems of one step's per-layer states against the declared rules (batch rows, `steps` tokens)."""
    if len(layers) != num_layers:
        return [f"{what}: {len(layers)} layers, but ModelSpec.num_layers is {num_layers}"]
    problems = []
    for i, layer in enumerate(layers):
        if len(layer) != len(rules):
            problems.append(f"{what}: layer {i} has {len(layer)} tensors; expected one per state {list(rules)}")
            continue
        for (name, rule), tensor in zip(rules.items(), layer):
            expected = tuple(batch if d == "batch" else steps if d == "steps" else d for d in rule.shape)
            if tuple(tensor.shape) != expected:
                problems.append(
                    f"state {name!r} of layer {i}, {what}: shape {tuple(tensor.shape)}, but its rule {rule.shape} "
                    f"gives {expected} (batch={batch}, steps={steps})"
                )
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ExportError(
            "the decoder's state does not follow the declared shape rules:\n  - " + "\n  - ".join(problems)
            + "\nFix ModelSpec.states (shape: 'batch', 'steps' or a fixed size per axis) or decode_step/empty_past."
        )


def export_state_decoder(adapter, spec: ModelSpec, folder: Path, allocation: str, example) -> Component:
    """Check the adapter's steps against the state rules, export the decoder, check the graph too.

    Args:
        example: (ids, mask) int64 (2, S) example sources.

    Raises:
        ExportError: a preallocated cache, a state off its rule (in PyTorch or in the graph),
            or torch.onnx could not export the step.
    """
    if allocation != "growing":
        raise ExportError(f"declared states and position_ids export with kv_cache='growing', not {allocation!r}")
    rules, n = state_rules(spec), spec.num_layers
    ids, mask = example
    with torch.inference_mode():
        _, cross = adapter.encode(ids, mask)
        initial = adapter.empty_past(2)
        problems = check_layers("from empty_past(2)", initial, rules, n, 2, 0)
        if not problems and any(bool(t.any()) for layer in initial for t in layer):
            problems.append("empty_past(2) is not all zeros, but the engine starts every request from zeros")
        _raise(problems)
        prefix = torch.full((2, 4), 5 % spec.vocab_size, dtype=torch.long)
        _, past = decode(adapter, prefix, mask, cross, initial, 0)
        _raise(check_layers("after a first step of 4 tokens", past, rules, n, 2, 4))
        _, later = decode(adapter, prefix[:, :3], mask, cross, past, 4)
        _raise(check_layers("after 3 more", later, rules, n, 2, 7))
    with_positions = takes_positions(adapter)
    inputs, outputs = state_contract("float32", rules, with_positions)
    # clone: a tensor made under inference_mode cannot feed an embedding while torch.export traces
    cross = [t.clone() for t in flat_kv(cross)]
    states = [layer[k].clone() for k in range(len(rules)) for layer in past]
    args = (prefix[:, :3].clone(), mask.clone(), torch.tensor([1, 2]), cross[:n], cross[n:], states)
    dyn = tuple(dynamic_axes(inputs[name]) for name in ("input_ids", "encoder_attention_mask", "logits_positions"))
    dyn += ([dynamic_axes(inputs["cross_key.{i}"])] * n, [dynamic_axes(inputs["cross_value.{i}"])] * n)
    dyn += ([dynamic_axes(inputs[f"past_{name}.{{i}}"]) for name in rules for _ in range(n)],)
    component_cls = StateDecoderComponent
    if with_positions:
        args, dyn = (*args, positions(4, (2, 3))), (*dyn, dynamic_axes(inputs["position_ids"]))
        component_cls = PositionedStateDecoderComponent
    path = folder / "decoder.onnx"
    export_component(component_cls(adapter, len(rules)), args, dyn, inputs, outputs, n, path)
    _check_graph(path, inputs, rules, n, args)
    return Component(file=path.name, sha256=sha256_of(path), inputs=inputs, outputs=outputs)


def _check_graph(path: Path, inputs: dict[str, TensorSpec], rules: dict[str, StateSpec], n: int, args) -> None:
    """One onnxruntime step of the exported graph from the declared initial state (zeros, 3 rows)."""
    from seqport.engine.manifest import expand_layers

    batch, new = 3, 2
    session = open_runtime(path, RuntimeOptions())
    specs = expand_layers(inputs, n)
    src = args[1].shape[1]
    feeds = {}
    sizes = {B: batch, T: new, S: src, K: 1, P: 0, "num_kv_heads": args[3][0].shape[1], "head_dim": args[3][0].shape[3]}
    for spec in specs.values():
        shape = [sizes[d] if isinstance(d, str) else d for d in spec.shape]
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    feeds["encoder_attention_mask"][:] = 1
    outputs = session.run(feeds)
    layers = [tuple(outputs[f"present.{i}.decoder.{name}"] for name in rules) for i in range(n)]
    what = f"in {path.name} (onnxruntime, 3 rows, {new} tokens from the initial state)"
    _raise(check_layers(what, layers, rules, n, batch, new))
