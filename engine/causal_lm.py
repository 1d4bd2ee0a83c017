"""A decoder-only artifact: one `decoder` graph for the prompt and every generated token."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqport.engine.causal_inputs import CausalInputs
from seqport.engine.causal_lane import CausalLane
from seqport.engine.chat import Message, read_chat_template, render_chat
from seqport.engine.config import GenerationConfig
from seqport.engine.decoder_step import DecoderStep, RunDecoder
from seqport.engine.device_array import Candidates, Chosen
from seqport.engine.generating_model import GeneratingModel
from seqport.engine.inputs import as_texts, is_token_input, pad_batch
from seqport.engine.kv_cache import KVCache
from seqport.engine.manifest import Manifest
from seqport.engine.placement import HOST, Placement, Selection
from seqport.engine.results import GenerationResult
from seqport.engine.runtime import Runtime
from seqport.engine.scoring import ScoreResult, target_logprobs
from seqport.engine.streaming import StepResult
from seqport.engine.tokenizer import TextTokenizer


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad → input_ids, attention_mask: int64 (B, T0); every row ends at the last column,
    so the next token of every row is appended at the same place."""
    width = max(len(ids) for ids in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, tokens in enumerate(batch):
        ids[row, width - len(tokens) :] = tokens
        mask[row, width - len(tokens) :] = 1
    return ids, mask


def positions(mask: np.ndarray) -> np.ndarray:
    """int64 (B, L) mask → (B, L) position ids: cumsum - 1, left pads clipped to 0.

    A padded row then numbers its tokens exactly as the same prompt alone does, the way
    transformers' generate derives them (not the arange that caused huggingface/optimum#877).
    """
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def step_mask(prompt_mask: np.ndarray, cache: KVCache, new: int) -> tuple[np.ndarray, np.ndarray]:
    """The step's attention mask and position ids (N, T) after the (N, T0) prompt mask.

    Generated tokens count as ones. The mask covers the P+T slots of a growing cache, or all
    C slots of preallocated buffers (slots not yet written are 0; the graph's causal limit
    hides them anyway).
    """
    rows, seen = prompt_mask.shape[0], cache.length + new
    mask = np.ones((rows, max(seen, cache.capacity if cache.is_preallocated else seen)), dtype=np.int64)
    mask[:, : prompt_mask.shape[1]] = prompt_mask
    mask[:, seen:] = 0
    return mask, positions(mask[:, :seen])[:, -new:]


class CausalLMModel(GeneratingModel):
    """Decoder-only generation (GPT-2, Llama, Mistral, Qwen2, ...): the prompt is the first step.

    Attributes:
        chat_template: the jinja chat template the artifact carries (None without one); assign
            a template string to chat with an artifact exported without it (docs/chat.md).
    """

    def __init__(
        self, folder: Path, manifest: Manifest, tokenizer: TextTokenizer, runtimes: dict[str, Runtime]
    ) -> None:
        super().__init__(folder, manifest, tokenizer, runtimes)
        self.chat_template = read_chat_template(folder, manifest.tokenizer.chat_template)

    def apply_chat_template(
        self, messages: Sequence[Message], *, chat_template: str | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        """A conversation → prompt ids, as transformers' apply_chat_template(tokenize=True).

        The template (the artifact's, or `chat_template`) is rendered with the manifest's
        special tokens, and the text is tokenized without adding special tokens again: the
        template writes them (engine/chat.py).

        Args:
            messages: [{"role": "system"|"user"|"assistant", "content": str}, ...], oldest first.
            chat_template: a jinja template string used instead of the artifact's.
            add_generation_prompt: end with the header that opens the assistant's turn.

        Returns:
            The prompt's token ids.

        Raises:
            ConfigError: no chat template (the artifact has none and none was passed), or one
                that is not valid jinja.
            InputError: malformed messages, or messages the template refuses.
        """
        template = chat_template if chat_template is not None else self.chat_template
        special = self.manifest.tokenizer.special_tokens
        return self.tokenizer.encode_plain(render_chat(template, messages, special, add_generation_prompt))

    def chat(
        self,
        messages: Sequence[Message],
        config: GenerationConfig | None = None,
        *,
        chat_template: str | None = None,
        **overrides: Any,
    ) -> GenerationResult:
        """The assistant's next turn: the conversation rendered (apply_chat_template), then generated.

        Args:
            messages, chat_template: as for `apply_chat_template()`.
            config, **overrides: decoding options, as for `generate()`.

        Returns:
            The generated reply (`text`, `ids` without the prompt, `finish_reason`).

        Raises:
            ConfigError, InputError: as for `apply_chat_template()` and `generate()`.
        """
        return self.generate([self.apply_chat_template(messages, chat_template=chat_template)], config, **overrides)[0]

    def stream_chat(
        self,
        messages: Sequence[Message],
        config: GenerationConfig | None = None,
        *,
        chat_template: str | None = None,
        **overrides: Any,
    ) -> Iterator[StepResult]:
        """`chat()` yielding text as tokens arrive (greedy or sampling, as `stream()`).

        Yields:
            One StepResult per generated token; the pieces join to `chat()`'s text.
        """
        prompt = self.apply_chat_template(messages, chat_template=chat_template)
        return self.stream([prompt], config, **overrides)

    def score(
        self,
        sources: str | Sequence[str] | Sequence[Sequence[int]],
        targets: str | Sequence[str] | Sequence[Sequence[int]],
        batch_size: int = 0,
    ) -> list[ScoreResult]:
        """Log-probabilities of continuations given prompts (teacher forcing, one decoder call).

        Text targets are encoded without special tokens: a continuation of the prompt, not a new
        sequence (Llama's post-processor would put <s> in front). Otherwise as
        GeneratingModel.score: one ScoreResult per (prompt, continuation) pair, in input order.

        Raises:
            InputError: different numbers of sources and targets, empty or over-long ones.
        """
        if not is_token_input(targets):
            targets = [self.tokenizer.encode_plain(text) for text in as_texts(targets)]
        return super().score(sources, targets, batch_size)

    def _prepare(self, batch: list[list[int]], config: GenerationConfig) -> tuple[np.ndarray, DecoderStep]:
        batch = [list(ids) + list(config.prefix_ids) for ids in batch]  # a forced prefix extends the prompt
        ids, mask = left_pad(batch, self._pad_id())
        return ids, _CausalStep(self.run_decoder, self.placement, self._selection(config), mask)

    def _score_batch(self, sources: list[list[int]], targets: list[list[int]]) -> list[ScoreResult]:
        """log p(target | prompt) in one decoder call: prompts left-padded, targets[:-1] right-padded
        after them, so column S-1+t predicts target[t] in every row."""
        pad = self._pad_id()
        prompt, prompt_mask = left_pad(sources, pad)  # (B, S)
        rest, rest_mask = pad_batch([ids[:-1] or [pad] for ids in targets], pad)  # (B, L-1), 1 column at least
        rest_mask[[len(ids) == 1 for ids in targets], 0] = 0  # one-token targets feed nothing after the prompt
        ids, mask = np.concatenate([prompt, rest], axis=1), np.concatenate([prompt_mask, rest_mask], axis=1)
        longest, start = max(map(len, targets)), prompt.shape[1] - 1
        host = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}
        host["logits_positions"] = np.arange(start, start + longest)
        feeds = {name: self.placement.upload(value, name) for name, value in host.items()}
        logits = self.run_decoder(feeds, self.new_cache(len(targets), ids.shape[1]))["logits"]
        return target_logprobs(self.placement.fetch(logits, "logits"), targets, offset=0)  # logits (B, L, V)

    def decoder_prompt(self, input_ids: Sequence[int], config: GenerationConfig) -> list[int]:
        return [*input_ids, *config.prefix_ids]  # a forced prefix extends the prompt

    @property
    def pad_id(self) -> int:
        """The id that left-pads shorter prompts: the pad id, else the first EOS id."""
        return self._pad_id()

    def _pad_id(self) -> int:
        ids = self.manifest.special_ids
        return ids.pad if ids.pad is not None else ids.eos[0]

    def _positions_needed(self, longest_input: int) -> int:
        return longest_input  # the prompt and the generated tokens share the positions

    def _lane(self, cache: KVCache, graph_greedy: bool) -> CausalLane | None:  # type: ignore[override]
        """The host's short step over preallocated buffers (engine/causal_lane.py), or None where
        the general step runs (a device, a growing cache, a decoder with other inputs)."""
        if self.placement is not HOST or type(cache) is not KVCache or not cache.is_preallocated:
            return None
        decoder, layers, vocab = self.signatures["decoder"], self.manifest.kv.num_layers, self.manifest.vocab_size
        return CausalLane.for_decoder(decoder, self.runtimes["decoder"], layers, vocab, graph_greedy)


class _CausalStep(DecoderStep):
    """Extends each row's prompt mask with ones for the tokens generated so far, derives
    position ids from it, and runs the decoder for the last position's logits."""

    def __init__(
        self, run_decoder: RunDecoder, placement: Placement, selection: Selection | None, prompt_mask: np.ndarray
    ) -> None:
        super().__init__(run_decoder, placement, selection)
        self._inputs = CausalInputs(prompt_mask, step_mask)  # prompt_mask: (B, T0) per input, host

    def __call__(self, tokens: np.ndarray, cache: KVCache, sources: np.ndarray) -> np.ndarray | Candidates | Chosen:
        lane = self.lane
        if lane is not None and lane.holds(sources, cache, self._inputs.mask, tokens.shape[1]):
            return lane.step(tokens, cache)
        mask, position_ids = self._inputs(sources, cache, tokens.shape[1])  # (N, P+T or C), (N, T)
        up = self._placement.upload
        values = {
            "input_ids": up(tokens, "input_ids"),
            "attention_mask": up(mask, "attention_mask"),
            "position_ids": up(position_ids, "position_ids"),
        }
        result = self._decode(values, cache)
        if lane is not None and tokens.shape[1] == 1 and mask is self._inputs.mask:  # checked: the lane takes over
            lane.adopt(sources, cache, mask, position_ids)
        return result
