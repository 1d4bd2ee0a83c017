"""HuggingFace encoder-decoder families (T5, T5 v1.1, mT5, BART, mBART, Marian): export a tiny
seeded random model of each, then run it through the engine and compare with transformers.

Each row builds a HF model folder from a config (odd sizes, widened init so outputs vary), a
tokenizer made here (tokenizer.json, or only the SentencePiece files that export converts) and a
generation_config.json, exports it once per session and checks greedy ids token for token and
per-step logits within 1e-4 against transformers' generate().
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny import SENTENCES  # noqa: E402

from seqport.engine.config import GenerationConfig  # noqa: E402
from seqport.engine.errors import ExportError  # noqa: E402
from seqport.engine.inputs import pad_batch  # noqa: E402

TEXTS = ["the cat sat on the mat and the dog ran in the park", "un chien", "where is the small red house"]
STEPS = 9  # new tokens per input in the parity runs
SEEDS = {"t5": 9, "t5-v1.1": 4, "mt5": 5, "bart": 1, "mbart": 1, "marian": 3}
PAD_BIAS = 0.4  # Marian: extra logit for pad, so that unblocked greedy search picks it now and then
OWNED = {"seqport.export.t5", "seqport.export.bart", "seqport.export.marian"}


# --- tokenizers made here -------------------------------------------------------------------


def _trained(model, trainer, template: str, specials: list[str]):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors

    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(SENTENCES * 5, trainer)
    tok.add_special_tokens([s for s in specials if tok.token_to_id(s) is None])
    pairs = [(s, tok.token_to_id(s)) for s in specials if s in template]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=pairs)
    return tok


def t5_tokenizer(folder: Path) -> None:
    """A Unigram tokenizer with a vocabulary fixed here, not trained: tokenizers' UnigramTrainer
    gives another vocabulary on every run, so the texts became other ids each run and the checks
    that the rows exercise something passed or failed by chance (issue #17). <pad>=0 </s>=1
    <unk>=2, then every word of SENTENCES (whole, likelier) and every character (a fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = sorted({f"▁{word}" for text in SENTENCES for word in text.split()})
    chars = sorted({c for text in SENTENCES for c in text.replace(" ", "")} | {"▁"})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(w, -2.0) for w in words] + [(c, -6.0) for c in chars if c not in words]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))


def bart_tokenizer(folder: Path, languages: tuple[str, ...] = ()) -> None:
    from tokenizers import models, trainers

    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    template = f"{languages[0]} $A </s>" if languages else "<s> $A </s>"
    tok = _trained(models.BPE(unk_token="<unk>"), trainer, template, ["<s>", "</s>", *languages])
    tok.save(str(folder / "tokenizer.json"))


def spm_model(texts: list[str], vocab_size: int, **ids) -> bytes:
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 5), model_writer=buffer, vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, character_coverage=1.0, **ids,
    )  # fmt: skip
    return buffer.getvalue()


def mt5_tokenizer(folder: Path) -> None:
    """Only spiece.model: export converts it to tokenizer.json with transformers' converter."""
    (folder / "spiece.model").write_bytes(spm_model(SENTENCES, 80, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))


def marian_tokenizer_files(folder: Path) -> int:
    """source.spm, target.spm (other texts) and a shared vocab.json in Marian order; returns its size."""
    import sentencepiece as spm

    source, target = spm_model(SENTENCES[::2], 60), spm_model(SENTENCES[1::2], 60)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    pieces = ["</s>", "<unk>", ">>fra<<"]
    for blob in (source, target):
        proc = spm.SentencePieceProcessor(model_proto=blob)
        new = [proc.id_to_piece(i) for i in range(proc.get_piece_size()) if not proc.is_control(i)]
        pieces += [p for p in new if p not in pieces and not proc.is_unknown(proc.piece_to_id(p))]
    vocab = {piece: i for i, piece in enumerate(pieces + ["<pad>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    return len(vocab)


# --- tiny models ----------------------------------------------------------------------------


def _widen(
    model, seed: int, skip: tuple[str, ...] = (), embed_std: float = 0.05, bias_std: float = 0.05, gain: float = 1.0
) -> None:
    """std 1/sqrt(fan_in) weights, a small tied embedding, norms and biases away from 1 and 0.

    Random models with default init repeat one token; these choices keep rows apart (found by
    sweeping), and the tests compare logits anyway.
    """
    gen = torch.Generator().manual_seed(seed)

    def noise(shape, std: float, mean: float = 0.0):
        return torch.randn(shape, generator=gen) * std + mean

    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(s in name for s in skip):
                continue
            if "shared" in name or "embed_tokens" in name:
                param.copy_(noise(param.shape, embed_std))
            elif param.dim() == 2:
                param.copy_(noise(param.shape, gain * param.shape[1] ** -0.5))
            else:
                param.copy_(
                    noise(param.shape, 0.2, 1.0) if "norm" in name and "weight" in name else noise(param.shape, 0.05)
                )
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(noise(model.final_logits_bias.shape, bias_std))


def _save(model, folder: Path, generation: dict | None = None) -> None:
    model.save_pretrained(str(folder))
    if generation:
        transformers.GenerationConfig(**generation).save_pretrained(str(folder))


def build_t5(folder: Path, seed: int, gated: bool = False, model_type: str = "t5") -> None:
    cls = transformers.MT5Config if model_type == "mt5" else transformers.T5Config
    extra = {"feed_forward_proj": "gated-gelu"} if gated else {}
    if model_type == "t5" and gated:
        extra["tie_word_embeddings"] = False  # v1.1: untied lm_head, no output rescaling
    config = cls(
        vocab_size=131, d_model=24, d_kv=10, num_heads=3, d_ff=37, num_layers=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        dropout_rate=0.0, decoder_start_token_id=0, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    if gated and model_type == "t5":
        model.lm_head.weight = torch.nn.Parameter(torch.zeros(131, 24))  # its own table, saved apart
    _widen(model, seed)
    _save(model, folder)
    (mt5_tokenizer if model_type == "mt5" else t5_tokenizer)(folder)


def build_bart(folder: Path, seed: int, mbart: bool = False) -> None:
    languages = ("en_XX", "ro_RO") if mbart else ()
    bart_tokenizer(folder, languages)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    cls = transformers.MBartConfig if mbart else transformers.BartConfig
    config = cls(
        vocab_size=len(vocab) + len(languages) + 5, d_model=28, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=36, decoder_ffn_dim=44,
        max_position_embeddings=40, dropout=0.0, scale_embedding=mbart, activation_function="gelu",
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    _widen(model, seed, embed_std=0.01, bias_std=0.002)  # tied copy loops otherwise
    generation = {"decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "bos_token_id": 0}
    if mbart:
        target = json.loads((folder / "tokenizer.json").read_text())["added_tokens"][-1]
        assert target["content"] == "ro_RO"
        generation["forced_bos_token_id"] = target["id"]
    _save(model, folder, generation)


def build_marian(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = marian_tokenizer_files(folder)
    pad = size - 1
    config = transformers.MarianConfig(
        vocab_size=size, decoder_vocab_size=size, d_model=26, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=34, decoder_ffn_dim=30,
        max_position_embeddings=48, dropout=0.0, scale_embedding=True, activation_function="swish",
        pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
    )  # fmt: skip
    model = transformers.MarianMTModel(config)
    _widen(model, seed, skip=("embed_positions",), embed_std=0.2, bias_std=0.04, gain=3.0)  # sinusoids: rebuilt on load
    with torch.no_grad():
        model.final_logits_bias[0, pad] += PAD_BIAS  # pad tempting, so never generating it means something
    generation = {"decoder_start_token_id": pad, "eos_token_id": 0, "pad_token_id": pad, "forced_eos_token_id": 0}
    _save(model, folder, {**generation, "bad_words_ids": [[pad]], "num_beams": 4, "max_length": 40})


# --- the parity table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One exported family variant: config.json model_type, folder builder and its seed (seeds
    picked so that the three rows generate different, non-trivial sequences)."""

    name: str
    model_type: str
    build: Callable[[Path, int], None]
    seed: int
    generation: Callable[[dict], dict] = lambda ids: {}  # expected manifest defaults, by special ids


MBART_DEFAULTS = lambda ids: {"forced_bos_token_id": ids["ro"]}  # noqa: E731
MARIAN_DEFAULTS = lambda ids: {  # noqa: E731
    "bad_words_ids": [[ids["pad"]]],
    "num_beams": 4,
    "max_new_tokens": 39,
    "forced_eos_token_id": 0,
}
ROWS = (
    Row("t5", "t5", build_t5, SEEDS["t5"]),
    Row("t5-v1.1", "t5", partial(build_t5, gated=True), SEEDS["t5-v1.1"]),
    Row("mt5", "mt5", partial(build_t5, gated=True, model_type="mt5"), SEEDS["mt5"]),
    Row("bart", "bart", build_bart, SEEDS["bart"]),
    Row("mbart", "mbart", partial(build_bart, mbart=True), SEEDS["mbart"], MBART_DEFAULTS),
    Row("marian", "marian", build_marian, SEEDS["marian"], MARIAN_DEFAULTS),
)
NAMES = [row.name for row in ROWS]


@dataclass(frozen=True)
class Exported:
    hf: Path
    manifest: object
    engine: object  # seqport Seq2SeqModel
    model: object  # transformers model, as export loaded it


def exporter(tmp_path_factory) -> Callable[[str], Exported]:
    """Build and export each row once per session, on first use (conftest's `exported` fixture)."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            (root / "hf").mkdir()
            row = next(row for row in ROWS if row.name == name)
            row.build(root / "hf", row.seed)
            manifest = export_model(root / "hf", root / "artifact", progress=False)
            model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(root / "hf")).eval()
            cache[name] = Exported(root / "hf", manifest, sp.load(root / "artifact"), model)
        return cache[name]

    return get


def hf_generate(model, ids: np.ndarray, mask: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers greedy search: sequences int64 (B, 1+N) starting with the decoder start, raw
    logits and processed scores float32 (B, N, V). Processors the checkpoint sets are off unless
    passed here."""
    settings = dict(num_beams=1, do_sample=False, max_new_tokens=STEPS, min_new_tokens=0, forced_bos_token_id=None)
    settings.update(forced_eos_token_id=None, bad_words_ids=None)
    settings.update(options)
    with torch.no_grad():
        out = model.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask),
            output_logits=True, output_scores=True, return_dict_in_generate=True, **settings,
        )  # fmt: skip
    logits, scores = (torch.stack(steps, dim=1).float().numpy() for steps in (out.logits, out.scores))
    return out.sequences.numpy(), logits, scores


def engine_logits(engine, ids: np.ndarray, mask: np.ndarray, sequences: np.ndarray) -> np.ndarray:
    """Teacher-force `sequences` through the exported decoder one token at a time with its own
    cache, as generation does: float32 (B, N, V), step t scoring the token after sequences[:, t]."""
    kv = engine.manifest.kv
    cross = {k: v for k, v in engine.encode(ids, mask).items() if k.startswith("cross_")}
    empty = np.zeros((len(ids), kv.num_kv_heads, 0, kv.head_dim), dtype=np.float32)
    past = {f"past_{kind}.{i}": empty for kind in ("key", "value") for i in range(kv.num_layers)}
    steps = []
    for t in range(sequences.shape[1] - 1):
        feeds = {"input_ids": sequences[:, t : t + 1], "encoder_attention_mask": mask}
        out = engine.run_decoder({**feeds, "logits_positions": np.array([0]), **cross, **past})
        past = {name.replace("present", "past"): value for name, value in out.items() if name.startswith("present_")}
        steps.append(out["logits"][:, 0])
    return np.stack(steps, axis=1)


def until_eos(ids, eos: list[int]) -> list[int]:
    ids = [int(i) for i in ids]
    ends = [k for k, i in enumerate(ids) if i in eos]
    return ids[: ends[0] + 1] if ends else ids


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def check_same_generation(exp: Exported, results, sequences, scores) -> None:
    """Engine results equal transformers' sequences token for token; log-probs (of the processed
    distribution, forced or banned tokens included) within 1e-4 of transformers' scores."""
    eos = exp.manifest.special_ids.eos
    assert (sequences[:, 0] == exp.manifest.special_ids.decoder_start).all()  # HF keeps the start token
    for row, result in enumerate(results):
        generated = result.ids + ([eos[0]] if result.finish_reason == "eos" else [])
        assert generated == until_eos(sequences[row, 1:], eos), f"row {row} differs"
        expected = log_softmax(scores[row, : len(result.ids)])[np.arange(len(result.ids)), result.ids]
        np.testing.assert_allclose(result.token_logprobs, expected, atol=1e-4, rtol=0)


# --- tests ----------------------------------------------------------------------------------


def test_every_owned_family_has_a_parity_row():
    from seqport.export.families import FAMILIES

    owned = {model_type for model_type, module in FAMILIES.items() if module in OWNED}
    assert owned, "the T5/BART/Marian families are not registered"
    missing = owned - {row.model_type for row in ROWS}
    assert not missing, f"registered encoder-decoder families without a parity row: {sorted(missing)}"


def test_t5_tokenizer_is_the_same_on_every_run(tmp_path):
    """The t5 rows' "rows differ" checks mean something only if TEXTS become the same ids each run."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        t5_tokenizer(tmp_path / name)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "a" / "tokenizer.json"))
    assert [e.ids for e in tok.encode_batch(TEXTS)] == [
        [39, 5, 35, 26, 39, 23, 3, 60, 50, 39, 11, 32, 18, 39, 30, 1], [42, 7, 1], [44, 19, 39, 36, 33, 17, 1]
    ]


@pytest.mark.parametrize("name", NAMES)
def test_greedy_and_logits_match_transformers(exported, name):
    """A batch of 3 inputs of different lengths: ids token for token, per-step logits ≤ 1e-4."""
    exp = exported(name)
    batch = exp.engine.input_ids(TEXTS)
    assert len({len(ids) for ids in batch}) == 3
    ids, mask = pad_batch(batch, exp.manifest.special_ids.pad)
    sequences, logits, scores = hf_generate(exp.model, ids, mask)
    np.testing.assert_array_equal(scores, logits)  # no processor is on
    results = exp.engine.generate_ids(batch, GenerationConfig(max_new_tokens=STEPS))
    check_same_generation(exp, results, sequences, scores)
    assert len({tuple(r.ids) for r in results}) == 3, "rows should differ for the test to mean much"
    assert len({i for r in results for i in r.ids}) > 3, "a model repeating one token tests little"
    np.testing.assert_allclose(engine_logits(exp.engine, ids, mask, sequences), logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("row", ROWS, ids=NAMES)
def test_manifest_holds_canonical_ids_and_defaults(exported, row):
    exp = exported(row.name)
    m, gen = exp.manifest, exp.model.generation_config
    assert (m.family, m.architecture) == (row.model_type, "encoder-decoder")
    assert m.special_ids.eos == [gen.eos_token_id] and m.special_ids.pad == gen.pad_token_id
    assert m.special_ids.decoder_start == gen.decoder_start_token_id
    cfg = exp.model.config
    assert m.kv.num_layers == (cfg.num_decoder_layers if "t5" in row.model_type else cfg.decoder_layers)
    ids = {"pad": m.special_ids.pad, "ro": exp.engine.tokenizer.token_to_id("ro_RO")}
    assert m.generation == row.generation(ids)
    GenerationConfig.from_defaults(m.generation)  # every default is a valid seqport option
    assert max(max(v.values()) for v in m.validation.max_abs_diff.values()) <= 1e-4


def test_mbart_forces_the_target_language_first(exported):
    exp = exported("mbart")
    language = exp.manifest.generation["forced_bos_token_id"]
    batch = exp.engine.input_ids(TEXTS)
    ids, mask = pad_batch(batch, exp.manifest.special_ids.pad)
    sequences, logits, scores = hf_generate(exp.model, ids, mask, forced_bos_token_id=language)
    assert (sequences[:, 1] == language).all()
    assert not (logits[:, 0].argmax(-1) == language).all(), "the model would pick it unforced"
    results = exp.engine.generate_ids(batch, exp.engine.default_config.replace(max_new_tokens=STEPS))
    assert all(r.ids[0] == language for r in results)
    check_same_generation(exp, results, sequences, scores)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_marian_forces_eos_at_the_length_limit_as_transformers(exported, num_beams):
    """Marian's forced_eos_token_id: the max_new_tokens-th token is EOS, in transformers and in the engine."""
    exp = exported("marian")
    forced = exp.manifest.generation["forced_eos_token_id"]
    sources = exp.engine.input_ids(TEXTS)
    ids, mask = pad_batch(sources, exp.manifest.special_ids.pad)
    steps = 4
    options = dict(num_beams=num_beams, max_new_tokens=steps, do_sample=False, bad_words_ids=None)
    with torch.no_grad():
        inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        hf = exp.model.generate(**inputs, forced_eos_token_id=forced, **options)
        free = exp.model.generate(**inputs, forced_eos_token_id=None, **options)
    assert (free[:, -1] != forced).any(), "the model would end with EOS unforced: the test would mean little"
    config = GenerationConfig.from_defaults(exp.manifest.generation).replace(
        num_beams=num_beams, max_new_tokens=steps, bad_words_ids=()
    )
    results = exp.engine.generate_ids(sources, config)
    eos = exp.manifest.special_ids.eos
    for row, result in enumerate(results):
        generated = result.ids + ([eos[0]] if result.finish_reason == "eos" else [])
        assert generated == until_eos(hf[row, 1:].tolist(), eos)
        assert generated[-1] == forced


def test_marian_never_generates_pad(exported):
    exp = exported("marian")
    pad, eos = exp.manifest.special_ids.pad, exp.manifest.special_ids.eos
    batch = exp.engine.input_ids(TEXTS)
    ids, mask = pad_batch(batch, pad)
    free, _, _ = hf_generate(exp.model, ids, mask)
    assert any(pad in until_eos(row[1:], eos) for row in free), "the tiny model should be tempted by pad"
    bad_words = exp.manifest.generation["bad_words_ids"]
    sequences, _, scores = hf_generate(exp.model, ids, mask, bad_words_ids=bad_words)
    results = exp.engine.generate_ids(batch, GenerationConfig().replace(max_new_tokens=STEPS, bad_words_ids=bad_words))
    assert not any(pad in r.ids for r in results)
    check_same_generation(exp, results, sequences, scores)


class SentencePieceT5:
    """The slow reference of a T5 spiece.model: SentencePiece ids, then </s>."""

    def __init__(self, path: Path) -> None:
        import sentencepiece as spm

        self.processor = spm.SentencePieceProcessor(model_file=str(path))

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.processor.encode(text) + [self.processor.eos_id()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """transformers' skip_special_tokens drops <unk> too (SentencePiece would print ⁇)."""
        special = [self.processor.is_control(i) or self.processor.is_unknown(i) for i in ids]
        return self.processor.decode([i for i, skip in zip(ids, special) if not skip])


@pytest.mark.parametrize("name", ["mt5", "marian"])
def test_converted_tokenizer_matches_the_slow_one(exported, name):
    """No tokenizer.json in the folder: export converted spiece.model / source.spm + vocab.json."""
    import warnings

    exp = exported(name)
    assert not (exp.hf / "tokenizer.json").exists()
    texts = SENTENCES[:-1] + ["  extra   spaces here ", "unseen: zebra quiz!"]
    if name == "marian":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MarianTokenizer recommends sacremoses
            reference = transformers.MarianTokenizer(
                *(str(exp.hf / f) for f in ("source.spm", "target.spm", "vocab.json"))
            )
        texts.append(">>fra<< le chat")
        # SENTENCES[-1] is left out: its run "éjà" of characters the source model lacks is looked
        # up whole by MarianTokenizer, one by one here (docs/families.md, limits).
    else:
        reference = SentencePieceT5(exp.hf / "spiece.model")
        texts.append(SENTENCES[-1])
    expected = [reference(text)["input_ids"] for text in texts]
    assert exp.engine.tokenizer.encode(texts) == expected
    for row in expected:
        assert exp.engine.tokenizer.decode(row) == reference.decode(row, skip_special_tokens=True)


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_decoder_holds_one_copy_of_the_tied_embedding(exported, name):
    import hashlib

    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(exported(name).engine.folder / "decoder.onnx")).graph
    seen: dict[str, str] = {}
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        if values.size >= 256:
            digest = hashlib.sha256(np.sort(values, axis=None).tobytes()).hexdigest()  # catches transposes
            assert digest not in seen, f"{init.name} duplicates {seen.get(digest)}"
            seen[digest] = init.name


def test_wrong_family_override_says_what_the_folder_holds(exported, tmp_path):
    from seqport.export.pipeline import export_model

    with pytest.raises(ExportError, match=r"holds a 't5' model; this adapter exports: bart, mbart"):
        export_model(exported("t5").hf, tmp_path / "out", family="bart", progress=False)


def test_marian_with_separate_vocabularies_is_refused(tmp_path):
    from seqport.export.marian import load

    config = transformers.MarianConfig(
        vocab_size=40, decoder_vocab_size=30, share_encoder_decoder_embeddings=False, d_model=8,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=8, decoder_ffn_dim=8, pad_token_id=29, decoder_start_token_id=29,
    )  # fmt: skip
    transformers.MarianMTModel(config).save_pretrained(str(tmp_path))
    with pytest.raises(ExportError, match="separate source and target vocabularies"):
        load(tmp_path)


GENERATION_CASES = [  # generation_config.json values → manifest `generation` (seqport names)
    (
        {"max_length": 200, "min_length": 10, "num_beams": 4, "length_penalty": 2.0, "early_stopping": True},
        {"max_new_tokens": 199, "min_new_tokens": 9, "num_beams": 4, "length_penalty": 2.0, "early_stopping": True},
    ),
    ({"max_new_tokens": 30, "no_repeat_ngram_size": 3}, {"max_new_tokens": 30, "no_repeat_ngram_size": 3}),
    ({"do_sample": True, "top_p": 0.9}, {"do_sample": True, "top_p": 0.9, "top_k": 50}),
    ({"temperature": 0.7, "length_penalty": 2.0}, {}),  # greedy: neither is used
    ({"forced_bos_token_id": 7, "bad_words_ids": [[3]]}, {"forced_bos_token_id": 7, "bad_words_ids": [[3]]}),
]


@pytest.mark.parametrize(("given", "expected"), GENERATION_CASES)
def test_generation_defaults_use_seqport_names(given, expected):
    from types import SimpleNamespace

    from seqport.export.hf_common import generation_defaults

    model = SimpleNamespace(generation_config=transformers.GenerationConfig(**given))
    assert generation_defaults(model) == expected
    GenerationConfig.from_defaults(expected)


def test_generation_options_without_equivalent_are_logged(caplog):
    from types import SimpleNamespace

    from seqport.export.hf_common import generation_defaults

    model = SimpleNamespace(generation_config=transformers.GenerationConfig(begin_suppress_tokens=[2], num_beams=3))
    assert generation_defaults(model) == {"num_beams": 3}
    assert "no seqport equivalent are not exported: begin_suppress_tokens" in caplog.text


@pytest.mark.parametrize("name", ["t5", "mbart", "marian"])
def test_preallocated_cache_matches_transformers(exported, name, tmp_path):
    """kv_cache="preallocated": the decoder writes into buffers sized for the request (in place
    through IOBinding). Greedy equals transformers token for token, on the host loop and the
    device loop; beam search and scoring equal the growing-cache artifact's."""
    import seqport.engine as sp
    from seqport.export.pipeline import export_model

    exp = exported(name)
    manifest = export_model(exp.hf, tmp_path / "artifact", progress=False, kv_cache="preallocated")
    assert manifest.kv.allocation == "preallocated" and "cache_position" in manifest.components["decoder"].inputs
    host = sp.load(tmp_path / "artifact")
    device = sp.load(tmp_path / "artifact", options=sp.RuntimeOptions(device_loop=True))
    batch = exp.engine.input_ids(TEXTS)
    ids, mask = pad_batch(batch, exp.manifest.special_ids.pad)
    sequences, _, scores = hf_generate(exp.model, ids, mask)
    for engine in (host, device):
        check_same_generation(
            exp, engine.generate_ids(batch, GenerationConfig(max_new_tokens=STEPS)), sequences, scores
        )
    beams = GenerationConfig(max_new_tokens=STEPS, num_beams=3, num_return_sequences=2)
    grown = exp.engine.generate_ids(batch, beams)
    for engine in (host, device):
        for ours, theirs in zip(engine.generate_ids(batch, beams), grown):
            assert [s.ids for s in ours.sequences] == [s.ids for s in theirs.sequences]
            np.testing.assert_allclose(
                [s.score for s in ours.sequences], [s.score for s in theirs.sequences], atol=1e-4
            )
    targets = [r.ids for r in grown[0].sequences] + [[5, 6, 7]]
    for ours, theirs in zip(host.score(batch[:3], targets), exp.engine.score(batch[:3], targets)):
        np.testing.assert_allclose(ours.token_logprobs, theirs.token_logprobs, atol=1e-5, rtol=0)
