"""The decode loop with the KV cache, encoder outputs and logits kept on the runtime's device.

Same loop (generation.decode_steps), other parts: the cache holds `DeviceArray`s and reorders
them with a device gather; the step binds step n's present K/V as step n+1's past; the
encoder's cross-attention K/V is computed on the device once per batch and re-gathered only
when the active rows change; a device selector turns logits into k candidates per row
(device_search.py says when full logits are fetched instead). Per step only the new token ids
go up and the candidates come down; a decoder-only model also uploads its int64 attention
mask and position ids.

Backends provide the device through the `Device` protocol (seqport.runtimes.ort_device for
onnxruntime), loaded lazily so this module imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from seqport.engine.causal_lm import left_pad, step_mask
from seqport.engine.config import GenerationConfig
from seqport.engine.device_array import Candidates, DeviceArray
from seqport.engine.device_search import Selection, make_device_search, plan_selection
from seqport.engine.errors import ProviderError
from seqport.engine.generation import StepFn
from seqport.engine.inputs import pad_batch
from seqport.engine.kv_cache import KVCache
from seqport.engine.runtime import Runtime, RuntimeOptions
from seqport.engine.search import Search
from seqport.engine.stopping import StopStrings

if TYPE_CHECKING:
    from seqport.engine.generative import GenerativeModel

#: providers (short and full names) on which the device loop is on unless options say otherwise.
_DEVICE_PROVIDERS = {"cuda", "tensorrt", "cudaexecutionprovider", "tensorrtexecutionprovider"}


class Device(Protocol):
    """What the device loop needs from a backend (seqport.runtimes.ort_device.OrtDevice)."""

    def upload(self, array: np.ndarray, label: str = "") -> DeviceArray: ...

    def fetch(self, value: DeviceArray, label: str = "") -> np.ndarray: ...

    def run(
        self,
        component: str,
        feeds: dict[str, DeviceArray],
        outputs: list[str],
        into: dict[str, DeviceArray] | None = None,
    ) -> dict[str, DeviceArray]: ...

    def zeros(self, shape: tuple[int, ...], dtype: str) -> DeviceArray: ...

    def take(self, values: list[DeviceArray], rows: np.ndarray) -> list[DeviceArray]: ...

    def select(self, logits: DeviceArray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def wants_device_loop(options: RuntimeOptions) -> bool:
    """options.device_loop if set, else on for the CUDA and TensorRT providers."""
    if options.device_loop is not None:
        return options.device_loop
    return options.backend == "onnxruntime" and options.provider.lower() in _DEVICE_PROVIDERS


def open_device(runtimes: dict[str, Runtime], options: RuntimeOptions) -> Device:
    """The device of loaded onnxruntime components.

    Raises:
        ProviderError: the backend has no device loop (only onnxruntime has one).
    """
    if options.backend != "onnxruntime":
        raise ProviderError(
            f"the device loop needs the onnxruntime backend, got backend={options.backend!r}; "
            "pass RuntimeOptions(device_loop=False) or backend='onnxruntime'"
        )
    module = importlib.import_module("seqport.runtimes.ort_device")
    return module.OrtDevice(runtimes)


class DeviceKVCache(KVCache):
    """KVCache of DeviceArrays: `take` gathers every layer's rows in one device call."""

    def __init__(
        self, keys: list[DeviceArray], values: list[DeviceArray], device: Device, filled: int | None = None
    ) -> None:
        super().__init__(keys, values, filled=filled)  # type: ignore[arg-type]
        self._device = device

    @classmethod
    def on_device(
        cls, device: Device, batch: int, num_layers: int, heads: int, head_dim: int, dtype: str
    ) -> DeviceKVCache:
        zero = device.upload(np.zeros((batch, heads, 0, head_dim), dtype=dtype), "empty cache")  # (B, H, 0, D)
        return cls([zero] * num_layers, [zero] * num_layers, device)

    @classmethod
    def preallocated_on_device(
        cls, device: Device, batch: int, num_layers: int, heads: int, head_dim: int, capacity: int, dtype: str
    ) -> DeviceKVCache:
        """Zero-filled (B, H_kv, capacity, D) buffers made on the device: nothing crosses the bus."""
        shape = (batch, heads, capacity, head_dim)
        keys = [device.zeros(shape, dtype) for _ in range(num_layers)]
        values = [device.zeros(shape, dtype) for _ in range(num_layers)]
        return cls(keys, values, device, filled=0)

    def take(self, rows: np.ndarray) -> None:
        taken = self._device.take(self.keys + self.values, rows)  # type: ignore[operator]
        self.keys, self.values = taken[: len(self.keys)], taken[len(self.keys) :]


def start_on_device(
    model: GenerativeModel, batch: list[list[int]], config: GenerationConfig, indices: Sequence[int]
) -> tuple[StepFn, Search, KVCache, np.ndarray]:
    """GenerativeModel._start for the device loop: step, search, empty cache, first tokens."""
    m, device = model.manifest, model.device
    eos = config.eos_token_ids or tuple(m.special_ids.eos)
    selection = plan_selection(config, eos, m.vocab_size)
    if m.architecture == "encoder-decoder":
        first_tokens, step = _seq2seq_step(model, device, batch, config, selection)
    else:
        first_tokens, step = _causal_step(model, device, batch, config, selection)
    stops = StopStrings(model.tokenizer.decode, config.stop) if config.stop else None
    search = make_device_search(config, first_tokens, eos, indices, stops)
    kv, rows = m.kv, len(search.row_sources())
    if kv.allocation == "preallocated":
        capacity = first_tokens.shape[1] + config.max_new_tokens
        geometry = (kv.num_layers, kv.num_kv_heads, kv.head_dim, capacity, kv.dtype)
        cache = DeviceKVCache.preallocated_on_device(device, rows, *geometry)
    else:
        cache = DeviceKVCache.on_device(device, rows, kv.num_layers, kv.num_kv_heads, kv.head_dim, kv.dtype)
    return step, search, cache, first_tokens


def _seq2seq_step(model, device: Device, batch, config, selection):
    ids, mask = pad_batch(batch, model.manifest.special_ids.pad or 0)
    encoder = model.signatures["encoder"]
    feeds = encoder.feeds({"input_ids": device.upload(ids, "input_ids"), "attention_mask": device.upload(mask, "mask")})
    wanted = [spec.name for logical, spec in encoder.outputs.items() if logical.startswith("cross_")]
    cross = encoder.by_logical(device.run("encoder", feeds, wanted))  # (B, H, S, D) each, on the device
    start = [model._start_id(), *config.prefix_ids]
    first = np.tile(np.array(start, dtype=np.int64), (len(batch), 1))  # (B, 1 + prefix)
    return first, _Seq2SeqDeviceStep(model, device, mask, cross, selection)


def _causal_step(model, device: Device, batch, config, selection):
    batch = [list(ids) + list(config.prefix_ids) for ids in batch]
    ids, mask = left_pad(batch, model._pad_id())
    return ids, _CausalDeviceStep(model, device, mask, selection)


class _DeviceStep:
    """Shared part of the step functions: run the decoder on device feeds, keep the present
    K/V in the cache, and turn the logits into candidates (or fetch them, see Selection)."""

    def __init__(self, model, device: Device, selection: Selection | None) -> None:
        self._model, self._device, self._selection = model, device, selection
        self._signature = model.signatures["decoder"]
        self._outputs = [spec.name for spec in self._signature.outputs.values()]
        self._positions: dict[int, DeviceArray] = {}

    def _logits_position(self, new: int) -> DeviceArray:
        if new not in self._positions:  # [T - 1]: uploaded once per distinct T
            self._positions[new] = self._device.upload(np.array([new - 1], dtype=np.int64), "logits_positions")
        return self._positions[new]

    def _run(self, feeds: dict[str, DeviceArray], cache: KVCache, new: int) -> np.ndarray | Candidates:
        values = cache.feeds(new)
        if "cache_position" in values:  # preallocated: the slots to write, T int64
            values["cache_position"] = self._device.upload(values["cache_position"], "cache_position")
        graph_feeds = self._signature.feeds({**feeds, **values})
        into = {self._signature.outputs[name].name: v for name, v in cache.outputs_into().items()}
        raw = self._device.run("decoder", graph_feeds, self._outputs, into)  # present written in place
        outputs = self._signature.by_logical(raw)
        cache.update(outputs, new)
        return self._select(outputs["logits"])  # logits (N, 1, V) stay on the device

    def _select(self, logits: DeviceArray) -> np.ndarray | Candidates:
        s = self._selection
        if s is None:  # the processors need the whole distribution
            return self._device.fetch(logits, "logits")[:, -1, :].astype(np.float32)  # (N, V)
        values, ids, lse = self._device.select(logits, s.k)  # (N, k), (N, k), (N,)
        values, lse = values.astype(np.float64), lse.astype(np.float64)
        if s.mode == "greedy":
            return Candidates(values, ids, lse)
        if s.mode == "beam":
            return Candidates(values - lse[:, None], ids)  # log-probabilities
        return Candidates(values, ids)


class _Seq2SeqDeviceStep(_DeviceStep):
    def __init__(self, model, device: Device, mask: np.ndarray, cross: dict[str, DeviceArray], selection) -> None:
        super().__init__(model, device, selection)
        self._all_mask, self._all_cross = mask, cross  # (B, S) host, cross K/V on the device
        self._sources = np.arange(mask.shape[0])
        self._mask, self._cross = device.upload(mask, "encoder_attention_mask"), cross

    def __call__(self, tokens: np.ndarray, cache: KVCache, sources: np.ndarray) -> np.ndarray | Candidates:
        if len(sources) != len(self._sources) or np.any(sources != self._sources):
            self._sources = sources  # rows left or beams regrouped: re-select encoder outputs once
            self._mask = self._device.upload(self._all_mask[sources], "encoder_attention_mask")
            names = list(self._all_cross)
            self._cross = dict(zip(names, self._device.take([self._all_cross[n] for n in names], sources)))
        feeds = {
            "input_ids": self._device.upload(tokens, "input_ids"),
            "encoder_attention_mask": self._mask,
            "logits_positions": self._logits_position(tokens.shape[1]),
            **self._cross,
        }
        return self._run(feeds, cache, tokens.shape[1])


class _CausalDeviceStep(_DeviceStep):
    def __init__(self, model, device: Device, prompt_mask: np.ndarray, selection) -> None:
        super().__init__(model, device, selection)
        self._prompt_mask = prompt_mask  # (B, T0) per input

    def __call__(self, tokens: np.ndarray, cache: KVCache, sources: np.ndarray) -> np.ndarray | Candidates:
        new = tokens.shape[1]
        mask, position_ids = step_mask(self._prompt_mask[sources], cache, new)  # (N, P+T or C), (N, T)
        feeds = {
            "input_ids": self._device.upload(tokens, "input_ids"),
            "attention_mask": self._device.upload(mask, "attention_mask"),
            "position_ids": self._device.upload(position_ids, "position_ids"),
            "logits_positions": self._logits_position(new),
        }
        return self._run(feeds, cache, new)
