"""Encoder-only families (BERT, RoBERTa, XLM-RoBERTa, DistilBERT): tiny seeded random models
exported per family, engine outputs against transformers, and the errors a user can cause."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from seqport.engine.encoder_only import l2_normalize, pool, softmax
from seqport.engine.errors import ConfigError, ExportError, InputError, ManifestError, ParityError

FE, SC = "feature-extraction", "sequence-classification"
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["the cat sat on the mat", "where is the small red house in the park", "numbers"]
CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "where is the small red house",
    "numbers one two three four five",
] * 5


@dataclass(frozen=True)
class Row:
    """One parity case: a family, a task and the pooling its sentence-transformers files declare
    (None: a plain model folder, which gets mean pooling without normalisation)."""

    family: str
    task: str
    pooling: tuple[str, ...] | None = None
    normalize: bool = False

    @property
    def id(self) -> str:
        return f"{self.family}-{self.task}-{'+'.join(self.pooling or ('default',))}"


ROWS = [
    Row("bert", FE, ("mean",), normalize=True),
    Row("bert", SC),
    Row("roberta", FE, ("max",)),
    Row("xlm-roberta", FE, ("cls", "mean_sqrt_len"), normalize=True),
    Row("distilbert", FE, None),
    Row("distilbert", SC),
]


# -- numpy pooling, no torch -------------------------------------------------------------------


def test_pool_ignores_padding_in_every_mode():
    hidden = np.array([[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]], dtype=np.float32)  # (1, 3, 2)
    mask = np.array([[1, 1, 0]], dtype=np.int64)
    pooled = pool(hidden, mask, ["mean", "cls", "max", "mean_sqrt_len"])  # order is fixed: cls, max, mean, sqrt
    expected = [1.0, 2.0, 3.0, 2.0, 2.0, -1.0, 4.0 / 2**0.5, -2.0 / 2**0.5]
    np.testing.assert_allclose(pooled, [expected], rtol=1e-6)
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(pooled), axis=1), [1.0], rtol=1e-6)
    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]], rtol=1e-6)


# -- tiny models ------------------------------------------------------------------------------


def _tokenizer(family: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    bert_like = family in ("bert", "distilbert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if bert_like else ["<s>", "<pad>", "</s>", "<unk>"]
    cls, sep, unk = (specials[2], specials[3], specials[1]) if bert_like else (specials[0], specials[2], specials[3])
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=90, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, specials.index(cls)), (sep, specials.index(sep))]
    )
    return tok


def _model(row: Row, seed: int = 3):
    """Odd sizes: vocab 97, hidden 20, 4 heads of 5, FFN 37, 40 positions; weights of std 1/sqrt(fan_in)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    extra = labels if row.task == SC else {}
    if row.family == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=97, dim=20, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40, **extra
        )
        classes = (tf.DistilBertModel, tf.DistilBertForSequenceClassification)
    else:
        config_class, base, head = {
            "bert": (tf.BertConfig, tf.BertModel, tf.BertForSequenceClassification),
            "roberta": (tf.RobertaConfig, tf.RobertaModel, tf.RobertaForSequenceClassification),
            "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaModel, tf.XLMRobertaForSequenceClassification),
        }[row.family]
        roberta_ids = {} if row.family == "bert" else {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
        config = config_class(
            vocab_size=97,
            hidden_size=20,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=40,
            type_vocab_size=2 if row.family == "bert" else 1,
            **roberta_ids,
            **extra,
        )
        classes = (base, head)
    model = classes[row.task == SC](config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:  # the default std 0.02 gives near-constant outputs and tiny logits
                param.normal_(0.0, param.shape[1] ** -0.5)
    return model


def _write_folder(row: Row, folder: Path):
    model = _model(row)
    model.save_pretrained(folder)
    _tokenizer(row.family).save(str(folder / "tokenizer.json"))
    if row.pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if row.normalize:
            normalize = "sentence_transformers.models.Normalize"
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": normalize})
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        keys = {"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens", "mean_sqrt_len": "mean_sqrt_len_tokens"}
        config = {f"pooling_mode_{key}": mode in row.pooling for mode, key in keys.items()}
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 20, **config}))
    return model


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """row → (torch model, artifact folder), each exported once per session."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from seqport.export.pipeline import export_model

    cache: dict[Row, tuple] = {}

    def get(row: Row):
        if row not in cache:
            root = tmp_path_factory.mktemp(row.id)
            model = _write_folder(row, root / "checkpoint")
            export_model(root / "checkpoint", root / "artifact", progress=False)
            cache[row] = model, root / "artifact"
        return cache[row]

    return get


def _reference_batch(artifact: Path, pad: int):
    """Token ids of TEXTS via `tokenizers` directly, right-padded: int64 (3, S) ids and mask."""
    from tokenizers import Tokenizer

    rows = [e.ids for e in Tokenizer.from_file(str(artifact / "tokenizer.json")).encode_batch(TEXTS)]
    assert len({len(r) for r in rows}) == 3, "inputs must have different lengths"
    ids = np.full((3, max(map(len, rows))), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


def _st_pool(hidden, mask, modes, normalize):
    """sentence-transformers' Pooling (+ Normalize) written in torch, the reference for the engine."""
    import torch

    m = mask[..., None].to(hidden.dtype)  # (B, S, 1)
    parts = []
    if "cls" in modes:
        parts.append(hidden[:, 0])
    if "max" in modes:
        parts.append(hidden.masked_fill(m == 0, -1e9).max(dim=1).values)
    total, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
    if "mean" in modes:
        parts.append(total / count)
    if "mean_sqrt_len" in modes:
        parts.append(total / torch.sqrt(count))
    out = torch.cat(parts, dim=1)
    return torch.nn.functional.normalize(out, p=2, dim=1) if normalize else out


@pytest.mark.export
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_engine_equals_transformers(exported, row):
    """Graph outputs and pooled embeddings / class probabilities within 1e-4 on 3 padded inputs."""
    import torch

    import seqport.engine as sp

    torch_model, artifact = exported(row)
    engine = sp.load(artifact)
    ids, mask = _reference_batch(artifact, engine.manifest.special_ids.pad)
    with torch.inference_mode():
        out = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    ours = engine.encode(ids, mask)
    if row.task == FE:
        hidden = out.last_hidden_state
        np.testing.assert_allclose(ours["last_hidden_state"], hidden.numpy(), atol=1e-4, rtol=0)
        modes, normalize = row.pooling or ("mean",), row.normalize
        expected = _st_pool(hidden, torch.tensor(mask), modes, normalize).numpy()
        embeddings = engine.embed(TEXTS)
        assert embeddings.dtype == np.float32 and embeddings.shape == (3, 20 * len(modes)) == expected.shape
        assert engine.dimension == 20 * len(modes)
        np.testing.assert_allclose(embeddings, expected, atol=1e-4, rtol=0)
    else:
        np.testing.assert_allclose(ours["logits"], out.logits.numpy(), atol=1e-4, rtol=0)
        probs = out.logits.softmax(-1).numpy()
        assert len(set(probs.argmax(-1))) > 1 or np.ptp(probs) > 0.05, "random head too flat to mean much"
        results = engine.classify(TEXTS)
        for result, expected in zip(results, probs):
            assert result.label == LABELS[int(expected.argmax())] and result.index == int(expected.argmax())
            assert list(result.probabilities) == LABELS
            np.testing.assert_allclose(list(result.probabilities.values()), expected, atol=1e-4)
            assert result.score == pytest.approx(float(expected.max()), abs=1e-4)


@pytest.mark.export
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_manifest_records_encoder_contract(exported, row):
    from seqport.engine.manifest import load_manifest

    _, artifact = exported(row)
    m = load_manifest(artifact)
    assert m.architecture == "encoder-only" and m.family == row.family and m.kv is None
    assert set(m.components) == {"encoder"}
    encoder = m.components["encoder"]
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if row.family == "bert" else [])
    assert set(encoder.inputs) == set(expected_inputs)  # the JSON sorts keys
    assert encoder.inputs["input_ids"].shape == ["batch_size", "sequence_length"]
    output = "last_hidden_state" if row.task == FE else "logits"
    assert list(encoder.outputs) == [output]
    assert m.validation.max_abs_diff["encoder"][output] <= 1e-4
    assert m.validation.cases == ["encoder batch=1 padded", "encoder batch=3 padded"]
    assert m.max_positions == (38 if "roberta" in row.family else 40)  # RoBERTa positions start after pad
    assert m.special_ids.pad == (0 if row.family in ("bert", "distilbert") else 1)
    if row.task == FE:
        assert m.pooling.modes == list(row.pooling or ("mean",)) and m.pooling.normalize == row.normalize
        assert m.labels == []
    else:
        assert m.pooling is None and m.labels == LABELS


def test_every_encoder_only_family_has_a_parity_row():
    """A family registered with tasks (encoder-only) must appear in ROWS; bert needs a classifier row."""
    pytest.importorskip("torch")
    from seqport.export.families import FAMILIES

    encoder_only = {f for f, module in FAMILIES.items() if hasattr(importlib.import_module(module), "TASKS")}
    assert encoder_only >= {"bert", "roberta", "xlm-roberta", "distilbert"}
    missing = encoder_only - {row.family for row in ROWS}
    assert not missing, f"encoder-only families without a parity row: {sorted(missing)}"
    assert Row("bert", SC) in ROWS


@pytest.mark.export
def test_embeddings_do_not_depend_on_batching_or_padding(exported):
    import seqport.engine as sp

    engine = sp.load(exported(ROWS[0])[1])
    together = engine.embed(TEXTS, batch_size=0)
    alone = np.concatenate([engine.embed(text) for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(engine.embed(TEXTS, batch_size=2), together, atol=1e-5, rtol=0)
    raw = engine.embed(TEXTS, normalize=False)
    np.testing.assert_allclose(l2_normalize(raw), together, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


@pytest.mark.export
def test_long_input_fails_unless_truncated_and_keeps_the_separator(exported):
    import torch

    import seqport.engine as sp

    torch_model, artifact = exported(ROWS[0])
    engine = sp.load(artifact)
    long_text = " ".join(["the small red house"] * 20)
    with pytest.raises(InputError, match="more than the model's maximum of 40; shorten it or pass truncate=True"):
        engine.embed(long_text)
    ids = engine.input_ids([long_text])[0]
    cut = ids[:39] + [ids[-1]]  # [CLS] ... [SEP]: the separator stays last
    with torch.inference_mode():
        hidden = torch_model(input_ids=torch.tensor([cut])).last_hidden_state
    expected = _st_pool(hidden, torch.ones(1, 40, dtype=torch.long), ("mean",), True).numpy()
    np.testing.assert_allclose(engine.embed(long_text, truncate=True), expected, atol=1e-4, rtol=0)


@pytest.mark.export
def test_wrong_method_for_the_task_says_what_to_do(exported):
    import seqport.engine as sp

    embedder, classifier = sp.load(exported(ROWS[0])[1]), sp.load(exported(ROWS[1])[1])
    with pytest.raises(ConfigError, match=r"embed\(\) needs an artifact exported with --task feature-extraction"):
        classifier.embed(TEXTS)
    with pytest.raises(ConfigError, match=r"classify\(\) needs .* --task sequence-classification.*call embed\(\)"):
        embedder.classify(TEXTS)
    with pytest.raises(ConfigError, match="batch_size must be an int >= 0"):
        embedder.embed(TEXTS, batch_size=-1)
    with pytest.raises(InputError, match="input 1 is empty"):
        embedder.embed(["fine", " "])


@pytest.mark.export
def test_task_option_overrides_what_the_checkpoint_is(tmp_path, exported):
    from seqport.export.pipeline import export_model

    exported(ROWS[0])  # imports transformers and checks it is installed
    _write_folder(Row("bert", SC), tmp_path / "classifier")
    m = export_model(tmp_path / "classifier", tmp_path / "embedder", task=FE, progress=False)
    assert list(m.components["encoder"].outputs) == ["last_hidden_state"] and m.pooling.modes == ["mean"]
    _write_folder(Row("bert", FE, ("mean",)), tmp_path / "base")
    with pytest.raises(ExportError, match=r"no trained weights for classifier\..*--task feature-extraction"):
        export_model(tmp_path / "base", tmp_path / "out", task=SC, progress=False)


@pytest.mark.export
def test_task_on_a_non_encoder_family_is_refused(tmp_path, tiny_checkpoint):
    pytest.importorskip("torch")
    from seqport.export.pipeline import export_model

    with pytest.raises(ExportError, match="applies to encoder-only families only; 'seqport-transformer' takes none"):
        export_model(tiny_checkpoint, tmp_path / "out", task=FE, progress=False)


def _edit(folder: Path, name: str, change) -> None:
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.export
@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda f: _edit(f, "modules.json", lambda d: d.append({"path": "2_Dense", "type": "x.models.Dense"})),
            "modules seqport cannot export: Dense; supported modules are: Transformer, Pooling, Normalize",
        ),
        (
            lambda f: _edit(f, "1_Pooling/config.json", lambda d: d.update(pooling_mode_weightedmean_tokens=True)),
            "pooling pooling_mode_weightedmean_tokens is not supported; supported pooling modes are: cls, max",
        ),
        (
            lambda f: _edit(f, "1_Pooling/config.json", lambda d: d.update(pooling_mode_mean_tokens=False)),
            "1_Pooling/config.json switches on no pooling mode",
        ),
        (
            lambda f: _edit(f, "config.json", lambda d: d.update(problem_type="multi_label_classification")),
            "problem_type 'multi_label_classification' .* not supported: seqport exports single-label",
        ),
    ],
    ids=["dense-module", "weighted-mean", "no-pooling-mode", "multi-label"],
)
def test_unsupported_checkpoints_are_refused_with_the_supported_list(tmp_path, exported, change, match):
    from seqport.export.pipeline import export_model

    exported(ROWS[0])
    _write_folder(Row("bert", FE, ("mean",)), tmp_path / "ckpt")
    change(tmp_path / "ckpt")
    task = SC if "multi" in match else None
    with pytest.raises(ExportError, match=match):
        export_model(tmp_path / "ckpt", tmp_path / "out", task=task, progress=False)


@pytest.mark.export
def test_parity_failure_names_output_and_case(tmp_path, monkeypatch, exported):
    from seqport.export import validate
    from seqport.export.pipeline import export_model

    exported(ROWS[0])
    _write_folder(Row("roberta", FE, ("max",)), tmp_path / "ckpt")
    monkeypatch.setitem(validate.TOLERANCES, "float32", 1e-12)
    monkeypatch.setitem(validate.RTOLERANCES, "float32", 0.0)
    with pytest.raises(ParityError, match=r"encoder\.last_hidden_state \[encoder batch=1 padded\]: max abs diff"):
        export_model(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "seqport.json").exists()


@pytest.mark.export
def test_manifest_needs_pooling_or_labels(exported):
    from seqport.engine.manifest import Manifest

    cases = ((ROWS[0], "pooling", r"\$\.pooling: .*needs its pooling"), (ROWS[1], "labels", r"\$\.labels: "))
    for row, key, match in cases:
        data = json.loads((exported(row)[1] / "seqport.json").read_text())
        del data[key]
        with pytest.raises(ManifestError, match=match):
            Manifest.from_dict(data)
    data = json.loads((exported(ROWS[0])[1] / "seqport.json").read_text())
    data["pooling"]["modes"] = ["mean", "median"]
    with pytest.raises(ManifestError, match=r"\$\.pooling\.modes: \['mean', 'median'\] must be distinct values of"):
        Manifest.from_dict(data)


@pytest.mark.export
def test_cli_embed_and_classify(exported, capsys):
    import seqport.engine as sp
    from seqport.cli.main import main

    embed_artifact, classify_artifact = exported(ROWS[0])[1], exported(ROWS[1])[1]
    assert main(["embed", str(embed_artifact), *TEXTS, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == TEXTS
    np.testing.assert_allclose([r["embedding"] for r in records], sp.load(embed_artifact).embed(TEXTS), atol=1e-6)
    assert main(["classify", str(classify_artifact), *TEXTS, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in records] == [c.label for c in sp.load(classify_artifact).classify(TEXTS)]
    assert set(records[0]["probabilities"]) == set(LABELS)
    assert main(["classify", str(classify_artifact), TEXTS[0]]) == 0
    label, score = capsys.readouterr().out.strip().split("\t")
    assert label in LABELS and 0 < float(score) <= 1
    assert main(["embed", str(classify_artifact), TEXTS[0]]) == 1
    assert "needs an artifact exported with --task feature-extraction" in capsys.readouterr().err
    assert main(["generate", str(embed_artifact), TEXTS[0]]) == 1  # a one-line error, not an AttributeError
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is an encoder-only artifact, which does not generate text" in err
    assert main(["embed", str(embed_artifact), TEXTS[0], "--batch-size", "1", TEXTS[1], "--jsonl", "--progress"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["text"] for line in captured.out.splitlines()] == TEXTS[:2] and "1/2 [" in captured.err
    assert main(["info", str(embed_artifact)]) == 0
    assert "embeddings: mean pooling · dimension 20 · normalized True" in capsys.readouterr().out
