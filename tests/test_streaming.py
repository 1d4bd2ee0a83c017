"""Streaming: pieces join to the non-streamed text, are whole characters, and never leak a
stop string; the incremental decoder on byte-level BPE splits of multi-byte characters."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from seqport.engine.errors import ConfigError
from seqport.engine.stopping import held_back
from seqport.engine.streaming import TextStream

SOURCES = [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2]]


def _joined(pieces, count: int) -> list[str]:
    texts = [""] * count
    for piece in pieces:
        texts[piece.index] += piece.text
    return texts


@pytest.mark.parametrize(
    "cfg",
    [
        dict(max_new_tokens=12),
        dict(max_new_tokens=12, eos_token_ids=[52]),
        dict(do_sample=True, seed=4, max_new_tokens=15, temperature=1.5),
        dict(do_sample=True, seed=9, max_new_tokens=15, top_k=40, batch_size=2),
    ],
    ids=["greedy", "greedy-eos", "sample", "sample-batches"],
)
def test_stream_equals_generate(model, cfg):
    pieces = list(model.stream(SOURCES, **cfg))
    results = model.generate(SOURCES, **cfg)
    assert _joined(pieces, 3) == [r.text for r in results]
    for index, result in enumerate(results):
        mine = [p for p in pieces if p.index == index]
        tokens = result.ids + ([mine[-1].token_id] if result.finish_reason == "eos" else [])
        assert [p.token_id for p in mine] == tokens
        assert [p.finish_reason for p in mine] == [None] * (len(mine) - 1) + [result.finish_reason]
        assert [p.logprob for p in mine[: len(result.ids)]] == pytest.approx(result.token_logprobs, abs=1e-9)


def test_stream_multibyte_text_of_the_tiny_model(model):
    """The tiny tokenizer holds French accents; these outputs contain some (checked), and every
    piece is whole text that joins to the generate() text."""
    cfg = dict(do_sample=True, seed=1, max_new_tokens=20)
    texts = [r.text for r in model.generate(SOURCES, **cfg)]
    assert any(any(ord(ch) > 127 for ch in text) for text in texts)
    pieces = list(model.stream(SOURCES, **cfg))
    assert _joined(pieces, 3) == texts
    assert not any("\ufffd" in p.text for p in pieces)


def test_stream_text_input_and_stop_string(model):
    text = "le chat est sur le tapis"
    full = model.generate(text, max_new_tokens=12)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    pieces = list(model.stream(text, max_new_tokens=12, stop=[stop]))
    streamed = "".join(p.text for p in pieces)
    assert streamed == model.generate(text, max_new_tokens=12, stop=[stop])[0].text == full[: full.index(stop)]
    assert pieces[-1].finish_reason == "stop"
    sent = ""
    for piece in pieces:  # at no moment has the shown text run into the stop string
        sent += piece.text
        assert stop not in sent


@pytest.mark.parametrize(
    "cfg, match",
    [
        (dict(num_beams=2), "works with greedy search and sampling, got num_beams=2, num_return_sequences=1"),
        (dict(do_sample=True, num_return_sequences=2), "num_return_sequences=2 .*pass num_beams=1, num_return"),
    ],
)
def test_stream_rejects_beams_and_several_sequences(model, cfg, match):
    with pytest.raises(ConfigError, match=match):
        next(model.stream(SOURCES, **cfg))


@pytest.mark.parametrize(
    "text, stops, expected",
    [
        ("hello wor", ["world"], 3),  # "wor" may become "world"
        ("hello w", ["world", "xyz"], 1),
        ("hello", ["world"], 0),
        ("abab", ["abc"], 2),  # the longest suffix that starts a stop string
        ("ab", ["abc", "b!"], 2),
        ("world", ["world"], 0),  # a whole stop string is not held back: the search stops on it
    ],
)
def test_held_back_is_the_longest_possible_stop_start(text, stops, expected):
    assert held_back(text, stops) == expected


# --- byte-level BPE: one character over several tokens --------------------------------------


@pytest.fixture(scope="module")
def byte_level() -> Tokenizer:
    """A GPT-2-like byte-level BPE that never merged the bytes of é, 😀 or CJK characters."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    tok.train_from_iterator(["hello world the cat sat"] * 3, trainer)
    return tok


@pytest.mark.parametrize("text", ["café crème", "naïve 😀 façade", "日本語のテキスト", "x€y", "plain ascii"])
def test_text_stream_on_byte_level_splits(byte_level, text):
    ids = byte_level.encode(text).ids
    stream = TextStream(byte_level)
    pieces = [stream.step(i) for i in ids[:-1]] + [stream.step(ids[-1], "length")]
    assert "".join(pieces) == text == byte_level.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    if len(ids) > len(text):  # some character took several tokens: its first bytes showed nothing
        assert "" in pieces


def test_text_stream_cut_mid_character_flushes_what_decode_gives(byte_level):
    ids = byte_level.encode("ok 😀").ids[:-2]  # the emoji's last two bytes never came
    stream = TextStream(byte_level)
    pieces = [stream.step(i) for i in ids[:-1]] + [stream.step(ids[-1], "length")]
    assert "".join(pieces) == byte_level.decode(ids)  # what generate() would show, "\ufffd" included
    assert not any("\ufffd" in piece for piece in pieces[:-1])  # nothing broken was sent early


def test_text_stream_eos_and_special_tokens(byte_level):
    eos = byte_level.token_to_id("<eos>")
    ids = byte_level.encode("the cat").ids
    stream = TextStream(byte_level)
    pieces = [stream.step(i) for i in ids] + [stream.step(eos, "eos")]
    assert "".join(pieces) == "the cat" and pieces[-1] == ""


def test_text_stream_holds_back_a_possible_stop_string(byte_level):
    ids = byte_level.encode("the cat sat").ids
    stream = TextStream(byte_level, stops=["cat!"])
    pieces = [stream.step(i) for i in ids[:-1]] + [stream.step(ids[-1], "length")]
    assert "".join(pieces) == "the cat sat"
    shown = ""
    for piece in pieces[:-1]:
        shown += piece
        assert not shown.endswith("cat")  # "cat" could have become "cat!": it waited
