"""What every generating artifact shares: inputs → batches → search → decode loop → results.

A model kind (encoder-decoder in seq2seq.py, decoder-only in causal_lm.py) only says how a
batch starts: its first tokens and the step function the loop calls (`_prepare`). Where the
model runs (host numpy or a device) is the injected `placement` (engine/placement.py), which
`load()` picks; the same step code serves both.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from seqport.engine.config import GenerationConfig
from seqport.engine.decode_loop import StepFn, decode_steps, make_search
from seqport.engine.decoder_step import DecoderStep
from seqport.engine.device_search import make_device_search, plan_selection
from seqport.engine.errors import ConfigError, InputError
from seqport.engine.feeds import Signature, TrustedNames
from seqport.engine.host_lane import HostLane
from seqport.engine.inputs import as_id_lists, as_texts, check_ids, is_token_input, length_sorted_batches
from seqport.engine.kv_cache import KVCache
from seqport.engine.manifest import Manifest
from seqport.engine.memory_estimate import check_request
from seqport.engine.placement import HOST, Placement, Selection
from seqport.engine.results import GenerationResult
from seqport.engine.runtime import Runtime
from seqport.engine.scoring import ScoreResult, check_targets
from seqport.engine.search import Search
from seqport.engine.state_cache import StateCache
from seqport.engine.step_inputs import LockstepInputs
from seqport.engine.stopping import StopStrings, cut_at_stop
from seqport.engine.streaming import StepResult, TextStream
from seqport.engine.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


class GeneratingModel:
    """Base of the loaded generating models; built by `seqport.engine.load()`.

    Attributes:
        placement: where the model runs (engine/placement.py): the host unless `load()` chose
            a device (RuntimeOptions.device_loop).
    """

    _length_cap_logged = False  # the max_new_tokens cap was logged at warning level (once per model)

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        tokenizer: TextTokenizer,
        runtimes: dict[str, Runtime],
        placement: Placement = HOST,
    ) -> None:
        self.folder, self.manifest, self.tokenizer = folder, manifest, tokenizer
        self.runtimes = runtimes
        kv = manifest.kv
        fixed = {"num_kv_heads": kv.num_kv_heads, "head_dim": kv.head_dim, "vocab_size": manifest.vocab_size}
        self.signatures = {
            name: Signature(component, kv.num_layers, fixed)
            for name, component in manifest.components.items()
        }
        self.default_config = GenerationConfig.from_defaults(manifest.generation)
        self.placement = placement
        declared = manifest.components["decoder"].inputs if "decoder" in manifest.components else {}
        lockstep = ("position_ids", "attention_mask") if manifest.architecture == "encoder-decoder" else ()
        self._lockstep_names = tuple(name for name in lockstep if name in declared)  # _lockstep_rows makes them
        # position_ids / all-ones masks of lockstep rows: read-only views made once per shape, shared
        # by every request (engine/step_inputs.py); the buffers grow to the largest request
        self.lockstep = LockstepInputs(rows=1, capacity=64)
        self._trusted = TrustedNames()  # run_decoder's names it need not check again

    def generate(
        self,
        inputs: str | Sequence[str] | Sequence[Sequence[int]],
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Generate for a text, a list of texts, or a list of token-id lists.

        Args:
            inputs: text(s), or token ids (each list already holds its special tokens).
            config: decoding options; defaults come from the manifest.
            **overrides: GenerationConfig fields to change for this call.

        Returns:
            One result per input, in input order, with `text` filled.

        Raises:
            InputError: empty or over-long inputs, ids outside the vocabulary.
            ConfigError / TypeError: invalid or unknown options.
        """
        config = (config or self.default_config).replace(**overrides)
        results = self.generate_ids(self.input_ids(inputs), config)
        return [
            GenerationResult([replace(s, text=self._text(s.ids, s.finish_reason, config)) for s in r.sequences])
            for r in results
        ]

    def stream(
        self,
        inputs: str | Sequence[str] | Sequence[Sequence[int]],
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> Iterator[StepResult]:
        """Generate like `generate()` (greedy or sampling), yielding text as tokens arrive.

        Every piece is valid text (a character split over several byte-level tokens comes
        whole), and the pieces of one input join to its `generate()` text. Inputs of one batch
        advance together, so pieces of different inputs interleave: `index` says whose it is.

        Args:
            inputs, config, **overrides: as for `generate()`.

        Yields:
            One StepResult per generated token; the last one of each input has finish_reason.

        Raises:
            ConfigError: num_beams > 1 or num_return_sequences > 1 (use `generate()`).
            InputError: as for `generate()`.
        """
        config = (config or self.default_config).replace(**overrides)
        if config.num_beams > 1 or config.num_return_sequences > 1:
            raise ConfigError(
                "stream() yields one sequence per input as it is generated: it works with greedy search and "
                f"sampling, got num_beams={config.num_beams}, num_return_sequences={config.num_return_sequences} "
                "(the manifest's defaults unless given); pass num_beams=1, num_return_sequences=1, or call generate()"
            )
        batch, config = self._checked(self.input_ids(inputs), config)
        for indices in length_sorted_batches(batch, config.batch_size):
            texts = [TextStream(self.tokenizer.backend, config.stop) for _ in indices]
            with self._request([batch[i] for i in indices], config, indices) as (search, steps):
                for _ in steps:
                    for e in search.emitted:  # type: ignore[attr-defined]
                        piece = texts[e.source].step(e.token, e.finish_reason)
                        yield StepResult(indices[e.source], e.token, piece, e.logprob, e.finish_reason)

    def score(
        self,
        sources: str | Sequence[str] | Sequence[Sequence[int]],
        targets: str | Sequence[str] | Sequence[Sequence[int]],
        batch_size: int = 0,
    ) -> list[ScoreResult]:
        """Log-probabilities of given targets under the model (teacher forcing).

        Args:
            sources: input text(s) or token-id lists, as for `generate()`.
            targets: one target per source: text (encoded with the tokenizer's special tokens,
                so the EOS is scored too) or token ids (scored exactly as given).
            batch_size: pairs per decoder call; 0 = all at once.

        Returns:
            One ScoreResult per pair, in input order: per-token and total log-probability.

        Raises:
            InputError: different numbers of sources and targets, empty or over-long ones.
        """
        source_ids, target_ids = self.input_ids(sources), self.input_ids(targets)
        if len(source_ids) != len(target_ids):
            raise InputError(
                f"score() needs one target per source, got {len(source_ids)} sources and {len(target_ids)} targets"
            )
        m = self.manifest
        source_ids = check_ids(source_ids, m.vocab_size, m.max_positions, False)
        room = m.max_positions - self._positions_needed(max(map(len, source_ids)))
        target_ids = check_targets(target_ids, m.vocab_size, room)
        results: list[ScoreResult | None] = [None] * len(source_ids)
        for indices in length_sorted_batches(source_ids, batch_size):
            chunk = self._score_batch([source_ids[i] for i in indices], [target_ids[i] for i in indices])
            for index, result in zip(indices, chunk):
                results[index] = result
        return results  # type: ignore[return-value]

    def input_ids(self, inputs: str | Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token-id lists as given, or texts tokenized with the artifact's tokenizer."""
        if is_token_input(inputs):
            return as_id_lists(inputs)
        return self.tokenizer.encode(as_texts(inputs))

    def generate_ids(
        self, batch: Sequence[Sequence[int]], config: GenerationConfig
    ) -> list[GenerationResult]:
        """Token ids in, token ids out: the core the text API wraps.

        Input i of `batch` samples with the generator seeded by (config.seed + i, sample), so
        results do not depend on batch_size.
        """
        batch, config = self._checked(batch, config)
        results: list[GenerationResult | None] = [None] * len(batch)
        for indices in length_sorted_batches(batch, config.batch_size):
            with self._request([batch[i] for i in indices], config, indices) as (search, steps):
                for _ in steps:
                    pass
            chunk = search.finalize()
            for index, result in zip(indices, chunk):
                results[index] = result
        return results  # type: ignore[return-value]

    def check_inputs(
        self, batch: Sequence[Sequence[int]], config: GenerationConfig
    ) -> tuple[list[list[int]], GenerationConfig]:
        """Token-id inputs and options checked as `generate()` checks them (a server admitting
        requests one by one uses it).

        Returns:
            The ids (truncated where config.truncate asks) and the options, max_new_tokens
            capped to the positions left.

        Raises:
            InputError, ConfigError: as for `generate()`.
        """
        return self._checked(batch, config)

    def decoder_prompt(self, input_ids: Sequence[int], config: GenerationConfig) -> list[int]:
        """The first tokens the decoder takes for one checked input, as `generate()` feeds them:
        the prompt and the forced prefix (decoder-only), or the decoder start and the forced
        prefix (encoder-decoder)."""
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        """The id that pads shorter inputs of a batch (their mask hides it)."""
        return self.manifest.special_ids.pad or 0

    def _checked(
        self, batch: Sequence[Sequence[int]], config: GenerationConfig
    ) -> tuple[list[list[int]], GenerationConfig]:
        m = self.manifest
        batch = check_ids(batch, m.vocab_size, m.max_positions, config.truncate, keep_last=tuple(m.special_ids.eos))
        config.check_token_ids(m.vocab_size)
        check_request(m, config, batch)  # prefix room and the memory estimate, before any work
        return batch, self._fit_length(config, max(len(ids) for ids in batch))

    @contextmanager
    def _request(
        self, batch: list[list[int]], config: GenerationConfig, indices: Sequence[int]
    ) -> Iterator[tuple[Search, Iterator]]:
        """One batch's search and its decode steps; the step's and the cache's buffers are
        released when the caller finishes, fails or abandons it (whisper's cleanup_caching)."""
        step, search, cache, first_tokens = self._start(batch, config, indices)
        steps = decode_steps(step, search, cache, first_tokens)
        try:
            yield search, steps
        finally:
            steps.close()  # its finally releases the cache
            cache.release()  # the loop never started when the caller left before the first step
            release = getattr(step, "release", None)  # a DecoderStep; a test's plain function has none
            if release is not None:
                release()

    def _start(
        self, batch: list[list[int]], config: GenerationConfig, indices: Sequence[int]
    ) -> tuple[StepFn, Search, KVCache, np.ndarray]:
        """What the decode loop needs for one batch: step, search, empty cache, first tokens."""
        eos = config.eos_token_ids or tuple(self.manifest.special_ids.eos)
        selection = self._selection(config)
        first_tokens, step = self._prepare(batch, config)
        stops = StopStrings(self.tokenizer.decode, config.stop) if config.stop else None
        build = make_search if selection is None else make_device_search  # candidates or full logits
        search = build(config, first_tokens, eos, indices, stops)
        cache = self.new_cache(len(search.row_sources()), first_tokens.shape[1] + config.max_new_tokens)
        if isinstance(step, DecoderStep):  # a test's plain step function has no head or lane to use
            step.graph_greedy = self._graph_greedy(config, eos)
            step.lane = self._lane(cache, step.graph_greedy)
        return step, search, cache, first_tokens

    def _graph_greedy(self, config: GenerationConfig, eos: tuple[int, ...]) -> bool:
        """Whether the decoder's greedy head can choose for `config`: greedy search on the host with
        no processor but min_new_tokens (the search keeps the head's choice unless it is a forbidden
        EOS, and then reads the logits the step passes beside it: search.TokenSearch), and a
        decoder that has the head (export/greedy_head.py)."""
        outputs = self.manifest.components["decoder"].outputs
        if self.placement is not HOST or "greedy_ids" not in outputs or "greedy_logprobs" not in outputs:
            return False
        plain = config.replace(min_new_tokens=0)
        return plan_selection(plain, eos, self.manifest.vocab_size) == Selection("greedy", 1)

    def _lane(self, cache: KVCache, graph_greedy: bool) -> HostLane | None:
        """The host's short step (engine/host_lane.py) for lockstep encoder-decoder rows on a
        growing cache, or None where the general step runs."""
        if self.placement is not HOST or type(cache) is not KVCache or cache.is_preallocated:
            return None
        if self._lockstep_names != ("position_ids", "attention_mask"):
            return None
        decoder = self.signatures["decoder"]
        return HostLane(decoder, self.runtimes["decoder"], self.lockstep, self.manifest.kv.num_layers, graph_greedy)

    def _selection(self, config: GenerationConfig) -> Selection | None:
        """How the placement turns a step's logits into tokens for `config` (None: full logits)."""
        eos = config.eos_token_ids or tuple(self.manifest.special_ids.eos)
        return self.placement.plan(config, eos, self.manifest.vocab_size)

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        """An empty self-attention cache on the model's placement for `rows` rows of at most
        `capacity` tokens (the capacity sizes preallocated buffers; a growing cache ignores it)."""
        kv, where = self.manifest.kv, self.placement
        if self.manifest.states:  # declared decoder state (a recurrent cell...): its own initial value
            return StateCache.initial(rows, self.manifest.states, kv.num_layers, placement=where)  # type: ignore[return-value]
        if kv.allocation == "preallocated":
            geometry = (kv.num_layers, kv.num_kv_heads, kv.head_dim, capacity, kv.dtype)
            return KVCache.preallocated(rows, *geometry, placement=where)
        return KVCache.empty(rows, kv.num_layers, kv.num_kv_heads, kv.head_dim, kv.dtype, placement=where)

    def run_decoder(
        self,
        values: dict[str, np.ndarray],
        cache: KVCache | None = None,
        trusted: frozenset[str] = frozenset(),
        runner: Callable[[Callable[[], dict[str, np.ndarray]]], dict[str, np.ndarray]] | None = None,
    ) -> dict[str, np.ndarray]:
        """One decoder call: the one way to run a decoder step, used by the decode loop too.

        Args:
            values: logical feeds (input_ids, logits_positions, masks, cross K/V, ...) as the
                model's placement holds them (numpy on the host; a device uploads numpy).
            cache: the self-attention cache whose past feeds the call and which then holds the
                present K/V (written in place into preallocated buffers where the runtime
                can); None: `values` carry past_key/value.{i} themselves.
            trusted: names in `values` already checked at an earlier step of this request (the
                encoder's cross K/V); the cache's own feeds are trusted after the first step.
            runner: given the runtime call (no arguments), returns its outputs; the cache is
                updated from them afterwards, here. With a growing cache the call writes nothing
                else, so a runner may abandon it and call again (serving/step_priority.py).

        Returns:
            Logical outputs: logits (B, L, V) for the positions asked, present_key/value.{i}.

        Raises:
            InputError: a feed is missing, unknown, or of the wrong dtype, rank or size.
        """
        if self._lockstep_names:
            values = self._lockstep_rows(values, cache)
        if cache is None:
            return self.run("decoder", values)
        new = values["input_ids"].shape[1]
        signature = self.signatures["decoder"]
        into = {signature.outputs[name].name: array for name, array in cache.outputs_into().items()}
        own = cache.feeds(new)  # made from the decoder's own outputs: not re-checked every step
        skip = self._trusted.of(trusted, own) if cache.length else frozenset()
        feeds = signature.feeds({**values, **own}, trusted=skip)
        call = functools.partial(self.placement.run, "decoder", self.runtimes["decoder"], feeds, into)
        outputs = signature.by_logical(call() if runner is None else runner(call))
        cache.update(outputs, new)
        return outputs

    def _lockstep_rows(self, values: dict[str, np.ndarray], cache: KVCache | None) -> dict[str, np.ndarray]:
        """`values` plus, for an encoder-decoder decoder that takes the optional position_ids
        (N, T) and attention_mask (N, P+T) and was not given them, those of rows all at the same
        step: positions P..P+T-1, no masked slot (continuous batching gives its own). The decode
        loop's step passes both (engine/step_inputs.py), so this makes them only for direct calls."""
        missing = [name for name in self._lockstep_names if name not in values]
        if not missing:
            return values
        rows, new = values["input_ids"].shape
        past = cache.length if cache is not None else int(values["past_key.0"].shape[2])
        lockstep = self.lockstep
        made = {"position_ids": lockstep.positions(rows, past, new), "attention_mask": lockstep.mask(rows, past + new)}
        return {**values, **{name: self.placement.upload(made[name], name) for name in missing}}

    def _text(self, ids: list[int], finish_reason: str, config: GenerationConfig) -> str:
        text = self.tokenizer.decode(ids)
        return cut_at_stop(text, config.stop) if finish_reason == "stop" else text

    def run(self, component: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one component on logical feeds (checked first) on the model's placement; returns
        logical outputs (numpy on the host placement)."""
        signature = self.signatures[component]
        raw = self.placement.run(component, self.runtimes[component], signature.feeds(values))
        return signature.by_logical(raw)

    def _prepare(self, batch: list[list[int]], config: GenerationConfig) -> tuple[np.ndarray, StepFn]:
        """First tokens int64 (B, T0) and the step function for one batch (per model kind, a
        DecoderStep on the model's placement using `self._selection(config)`)."""
        raise NotImplementedError

    def _score_batch(self, sources: list[list[int]], targets: list[list[int]]) -> list[ScoreResult]:
        """Teacher-forcing log-probabilities of one batch of (source, target) pairs (per model kind)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement score() yet")

    def _positions_needed(self, longest_input: int) -> int:
        """Positions one generated token costs beyond the input; decoder-only models add the prompt."""
        return 0

    def _fit_length(self, config: GenerationConfig, longest_input: int) -> GenerationConfig:
        limit = self.manifest.max_positions - self._positions_needed(longest_input) - len(config.prefix_ids)
        if config.max_new_tokens > limit:
            level = logging.DEBUG if self._length_cap_logged else logging.WARNING  # a server caps many requests
            self._length_cap_logged = True
            message = "max_new_tokens %d capped to the model's %d positions (once per model; later caps: debug)"
            logger.log(level, message, config.max_new_tokens, limit)
            limit = max(limit, 1)
            return config.replace(max_new_tokens=limit, min_new_tokens=min(config.min_new_tokens, limit))
        return config
