"""The generation-level export check: real sentences, greedy decoding, next-token agreement.

Random ids miss what real tokens reach (a NaN in a rarely used embedding row, an overflow on a
long frequent-token run), and a logits tolerance alone does not say whether the artifact
*generates the same*. So each exported model also decodes a few English sentences, encoded by
its own tokenizer.json, greedily for STEPS tokens in PyTorch and in onnxruntime, each side on
its own cache (onnxruntime's cross K/V from its own encoder), and compares:

- the greedy ids: equal, or, at the first step where they differ, a near tie (PyTorch's
  logits of the two tokens within the logits tolerance: noise, not a fault) — else a failure;
- the top-k next-token sets at every prompt position and step (mean overlap, gated at
  MIN_TOP_K_AGREEMENT);
- the logits themselves, against the same tolerance as the validation cases.

Shapes: T prompt tokens, V vocabulary; batch 1 throughout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqport.engine.manifest import TextCheck
from seqport.export.decoder_state import decode, state_values
from seqport.export.validate import Case, _kv_values, bound, max_abs_diff, run_decoder

#: real English text, short enough for tiny models' position limits once tokenized.
SENTENCES = (
    "The capital of France is",
    "She opened the window because the room was too warm.",
    "def add(a, b):\n    return",
)
STEPS = 8
TOP_K = 5
#: mean share of PyTorch's top-k ids onnxruntime's top-k must hold (1 - 0.1 · tolerance scale).
MIN_TOP_K_AGREEMENT = 0.9


def encode_sentences(tokenizer: Path, vocab_size: int, max_tokens: int) -> list[tuple[str, list[int]]]:
    """Each sentence and its ids (special tokens added, as the engine does), cut to `max_tokens`.

    Ids the model cannot embed (a tokenizer larger than the model's vocabulary) are dropped.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    encoded = []
    for sentence in SENTENCES:
        ids = [i for i in tok.encode(sentence).ids if i < vocab_size][:max_tokens]
        if ids:
            encoded.append((sentence, ids))
    return encoded


class _Tally:
    """Top-k overlaps, greedy outcomes and the worst logit difference over all prompts."""

    def __init__(self, recorder) -> None:
        self.recorder = recorder
        self.overlaps: list[float] = []
        self.equal = self.ties = 0
        self.worst = 0.0

    def logits(self, label: str, ours: np.ndarray, ref: np.ndarray) -> None:
        """Compare float32 logits (K, V) of one prompt's positions."""
        diff = max_abs_diff(ours, ref)
        self.worst = max(self.worst, diff)
        self.recorder.check(f"text.logits [{label}]", diff, ref, "float32")
        for o, r in zip(ours, ref):
            top_o, top_r = np.argsort(-o)[:TOP_K], np.argsort(-r)[:TOP_K]
            self.overlaps.append(len(set(top_o) & set(top_r)) / len(top_r))

    def next_tokens(self, label: str, ours: np.ndarray, ref: np.ndarray) -> int | None:
        """The shared greedy token of the last position (V,), or None when the two part."""
        mine, theirs = int(np.argmax(ours)), int(np.argmax(ref))
        if mine == theirs:
            return theirs
        gap = float(ref[theirs] - ref[mine])
        tol = bound("float32", float(np.max(np.abs(ref))), self.recorder.scale)
        if gap <= tol:
            self.ties += 1
        else:
            self.recorder.failures.append(
                f"text.greedy [{label}]: onnxruntime picks id {mine}, PyTorch id {theirs}, whose logit is higher "
                f"by {gap:.3g} > tolerance {tol:.3g}"
            )
            self.recorder.needed = max(self.recorder.needed, self.recorder.scale * gap / tol)
        return None

    def result(self, prompts: list[str]) -> TextCheck:
        agreement = float(np.mean(self.overlaps)) if self.overlaps else 1.0
        floor = max(0.0, 1.0 - (1.0 - MIN_TOP_K_AGREEMENT) * self.recorder.scale)
        if agreement < floor:
            self.recorder.failures.append(f"text.top_{TOP_K}_agreement: {agreement:.3f} < {floor:.3f}")
            self.recorder.needed = max(self.recorder.needed, (1.0 - agreement) / (1.0 - MIN_TOP_K_AGREEMENT))
        return TextCheck(
            prompts=prompts,
            steps=STEPS,
            greedy_equal=self.equal,
            near_ties=self.ties,
            top_k=TOP_K,
            top_k_agreement=round(agreement, 6),
            max_abs_diff=self.worst,
        )


def _row_feeds(signature, step: int) -> dict[str, np.ndarray]:
    """The decoder's optional position inputs for one row at `step` (every slot attended)."""
    feeds = {}
    if "position_ids" in signature.inputs:  # (1, 1): the new token's position
        feeds["position_ids"] = np.array([[step]], dtype=np.int64)
    if "attention_mask" in signature.inputs:  # (1, P+T): per-row self-attention mask
        feeds["attention_mask"] = np.ones((1, step + 1), dtype=np.int64)
    return feeds


def _present_as_past(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name.replace("present_", "past_", 1): v for name, v in outputs.items() if name.startswith("present_")}


def real_text_check(tokenizer: Path | None, decoder_only: bool, attention: str = "portable") -> Callable | None:
    """The real-text check export/validate.py runs after its cases, or None without a tokenizer.

    A fused graph writes its preallocated buffers in place only when present is bound to past,
    as the engine binds them, so its check binds them too.
    """
    if tokenizer is None:
        return None
    if decoder_only:
        return DecoderOnlyTextCheck(tokenizer, attention == "fused")
    return functools.partial(_seq2seq_check, tokenizer)


def _seq2seq_check(tokenizer, adapter, signatures, runtimes, allocation, recorder) -> TextCheck:
    return check_seq2seq(adapter, tokenizer, signatures, runtimes, allocation, recorder)


@dataclass(frozen=True)
class DecoderOnlyTextCheck:
    """The decoder-only real-text check in two halves, so that PyTorch's weights can be let go
    before onnxruntime loads its own (export/validate.py validate_decoder_only): `reference`
    decodes greedily in PyTorch, `compare` replays those steps in onnxruntime on its own cache.
    onnxruntime follows PyTorch's ids, which are the shared ids as long as the two agree; at
    the first step where they part, the prompt ends (as a near tie or a failure)."""

    tokenizer: Path
    in_place: bool = False  # a fused graph writes its buffers in place: present bound to past

    def __call__(self, adapter, signature, runtime, allocation: str, recorder) -> TextCheck:
        return self.compare(self.reference(adapter), signature, runtime, allocation, recorder)

    @torch.inference_mode()
    def reference(self, adapter) -> list[tuple[str, list[dict[str, np.ndarray]]]]:
        """Per sentence: its STEPS steps in PyTorch, each the step's feeds and `ref` logits (K, V)."""
        spec = adapter.spec()
        prompts = encode_sentences(self.tokenizer, spec.vocab_size, max(1, spec.max_positions - STEPS))
        empty = _kv_values("past", adapter.empty_past(1))
        decoded = []
        for sentence, ids in prompts:
            tokens, past, steps = torch.tensor([ids]), adapter.empty_past(1), []  # tokens (1, T)
            for step in range(STEPS):
                length = len(ids) + step
                positions = torch.arange(length - tokens.shape[1], length)[None]  # (1, T)
                keep = torch.arange(tokens.shape[1]) if step == 0 else torch.tensor([0])  # prompt: every position
                mask = torch.ones(1, length, dtype=torch.long)
                hidden, past = adapter.decode_step(tokens, mask, positions, past)
                ref = adapter.logits(hidden.index_select(1, keep)).float().numpy()[0]
                steps.append({"input_ids": tokens.numpy(), "attention_mask": mask.numpy(), "position_ids":
                              positions.numpy(), "logits_positions": keep.numpy(), "ref": ref})  # fmt: skip
                tokens = torch.tensor([[int(np.argmax(ref[-1]))]])
            steps[0].update(empty)  # onnxruntime's first step starts from the empty cache
            decoded.append((sentence, steps))
        return decoded

    def compare(self, references, signature, runtime, allocation: str, recorder) -> TextCheck:
        """Replay `reference`'s steps in onnxruntime; failures go to `recorder` (export/validate.py)."""
        tally = _Tally(recorder)
        for n, (sentence, steps) in enumerate(references):
            label, ort_past = f"prompt {n} {sentence[:24]!r}", {}
            for step, record in enumerate(steps):
                values = {name: value for name, value in record.items() if name != "ref"} | ort_past
                new = values["input_ids"].shape[1]
                case = Case(1, values["attention_mask"].shape[1] - new, new, all_logits=step == 0)
                out = run_decoder(signature, runtime, values, case, allocation, recorder, in_place=self.in_place)
                ort_past = _present_as_past(out)
                tally.logits(f"{label} step {step}", out["logits"][0], record["ref"])
                if tally.next_tokens(f"{label} step {step}", out["logits"][0][-1], record["ref"][-1]) is None:
                    break
            else:
                tally.equal += 1
        return tally.result([sentence for sentence, _ in references])


def check_decoder_only(
    adapter, tokenizer: Path, signature, runtime, allocation: str, recorder, in_place: bool = False
) -> TextCheck:
    """Greedy STEPS tokens after each sentence, PyTorch (adapter) against the exported decoder.

    Failures go to `recorder` (export/validate.py), which raises them with the other figures.
    """
    return DecoderOnlyTextCheck(tokenizer, in_place)(adapter, signature, runtime, allocation, recorder)


@torch.inference_mode()
def check_seq2seq(adapter, tokenizer: Path, signatures: dict, runtimes: dict, allocation: str, recorder) -> TextCheck:
    """Encode each sentence, then greedy STEPS tokens from the decoder start, PyTorch against
    the exported encoder + decoder (onnxruntime's decoder reads onnxruntime's cross K/V)."""
    spec = adapter.spec()
    sources = encode_sentences(tokenizer, spec.vocab_size, spec.max_positions)
    tally = _Tally(recorder)
    for n, (sentence, ids) in enumerate(sources):
        label = f"source {n} {sentence[:24]!r}"
        src = torch.tensor([ids])  # (1, S)
        mask = torch.ones_like(src)
        _, cross = adapter.encode(src, mask)
        enc = signatures["encoder"]
        feeds = enc.feeds({"input_ids": src.numpy(), "attention_mask": mask.numpy()})
        ort_enc = enc.by_logical(runtimes["encoder"].run(feeds))
        ort_cross = {k: v for k, v in ort_enc.items() if k.startswith("cross_")}
        past = adapter.empty_past(1)  # the declared initial state (decoder_state.py), or empty K/V
        ort_past = state_values("past", past, spec)
        token = torch.tensor([[spec.decoder_start]])
        for step in range(STEPS):
            hidden, past = decode(adapter, token, mask, cross, past, step)
            ref = adapter.logits(hidden).float().numpy()[0]  # (1, V)
            values = {"input_ids": token.numpy(), "encoder_attention_mask": mask.numpy()}
            values.update(logits_positions=np.array([0]), **ort_cross, **ort_past)
            values.update(_row_feeds(signatures["decoder"], step))
            case = Case(1, step, 1)
            out = run_decoder(signatures["decoder"], runtimes["decoder"], values, case, allocation, recorder)
            ort_past = _present_as_past(out)
            tally.logits(f"{label} step {step}", out["logits"][0], ref)
            chosen = tally.next_tokens(f"{label} step {step}", out["logits"][0][-1], ref[-1])
            if chosen is None:
                break
            token = torch.tensor([[chosen]])
        else:
            tally.equal += 1
    return tally.result([sentence for sentence, _ in sources])
