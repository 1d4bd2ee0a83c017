"""Adapter for Marian (opus-mt) checkpoints, and their tokenizer as a tokenizer.json.

The network is BART's post-norm layout (bart.py) with sinusoidal positions at offset 0, no
layernorm_embedding, sqrt(d_model)-scaled embeddings and final_logits_bias. Generation starts
from the pad token, and pad must never be generated: the manifest's default bad_words_ids
holds [[pad]] as real opus-mt generation configs do.

Marian ships no tokenizer.json and transformers has no converter for it: MarianTokenizer runs
the source SentencePiece model and then looks each piece up in vocab.json, whose ids differ from
the SentencePiece ids. The tokenizer.json built here does the same in one Unigram model laid out
in vocab.json order, scored by the source model. SentencePiece emits a character it does not
know as its own surface string, which MarianTokenizer then looks up in vocab.json: single
target-only characters stay, at a score no known segmentation loses to. Longer target-only
pieces are stored with a leading space, which Metaspace-split input never holds, so encoding
never picks them; the decoder drops that space.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from seqport.engine.errors import ArtifactError, ExportError
from seqport.export.adapter import ModelSpec
from seqport.export.bart import BartAdapter
from seqport.export.hf_common import TOKENIZER_FILE, load_seq2seq, write_tokenizer

SOURCE_SPM, VOCAB = "source.spm", "vocab.json"
SPECIAL_TOKENS = ("</s>", "<unk>", "<pad>")
_HIDDEN = " "  # prefix of longer target-only pieces: unmatchable by encoding, removed by decoding
_UNKNOWN = -1e9  # score of single target-only characters: used only where SentencePiece has no piece


class MarianAdapter(BartAdapter):
    """BartAdapter with Marian's special ids, generation defaults and tokenizer."""

    def __init__(self, model, folder: Path) -> None:
        if not getattr(model.config, "share_encoder_decoder_embeddings", True):
            raise ExportError(
                "Marian models with separate source and target vocabularies "
                "(share_encoder_decoder_embeddings=false) are not supported yet; "
                "supported: shared-vocabulary opus-mt checkpoints"
            )
        super().__init__(model, folder, pre_norm=False)

    def spec(self) -> ModelSpec:
        spec = super().spec()
        generation = dict(spec.generation)
        if spec.pad is not None:
            bad = [list(words) for words in generation.get("bad_words_ids", [])]
            generation["bad_words_ids"] = bad if [spec.pad] in bad else bad + [[spec.pad]]
        start = spec.decoder_start if spec.decoder_start is not None else spec.pad
        return dataclasses.replace(spec, decoder_start=start, generation=generation)

    def write_tokenizer(self, out: Path) -> str:
        """tokenizer.json from the folder's own, or built from source.spm + vocab.json."""
        if (self.folder / TOKENIZER_FILE).is_file():
            return write_tokenizer(self.folder, out)
        marian_tokenizer(self.folder).save(str(out / TOKENIZER_FILE))
        return TOKENIZER_FILE


def marian_tokenizer(folder: Path):
    """Build the `tokenizers.Tokenizer` equivalent of MarianTokenizer's source side.

    Normalisation follows the SentencePiece model's own spec (precompiled charsmap, extra
    whitespace removal, dummy prefix); sources end with </s>; language codes (>>fra<<) are
    kept whole. Moses punctuation normalisation (applied by MarianTokenizer only when sacremoses
    is installed) is not reproduced.

    Raises:
        ArtifactError: source.spm or vocab.json is missing, or vocab.json has gaps in its ids.
        ExportError: vocab.json belongs to a separate-vocabulary model.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    proto = _source_model(folder)
    vocab = _vocab(folder)
    scores = {p.piece: p.score for p in proto.pieces if p.type == 1}  # NORMAL pieces only
    tokens = sorted(vocab, key=vocab.__getitem__)  # id order: tokens[i] has id i
    unk = vocab["<unk>"]
    codes = [t for t in tokens if t.startswith(">>") and t.endswith("<<")]
    scores.update({t: _UNKNOWN for t in tokens if len(t) == 1 and t not in scores})
    kept = set(scores) | set(SPECIAL_TOKENS) | set(codes)  # specials and codes: added tokens, split out first
    pieces = [(t if t in kept else _HIDDEN + t, scores.get(t, 0.0)) for t in tokens]
    tokenizer = Tokenizer(Unigram(pieces, unk_id=unk, byte_fallback=False))
    spec = proto.normalizer_spec
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    prepend = "always" if spec.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(_HIDDEN, ""),
            decoders.Metaspace(replacement="▁", prepend_scheme=prepend),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=1),  # MarianTokenizer strips the text it decodes
        ]
    )
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL_TOKENS if t in vocab])
    tokenizer.add_tokens([AddedToken(code, normalized=False) for code in codes])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return tokenizer


def _source_model(folder: Path):
    path = folder / SOURCE_SPM
    if not path.is_file():
        raise ArtifactError(f"{path} not found: a Marian folder needs source.spm and vocab.json (or a tokenizer.json)")
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ExportError("converting a Marian tokenizer needs: pip install sentencepiece protobuf") from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def _vocab(folder: Path) -> dict[str, int]:
    path = folder / VOCAB
    if not path.is_file():
        raise ArtifactError(f"{path} not found: a Marian folder needs source.spm and vocab.json (or a tokenizer.json)")
    if (folder / "target_vocab.json").is_file():
        raise ExportError(f"{folder} has a separate target vocabulary (target_vocab.json), which is not supported yet")
    vocab = json.loads(path.read_text(encoding="utf-8"))
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing or sorted(vocab.values()) != list(range(len(vocab))):
        raise ArtifactError(f"{path} must map tokens to ids 0..N-1 and hold {', '.join(SPECIAL_TOKENS)}")
    return vocab


def load(folder: Path) -> MarianAdapter:
    return MarianAdapter(load_seq2seq(folder, ("marian",)), folder)
