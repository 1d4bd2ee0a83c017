"""engine/huge_pages.py: the memory a model load allocated moves onto 2 MiB pages, only where
it is wholly resident, and loading asks for it unless told not to."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import numpy as np
import pytest

import seqport.engine.api as api
from seqport.engine import huge_pages
from seqport.engine.config import GenerationConfig
from seqport.engine.huge_pages import anonymous_regions, collapse_new_regions
from seqport.engine.runtime import RuntimeOptions

MIB = 1 << 20


def _huge_size() -> int:
    """The huge page size, or a skip where the platform cannot collapse (says `unavailable`)."""
    reason = huge_pages.unavailable()
    if reason is not None:
        pytest.skip(f"no huge pages for weights here: {reason}")
    return huge_pages._huge_page_size()


def _unhinted(nbytes: int) -> np.ndarray:
    """A float32 array of `nbytes` in a private anonymous mapping of its own, untouched and on
    4 KiB pages. Not numpy's allocation: numpy madvises large arrays onto huge pages, and malloc
    may hand out heap memory an earlier test collapsed. A PROT_NONE page on each side keeps the
    mapping from merging with a neighbour, so its smaps entry is the array's alone."""
    page = mmap.PAGESIZE
    mapping = mmap.mmap(-1, nbytes + 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for guard in (start, start + page + nbytes):
        assert libc.mprotect(guard, page, 0) == 0, ctypes.get_errno()  # 0: PROT_NONE
    return np.frombuffer(mapping, dtype=np.float32, count=nbytes // 4, offset=page)


def _smaps_of(array: np.ndarray) -> dict[str, int]:
    """Rss and AnonHugePages (KiB) of the mapping that holds `array`."""
    address, fields, inside = array.ctypes.data, {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head in ("Rss:", "AnonHugePages:"):
            fields[head[:-1]] = int(line.split()[1])
    return fields


def test_resident_memory_moves_onto_huge_pages_with_its_contents() -> None:
    huge = _huge_size()
    before = anonymous_regions()
    array = _unhinted(24 * MIB)
    array[:] = np.arange(array.size, dtype=np.float32)  # every page resident
    assert _smaps_of(array).get("AnonHugePages", 0) == 0
    done = collapse_new_regions(before)
    assert done >= 24 * MIB - 2 * huge  # all but the unaligned ends
    assert _smaps_of(array)["AnonHugePages"] * 1024 >= 24 * MIB - 2 * huge
    assert np.array_equal(array, np.arange(array.size, dtype=np.float32))  # same bytes, same addresses


def test_blocks_not_wholly_resident_stay_as_they_are() -> None:
    """Collapsing fills a block's missing pages: only blocks every page of which is resident
    go, so memory allocated and never touched does not become resident."""
    huge = _huge_size()
    before = anonymous_regions()
    array = _unhinted(32 * MIB)
    floats = huge // 4
    first = (-array.ctypes.data % huge) // 4  # the first aligned block
    touched = range(first, array.size - floats, 2 * floats)  # every other aligned block, whole
    for start in touched:
        array[start : start + floats] = 1.0
    array[first + floats + 7] = 2.0  # one page of the next block: not wholly resident
    rss_before = _smaps_of(array)["Rss"]
    collapse_new_regions(before)
    after = _smaps_of(array)
    assert after["AnonHugePages"] * 1024 == len(touched) * huge
    assert after["Rss"] - rss_before < 64  # KiB: no block's missing pages were filled (2 MiB each)


def test_mappings_that_existed_before_are_left_alone() -> None:
    _huge_size()
    array = _unhinted(16 * MIB)
    array[:] = 1.0
    before = anonymous_regions()
    collapse_new_regions(before)
    assert _smaps_of(array).get("AnonHugePages", 0) == 0


def test_uncovered_parts() -> None:
    before = {(100, 200), (300, 400)}
    now = {(0, 250), (300, 400), (380, 500), (600, 700)}
    assert huge_pages._uncovered(now - before, before) == [(0, 100), (200, 250), (400, 500), (600, 700)]


def test_nothing_happens_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huge_pages.sys, "platform", "darwin")
    huge_pages.unavailable.cache_clear()
    try:
        assert huge_pages.unavailable() == "not on darwin (Linux only)"
        array = _unhinted(8 * MIB)
        array[:] = 1.0
        assert collapse_new_regions(set()) == 0
    finally:
        huge_pages.unavailable.cache_clear()


def test_a_kernel_without_collapse_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huge_pages, "MADV_COLLAPSE", 999)  # advice no kernel knows: EINVAL
    huge_pages.unavailable.cache_clear()
    try:
        if huge_pages._huge_page_size() is None:
            pytest.skip(f"no huge pages for weights here: {huge_pages.unavailable()}")
        assert "no MADV_COLLAPSE" in huge_pages.unavailable()
    finally:
        huge_pages.unavailable.cache_clear()


@pytest.mark.parametrize("wanted", [True, False])
def test_load_collapses_what_its_sessions_allocated(
    tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch, wanted: bool
) -> None:
    events: list[str] = []
    snapshot = anonymous_regions()
    open_runtime = api.open_runtime
    monkeypatch.setattr(api, "anonymous_regions", lambda: events.append("snapshot") or snapshot)
    monkeypatch.setattr(api, "open_runtime", lambda *a: events.append("session") or open_runtime(*a))
    monkeypatch.setattr(
        api, "collapse_new_regions", lambda before: events.append("collapse" if before is snapshot else "?") or 0
    )
    model = api.load(tiny_artifact, options=RuntimeOptions(huge_pages=wanted))
    assert model.generate_ids([[5, 6, 7]], GenerationConfig(max_new_tokens=3))[0].ids  # loads and decodes either way
    sessions = ["session"] * len(model.manifest.components)
    able = huge_pages.unavailable() is None  # elsewhere load() does not even take the snapshot
    assert events == (["snapshot", *sessions, "collapse"] if wanted and able else sessions)


@pytest.mark.parametrize(("flags", "wanted"), [([], True), (["--no-huge-pages"], False)])
def test_the_commands_pass_no_huge_pages_on(
    tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], wanted: bool
) -> None:
    import argparse

    from seqport.cli.runtime_args import add_runtime_options, load_with_runtime_options

    seen: list[RuntimeOptions] = []
    monkeypatch.setattr(api, "load", lambda path, provider, options: seen.append(options))
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    add_runtime_options(parser)
    load_with_runtime_options(parser.parse_args([str(tiny_artifact), *flags]))
    assert seen[0].huge_pages is wanted
