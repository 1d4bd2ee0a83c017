"""Atomic export: a target is replaced only by a complete artifact, never written into, and a
kill -9 at any moment leaves a loadable artifact (issue #12)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seqport.engine as sp
from seqport.engine.errors import ExportError
from seqport.export.atomic import OLD_MARK, TMP_MARK, atomic_folder, sibling


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_replaces_an_artifact_only_when_complete(artifact_copy):
    old = (artifact_copy / "seqport.json").read_text()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(artifact_copy, overwrite=True) as staging:
            (staging / "seqport.json").write_text("half")
            raise RuntimeError("boom")
    assert (artifact_copy / "seqport.json").read_text() == old
    assert not sibling(artifact_copy, TMP_MARK).exists()
    with atomic_folder(artifact_copy, overwrite=True) as staging:
        (staging / "seqport.json").write_text("{}")
    assert (artifact_copy / "seqport.json").read_text() == "{}"
    assert sorted(p.name for p in artifact_copy.parent.iterdir()) == ["artifact"]


def test_published_files_are_flushed_and_dropped_from_the_page_cache(tmp_path, monkeypatch):
    """Every file is on disk before the rename (durable) and left out of the page cache (the
    first load reads it back in small pages: export/atomic.py `_settle`); a symlink is not touched."""
    synced, advised = [], []
    real_sync = os.fdatasync

    def name(fd: int) -> str:
        return Path(os.readlink(f"/proc/self/fd/{fd}")).name

    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(name(fd)), real_sync(fd)))
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, size, how: advised.append((name(fd), how)))
    out = tmp_path / "artifact"
    with atomic_folder(out, overwrite=False) as staging:
        (staging / "seqport.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "decoder.onnx").write_bytes(b"x" * 4096)
        (staging / "link").symlink_to(staging / "seqport.json")
    assert sorted(synced) == ["decoder.onnx", "seqport.json"]
    assert sorted(advised) == [
        ("decoder.onnx", os.POSIX_FADV_DONTNEED), ("seqport.json", os.POSIX_FADV_DONTNEED)
    ]
    assert (out / "seqport.json").read_text() == "{}" and (out / "sub" / "decoder.onnx").stat().st_size == 4096


def test_existing_artifact_needs_overwrite(artifact_copy):
    with pytest.raises(ExportError, match=r"already holds a seqport artifact; pass overwrite=True \(--overwrite\)"):
        with atomic_folder(artifact_copy, overwrite=False):
            pass


@pytest.mark.parametrize("overwrite", [False, True])
def test_non_empty_folder_that_is_not_an_artifact_is_refused(tmp_path, overwrite):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ExportError, match="non-empty folder that is not a seqport artifact"):
        with atomic_folder(tmp_path, overwrite=overwrite) as staging:
            (staging / "tokenizer.json").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_empty_folder_and_new_folder_are_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("empty", "new/deeper"):
        with atomic_folder(tmp_path / name, overwrite=False) as staging:
            (staging / "seqport.json").write_text("{}")
        assert (tmp_path / name / "seqport.json").is_file()


@pytest.mark.parametrize("target", ["/etc/passwd/sub", "/proc/x", "/etc/passwd"])
def test_impossible_targets_are_an_export_error(target):
    with pytest.raises(ExportError, match="cannot write an artifact|not a folder"):
        with atomic_folder(target, overwrite=True):
            pass


def test_leftovers_of_a_killed_export_are_cleaned_and_a_lost_target_restored(tiny_artifact, tmp_path):
    out, pid = tmp_path / "artifact", _dead_pid()
    # killed between "old → backup" and "new → target": no target, a backup and a staging folder
    shutil.copytree(tiny_artifact, sibling(out, OLD_MARK, pid))
    shutil.copytree(tiny_artifact, sibling(out, TMP_MARK, pid))
    live = sibling(out, TMP_MARK, os.getppid())  # a running export's folder is left alone
    live.mkdir()
    with pytest.raises(ExportError, match="already holds a seqport artifact"):
        with atomic_folder(out, overwrite=False):
            pass
    sp.load(out)  # the old artifact is back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["artifact", live.name])


def test_fallback_without_rename_exchange(artifact_copy, monkeypatch):
    monkeypatch.setattr("seqport.export.atomic._exchange", lambda a, b: False)
    with atomic_folder(artifact_copy, overwrite=True) as staging:
        (staging / "seqport.json").write_text("{}")
    assert (artifact_copy / "seqport.json").read_text() == "{}"
    assert sorted(p.name for p in artifact_copy.parent.iterdir()) == ["artifact"]


# --- export_model itself (needs torch) -------------------------------------------------------

_EXPORT = """
import sys
from seqport.export.pipeline import export_model
export_model(sys.argv[1], sys.argv[2], progress=False, overwrite=True)
"""

# The child wraps one pipeline function so that it stops itself (SIGSTOP) at the chosen point;
# the parent sees it stopped and kills it there. No polling race: a fast machine cannot run past.
_EXPORT_STOPPING_AT = """
import os, signal, sys
import seqport.export.pipeline as pipeline
name, when = sys.argv[3], sys.argv[4]
real = getattr(pipeline, name)
def stop_there(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), signal.SIGSTOP)
    result = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGSTOP)
    return result
setattr(pipeline, name, stop_there)
pipeline.export_model(sys.argv[1], sys.argv[2], progress=False, overwrite=True)
"""


def _staged(out: Path, name: str):
    return lambda: any((p / name).exists() for p in out.parent.glob(f".{out.name}.{TMP_MARK}-*"))


def _kill_when_stopped(child: subprocess.Popen, seconds: float = 300) -> bool:
    """kill -9 `child` once it has stopped itself; False if it ended or timed out first."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pid, status = os.waitpid(child.pid, os.WUNTRACED | os.WNOHANG)
        if pid and os.WIFSTOPPED(status):
            child.send_signal(signal.SIGKILL)
            child.wait()
            return True
        if pid:  # it ended before the point
            child.returncode = os.waitstatus_to_exitcode(status)
            return False
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return False


@pytest.mark.export
def test_export_refuses_to_write_into_a_user_folder_and_needs_overwrite(tmp_path, tiny_checkpoint, artifact_copy):
    pytest.importorskip("torch")
    from seqport.export.pipeline import export_model

    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "tokenizer.json").write_text("mine")
    with pytest.raises(ExportError, match="not a seqport artifact"):
        export_model(tiny_checkpoint, tmp_path / "user", progress=False)
    assert (tmp_path / "user" / "tokenizer.json").read_text() == "mine"
    with pytest.raises(ExportError, match="--overwrite"):
        export_model(tiny_checkpoint, artifact_copy, progress=False)
    with pytest.raises(ExportError, match="cannot write an artifact at /etc/passwd/sub"):
        export_model(tiny_checkpoint, "/etc/passwd/sub", progress=False)


@pytest.mark.export
def test_kill_9_at_any_point_leaves_a_loadable_artifact(tmp_path, tiny_checkpoint, tiny_artifact):
    """Kill an export over an existing artifact at several points; load() works every time, on
    the old artifact or the new one, and the next export removes the temporary folder."""
    pytest.importorskip("torch")
    out = Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))
    old_created = sp.load(out).manifest.provenance.created
    points = [  # (label, pipeline function, stop before/after it, what must exist when stopped)
        ("staging created", "load_adapter", "before", lambda: any(out.parent.glob(f".{out.name}.{TMP_MARK}-*"))),
        ("encoder written", "validate", "before", _staged(out, "encoder.onnx")),
        ("weights laid out", "externalize_weights", "after", _staged(out, "shared.data")),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for label, function, when, reached in points:
        child = subprocess.Popen(
            [sys.executable, "-c", _EXPORT_STOPPING_AT, str(tiny_checkpoint), str(out), function, when],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert _kill_when_stopped(child), f"the export ended or stalled before '{label}'"
        assert reached(), f"stopped at '{label}' but the staging folder does not show it"
        model = sp.load(out)  # never a half-written artifact
        assert model.generate([[5, 6, 7, 1]], max_new_tokens=3)[0].sequences
    leftovers = list(out.parent.glob(f".{out.name}.seqport-*"))
    assert leftovers, "no kill point left a temporary folder: the test exercised nothing"
    subprocess.run([sys.executable, "-c", _EXPORT, str(tiny_checkpoint), str(out)], env=env, check=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["artifact"]
    assert sp.load(out).manifest.provenance.created != old_created


def test_a_symlinked_artifact_is_replaced_by_a_folder_and_its_target_kept(artifact_copy, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(artifact_copy)
    with atomic_folder(link, overwrite=True) as staging:
        (staging / "seqport.json").write_text("{}")
    assert link.is_dir() and not link.is_symlink()
    assert (link / "seqport.json").read_text() == "{}"
    sp.load(artifact_copy)  # what the link pointed to is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "link"]
