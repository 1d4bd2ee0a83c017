"""Huge pages under the weights a runtime allocated while a model loaded (Linux).

Why: a decoder step at small batch streams every weight from memory once. onnxruntime copies
(prepacks) the weights into memory it gets from malloc, which under the kernel's default
transparent-huge-page mode ("madvise") is backed by 4 KiB pages: 540 MB of SmolLM2 weights span
~135,000 of them, so the step waits on TLB misses, and the hardware prefetcher stops at every
4 KiB boundary. MADV_COLLAPSE (Linux 6.1) moves resident memory onto 2 MiB pages in place: the
same bytes at the same addresses. SmolLM2-135M, 2 threads, two copies of the model alternated in
one process (benchmarks/huge_pages.py): fp32 decode 1.05-1.10x at batch 1, 1.03-1.04x at batch 8;
int4 1.05-1.08x at batch 1, 1.02x at batch 8 (docs/benchmarks.md, "Ninth session"). Where the
kernel or platform lacks it, nothing happens.

Only blocks that are wholly resident are collapsed, so memory that was allocated but never
touched (an arena's spare room) stays unbacked: the resident size does not grow. Only memory
mapped during the load is touched: weights that land in blocks the process had mapped before
(malloc reusing what an earlier, dropped model freed) stay as they are; the first load of a
process, the common case, maps its weights anew.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MADV_COLLAPSE = 25  # <linux/mman.h>; EINVAL on kernels before 6.1
PAGE = mmap.PAGESIZE
_PMD_SIZE_FILE = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")

Region = tuple[int, int]  # [start, end) of one mapping


def anonymous_regions() -> set[Region]:
    """[start, end) of this process's private anonymous read-write mappings (malloc's large
    blocks, numpy's arrays, a runtime's arenas); empty where /proc/self/maps does not exist."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    regions = set()
    for line in lines:
        fields = line.split()
        if len(fields) == 5 or (len(fields) == 6 and fields[5] == "[heap]"):  # no file behind it
            if fields[1].startswith("rw") and fields[1].endswith("p"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                regions.add((start, end))
    return regions


def collapse_new_regions(before: set[Region]) -> int:
    """Move the wholly resident huge-page-sized blocks of anonymous memory mapped since `before`
    onto huge pages (a mapping that grew, or merged with a new neighbour, only for its new part).

    Args:
        before: `anonymous_regions()` taken before the allocations to collapse.

    Returns:
        bytes now on huge pages (0 where the platform cannot: not Linux, a kernel before 6.1,
        transparent huge pages disabled).
    """
    huge, libc = _huge_page_size(), _libc()
    if unavailable() is not None or huge is None or libc is None:
        return 0
    started, collapsed = time.perf_counter(), 0
    for start, end in _uncovered(anonymous_regions() - before, before):
        for run_start, run_end in _resident_runs(libc, start, end, huge):
            if libc.madvise(run_start, run_end - run_start, MADV_COLLAPSE) == 0:
                collapsed += run_end - run_start
    if collapsed:
        logger.info("%d MiB of weights on huge pages in %.2f s", collapsed >> 20, time.perf_counter() - started)
    return collapsed


@functools.cache
def unavailable() -> str | None:
    """None where `collapse_new_regions` can work here, else why not (for `seqport info`)."""
    if not sys.platform.startswith("linux"):
        return f"not on {sys.platform} (Linux only)"
    if _huge_page_size() is None:
        return "transparent huge pages are disabled or missing (/sys/kernel/mm/transparent_hugepage)"
    libc = _libc()
    if libc is None:
        return "no C library to call madvise through"
    # advice is checked before the range: an empty range answers whether the kernel knows it
    if libc.madvise(mmap.PAGESIZE, 0, MADV_COLLAPSE) != 0:
        return "this kernel has no MADV_COLLAPSE (Linux 6.1 or later has it)"
    return None


def _uncovered(regions: set[Region], before: set[Region]) -> list[Region]:
    """The parts of `regions` that no region of `before` covers, in address order."""
    parts: list[Region] = []
    old = sorted(before)
    for start, end in sorted(regions):
        cursor = start
        for old_start, old_end in old:
            if old_end <= cursor or old_start >= end:
                continue
            if old_start > cursor:
                parts.append((cursor, old_start))
            cursor = max(cursor, old_end)
        if cursor < end:
            parts.append((cursor, end))
    return parts


def _resident_runs(libc: ctypes.CDLL, start: int, end: int, huge: int) -> list[Region]:
    """The runs of consecutive huge-page-aligned blocks inside [start, end) whose every page is
    resident (mincore)."""
    first, last = -(-start // huge) * huge, end // huge * huge
    if last <= first:
        return []
    pages = (last - first) // PAGE
    vector = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(first), last - first, vector) != 0:
        return []
    whole = (np.frombuffer(vector, dtype=np.uint8).reshape(-1, huge // PAGE) & 1).all(axis=1)
    runs: list[Region] = []
    for index in np.flatnonzero(whole):
        block = first + int(index) * huge
        if runs and runs[-1][1] == block:
            runs[-1] = (runs[-1][0], block + huge)
        else:
            runs.append((block, block + huge))
    return runs


def _huge_page_size() -> int | None:
    """The PMD huge page size (2 MiB on x86-64), or None where transparent huge pages are
    unavailable or disabled (no such file off Linux)."""
    try:
        size = int(_PMD_SIZE_FILE.read_text())
        mode = (_PMD_SIZE_FILE.parent / "enabled").read_text()
    except (OSError, ValueError):
        return None
    return None if "[never]" in mode or size <= PAGE else size


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc
