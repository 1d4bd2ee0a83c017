"""Write an artifact folder atomically: build it in a temporary sibling, then move it into place.

An export writes into `.<name>.seqport-tmp-<pid>` next to the target and only swaps it in once
it is complete and validated, so a kill at any moment leaves the old artifact or the new one,
plus at most a temporary folder that the next export into the same target removes.

The swap is one `renameat2(RENAME_EXCHANGE)` on Linux (both names always hold a complete
artifact). Where the call is unavailable, it is two renames: old → `.<name>.seqport-old-<pid>`,
new → target; a kill between the two leaves no target, and the next export into that target
renames the backup back before it starts (docs/reliability.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seqport.engine.errors import ExportError
from seqport.engine.manifest import MANIFEST_FILE

logger = logging.getLogger(__name__)
TMP_MARK = "seqport-tmp"
OLD_MARK = "seqport-old"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def sibling(out: Path, mark: str, pid: int | None = None) -> Path:
    """`.<name>.<mark>-<pid>` next to `out` (this process's pid by default)."""
    return out.parent / f".{out.name}.{mark}-{os.getpid() if pid is None else pid}"


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out`, on any failure it is removed.

    Args:
        out: the artifact folder to create or replace.
        overwrite: allow replacing an existing seqport artifact (a folder holding seqport.json).

    Raises:
        ExportError: `out` is a file, a non-empty folder that is not an artifact, an artifact
            and `overwrite` is False, or a place where no folder can be created.
    """
    out = Path(out).absolute()
    staging = _prepare(out, overwrite)
    try:
        yield staging
        _settle(staging)
        _publish(staging, out)
    except BaseException:
        _remove(staging)
        raise


def _prepare(out: Path, overwrite: bool) -> Path:
    """Check the target, tidy what an interrupted export left, and create the staging folder."""
    blocker = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise ExportError(f"cannot write an artifact at {out}: {blocker} is a file, not a folder; choose another one")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _recover(out)
        _check_target(out, overwrite)
        staging = sibling(out, TMP_MARK)
        _remove(staging)
        staging.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write an artifact at {out}: {exc.strerror or exc}; choose another folder") from None
    return staging


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another output folder")
    if (out / MANIFEST_FILE).is_file():
        if not overwrite:
            raise ExportError(
                f"{out} already holds a seqport artifact; pass overwrite=True (--overwrite) to replace it "
                "(it is replaced only once the new export is complete)"
            )
        return
    if any(out.iterdir()):
        raise ExportError(
            f"{out} is a non-empty folder that is not a seqport artifact; seqport never writes into it "
            "(even with --overwrite): choose a new or empty folder"
        )


def _recover(out: Path) -> None:
    """Undo what a killed export left: restore a backup if the target is gone, drop stale folders."""
    for path in out.parent.glob(f".{_glob_escape(out.name)}.seqport-*-*"):
        mark, _, pid = path.name[len(out.name) + 2 :].rpartition("-")
        if mark not in (TMP_MARK, OLD_MARK) or not pid.isdigit() or _alive(int(pid)):
            continue
        if mark == OLD_MARK and not out.exists() and (path / MANIFEST_FILE).is_file():
            logger.warning("restoring %s from %s, left by an interrupted export", out, path)
            path.rename(out)
        else:
            logger.info("removing %s, left by an interrupted export", path)
            _remove(path)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is starting a new export: its own leftovers are stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _settle(folder: Path) -> None:
    """Flush every file of the finished export to disk and drop it from the page cache.

    Why: renaming a folder whose data is still only in the page cache is not durable (a crash
    can leave the new name with empty files), and pages that writing put in the cache may sit in
    large folios, which Linux maps whole when the engine's mapped embedding is read a row at a
    time: Marian's batch-8 peak RSS was 512 MiB right after its export and 448 MiB once the files
    were read back from disk in small pages (engine/artifact_files.py `blocks`; docs/runtimes.md).
    """
    for path in folder.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean now: the next read fills small pages
        finally:
            os.close(fd)


def _publish(staging: Path, out: Path) -> None:
    """Move the complete `staging` folder to `out`, replacing what is there."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        staging.rename(out)
        return
    if _exchange(staging, out):  # staging now holds the old artifact (or the old symlink)
        _remove(staging)
        return
    backup = sibling(out, OLD_MARK)
    out.rename(backup)
    staging.rename(out)
    _remove(backup)


def _remove(path: Path) -> None:
    """Delete a folder left by an export (a symlink is unlinked, never followed)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where that is not available."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0
