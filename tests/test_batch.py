"""`seqport batch` in this process (no Ray): formats, order and ids, carried fields, resuming,
bad records, and the errors a user can cause. The tiny artifact keeps it fast."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tiny import SENTENCES

from seqport.batch import BatchJob, JobSpec, run_job
from seqport.batch import cli as batch_cli
from seqport.batch.records import Record
from seqport.batch.work import process_records
from seqport.engine.errors import ArtifactError, ConfigError

MAX_NEW = 5
SPEC = JobSpec(generation={"max_new_tokens": MAX_NEW}, chunk_size=3)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected(model, texts: list[str]) -> list[str]:
    return [r.text for r in model.generate(texts, max_new_tokens=MAX_NEW)]


@pytest.fixture
def lines(tmp_path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def test_text_input_keeps_order_and_ids(tiny_artifact, lines, tmp_path, model):
    summary = run_job(BatchJob(tiny_artifact, lines, tmp_path / "out.jsonl", SPEC, shard_size=3))
    rows = _read(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == list(range(len(SENTENCES)))
    assert [r["text"] for r in rows] == SENTENCES
    assert [r["output"] for r in rows] == _expected(model, SENTENCES)
    assert summary.records == summary.processed == len(SENTENCES) and summary.failures == 0
    assert summary.tokens == sum(len(r.ids) for r in model.generate(SENTENCES, max_new_tokens=MAX_NEW))
    assert not (tmp_path / "out.jsonl.parts").exists(), "the shards are merged and removed"


def test_jsonl_carries_fields_and_reports_bad_records(tiny_artifact, tmp_path, model):
    source = tmp_path / "in.jsonl"
    good = [{"src": SENTENCES[0], "lang": "en"}, {"src": SENTENCES[1], "n": 2}]
    bad = ["{not json", json.dumps({"other": 1}), json.dumps({"src": ""}), json.dumps({"src": 5})]
    lines = [json.dumps(good[0]), bad[0], bad[1], json.dumps(good[1]), bad[2], bad[3]]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = JobSpec(text_field="src", id_field="row", generation={"max_new_tokens": MAX_NEW})
    summary = run_job(BatchJob(tiny_artifact, source, tmp_path / "out.jsonl", spec))
    rows = _read(tmp_path / "out.jsonl")
    assert [r["row"] for r in rows] == list(range(6))
    expected = _expected(model, [SENTENCES[0], SENTENCES[1]])
    assert rows[0] == {"row": 0, **good[0], "output": expected[0]}
    assert rows[3] == {"row": 3, **good[1], "output": expected[1]}
    assert "not valid JSON" in rows[1]["error"] and "output" not in rows[1]
    assert "'src' must be text, but it is missing" in rows[2]["error"] and rows[2]["other"] == 1
    assert rows[4]["error"].startswith("InputError") and "empty" in rows[4]["error"]
    assert "it is a int" in rows[5]["error"]
    assert summary.failures == 4


def test_parquet_in_and_out(tiny_artifact, tmp_path, model):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": SENTENCES[:5], "doc": list(range(10, 15))}), source)
    run_job(BatchJob(tiny_artifact, source, tmp_path / "out.parquet", SPEC, shard_size=2))
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["id"], r["doc"], r["text"]) for r in table] == [(i, 10 + i, s) for i, s in enumerate(SENTENCES[:5])]
    assert [r["output"] for r in table] == _expected(model, SENTENCES[:5])


def test_text_output_is_one_line_per_record(tiny_artifact, tmp_path, model):
    source = tmp_path / "in.txt"
    source.write_text(f"{SENTENCES[0]}\n\n{SENTENCES[2]}\n", encoding="utf-8")
    run_job(BatchJob(tiny_artifact, source, tmp_path / "out.txt", SPEC))
    expected = _expected(model, [SENTENCES[0], SENTENCES[2]])
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == f"{expected[0]}\n\n{expected[1]}\n"


class _Stop(Exception):
    pass


def test_a_rerun_skips_finished_shards(tiny_artifact, lines, tmp_path, model):
    output = tmp_path / "out.jsonl"
    job = BatchJob(tiny_artifact, lines, output, SPEC, shard_size=4)

    def interrupt(records: int, tokens: int) -> None:
        raise _Stop  # the job dies after its first shard is stored

    with pytest.raises(_Stop):
        run_job(job, interrupt)
    stored = output.with_name("out.jsonl.parts") / "shard-000000.jsonl"
    rows = _read(stored)
    rows[0]["output"] = "FROM THE FIRST RUN"  # proves the rerun kept the shard instead of redoing it
    stored.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = run_job(job)
    assert summary.skipped_shards == 1 and summary.processed == len(SENTENCES) - 4
    final = _read(output)
    assert final[0]["output"] == "FROM THE FIRST RUN"
    assert [r["output"] for r in final[1:]] == _expected(model, SENTENCES)[1:]


def test_a_rerun_with_other_settings_is_refused(tiny_artifact, lines, tmp_path):
    output = tmp_path / "out.jsonl"

    def interrupt(records: int, tokens: int) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        run_job(BatchJob(tiny_artifact, lines, output, SPEC, shard_size=4), interrupt)
    other = JobSpec(generation={"max_new_tokens": MAX_NEW + 1}, chunk_size=3)
    with pytest.raises(ConfigError, match="shards of a job with other settings \\(spec differ\\)"):
        run_job(BatchJob(tiny_artifact, lines, output, other, shard_size=4))


def test_user_errors(tiny_artifact, lines, tmp_path):
    (tmp_path / "exists.jsonl").write_text("old\n")
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        run_job(BatchJob(tiny_artifact, lines, tmp_path / "exists.jsonl", SPEC))
    run_job(BatchJob(tiny_artifact, lines, tmp_path / "exists.jsonl", SPEC, overwrite=True))
    with pytest.raises(ArtifactError, match="input file .* does not exist"):
        run_job(BatchJob(tiny_artifact, tmp_path / "missing.txt", tmp_path / "o.jsonl", SPEC))
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        run_job(BatchJob(tmp_path, lines, tmp_path / "o.jsonl", SPEC))
    with pytest.raises(ConfigError, match="a encoder-decoder artifact cannot embed"):
        run_job(BatchJob(tiny_artifact, lines, tmp_path / "o.jsonl", JobSpec(task="embed")))
    with pytest.raises(ConfigError, match="shard_size must be >= 1"):
        run_job(BatchJob(tiny_artifact, lines, tmp_path / "o.jsonl", SPEC, shard_size=0))
    source = tmp_path / "ids.jsonl"
    source.write_text(json.dumps({"id": 1, "text": "x"}) + "\n")
    with pytest.raises(ConfigError, match="already have a field 'id'; pass another --id-field"):
        run_job(BatchJob(tiny_artifact, source, tmp_path / "o.jsonl", SPEC))


def test_ray_missing_says_what_to_install(tiny_artifact, lines, tmp_path, monkeypatch):
    from seqport.batch import RayOptions

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'seqport\[ray\]'"):
        run_job(BatchJob(tiny_artifact, lines, tmp_path / "o.jsonl", SPEC, ray=RayOptions()))


def test_serve_ray_without_ray_says_what_to_install(tiny_artifact, monkeypatch):
    pytest.importorskip("starlette")
    from seqport.serving import cli as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", str(tiny_artifact), "--ray", "--replicas", "2"])
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "seqport.serving.ray_app", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'seqport\[serve,ray\]'"):
        args.run(args)


def test_cli_runs_the_job_and_exits_1_on_failed_records(tiny_artifact, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text(f"{SENTENCES[0]}\n\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    batch_cli.add_parser(parser.add_subparsers())
    argv = ["batch", str(tiny_artifact), "--input", str(source), "--output", str(tmp_path / "o.jsonl")]
    args = parser.parse_args([*argv, "--max-new-tokens", "4", "--record-worker"])
    assert args.run(args) == 1
    rows = _read(tmp_path / "o.jsonl")
    assert len(rows[0]["output"]) > 0 and "error" in rows[1] and all(":" in r["worker"] for r in rows)
    err = capsys.readouterr().err
    assert "2 records written" in err and "failures: 1" in err and "tokens/s" in err
    assert "\r" not in err, "no progress bar when stderr is not a terminal"


def test_embed_task_writes_vectors_and_token_counts():
    class Embedder:
        def embed(self, texts, batch_size, truncate):
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

        def input_ids(self, texts):
            return [[0] * len(t.split()) for t in texts]

    spec = JobSpec(generation={}).resolved("encoder-only")
    result = process_records(Embedder(), spec, [Record(0, {"text": "a b c"}), Record(1, {"text": "dd"})])
    assert [r["embedding"] for r in result.rows] == [[5.0, 1.0], [2.0, 1.0]] and result.tokens == 4


def test_the_local_path_imports_neither_torch_nor_ray(tiny_artifact, lines, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from seqport.batch import BatchJob, JobSpec, run_job
        run_job(BatchJob({str(tiny_artifact)!r}, {str(lines)!r}, {str(tmp_path / "o.jsonl")!r}, JobSpec()))
        banned = [m for m in ("torch", "transformers", "ray") if m in sys.modules]
        assert not banned, banned
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")


def _serve_ray_call(tiny_artifact, monkeypatch, *flags: str) -> tuple:
    """The arguments `seqport serve ARTIFACT --ray FLAGS` passes to ray_app.run_on_ray (not run)."""
    from seqport.serving import cli as serve_cli
    from seqport.serving import ray_app

    runs = []
    monkeypatch.setattr(ray_app, "run_on_ray", lambda *a: runs.append(a))
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", str(tiny_artifact), "--ray", *flags])
    assert args.run(args) == 0
    return runs[0]


@pytest.mark.parametrize(("flags", "wanted"), [([], True), (["--no-huge-pages"], False)])
def test_serve_ray_passes_no_huge_pages_to_the_replicas(tiny_artifact, monkeypatch, flags, wanted):
    pytest.importorskip("starlette")
    pytest.importorskip("ray")
    from seqport.serving import ray_app

    artifact, _address, _host, _port, *deployment, huge_pages = _serve_ray_call(tiny_artifact, monkeypatch, *flags)
    assert huge_pages is wanted
    bound = ray_app.application(artifact, *deployment, huge_pages)._bound_deployment
    assert bound.init_args[-1] is wanted  # what each replica's __init__ gets


def test_serve_ray_passes_the_step_priority_and_app_builder_refuses_unknown_arguments(tiny_artifact, monkeypatch):
    pytest.importorskip("starlette")
    pytest.importorskip("ray")
    from seqport.engine.errors import ConfigError
    from seqport.serving import ray_app

    call = _serve_ray_call(tiny_artifact, monkeypatch, "--step-priority", "idle")
    artifact, _address, _host, _port, options, *deployment = call
    bound = ray_app.application(artifact, options, *deployment)._bound_deployment
    assert bound.init_args[1]["step_priority"] == "idle"  # the ServeOptions fields each replica gets

    app = ray_app.app_builder({"artifact": str(tiny_artifact), "step_priority": "idle", "prefill_lane": "off"})
    assert app._bound_deployment.init_args[1]["step_priority"] == "idle"
    with pytest.raises(ConfigError, match="unknown app_builder arguments: max_rows"):
        ray_app.app_builder({"artifact": str(tiny_artifact), "max_rows": "4"})


def test_an_artifact_by_path_is_used_in_place_and_never_removed(tmp_path):
    """batch/shipping.materialized removes only the temporary copy of a shipped artifact; a path
    on shared storage is the user's folder and stays (no Ray needed on this branch)."""
    from seqport.batch.shipping import ArtifactSource, materialized

    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "seqport.json").write_text("{}")
    with materialized(ArtifactSource(str(folder))) as got:
        assert got == folder
    assert (folder / "seqport.json").read_text() == "{}"
