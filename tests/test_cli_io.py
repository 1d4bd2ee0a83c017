"""`seqport generate`/`embed` input and output: options between texts, --input/--output, --jsonl,
blank lines keeping their place, the progress bar, --version and one-line architecture errors.
Torch-free: the committed tiny encoder-decoder artifact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from seqport.cli.main import main


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_options_may_follow_the_texts(model, tiny_artifact, capsys):
    code, out, _ = _run(capsys, "generate", str(tiny_artifact), "--max-new-tokens", "5", "le chat",
                        "--num-beams", "2", "un chien")  # fmt: skip
    expected = model.generate(["le chat", "un chien"], max_new_tokens=5, num_beams=2)
    assert code == 0 and out.splitlines() == [r.text for r in expected]
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(tiny_artifact), "le chat", "--bogus", "x"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus x" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("seqport ")


def test_input_file_keeps_blank_lines_and_output_file(model, tiny_artifact, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("le chat\n\nun chien\n   \n", encoding="utf-8")
    target = tmp_path / "out.txt"
    code, out, _ = _run(capsys, "generate", str(tiny_artifact), "--input", str(source), "--output", str(target),
                        "--max-new-tokens", "4")  # fmt: skip
    expected = [r.text for r in model.generate(["le chat", "un chien"], max_new_tokens=4)]
    assert code == 0 and out == ""
    assert target.read_text(encoding="utf-8").split("\n") == [expected[0], "", expected[1], "", ""]


def test_jsonl_in_and_out_one_record_per_line(model, tiny_artifact, tmp_path, capsys):
    lines = [{"text": "le chat"}, {"ids": [20, 21, 2]}, {"text": ""}, {"text": "un chien", "id": 7}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    code, out, _ = _run(capsys, "generate", str(tiny_artifact), "--jsonl", "--input", str(source),
                        "--max-new-tokens", "5")  # fmt: skip
    records = [json.loads(line) for line in out.splitlines()]
    ids = model.input_ids(["le chat"]) + [[20, 21, 2]] + model.input_ids(["un chien"])
    expected = model.generate(ids, max_new_tokens=5)
    assert code == 0 and len(records) == 4
    assert [records[i]["ids"] for i in (0, 1, 3)] == [r.ids for r in expected]
    assert [records[i]["text"] for i in (0, 1, 3)] == [r.text for r in expected]
    assert records[2] == {"text": "", "ids": [], "score": 0.0, "finish_reason": "empty_input"}
    source.write_text('{"text": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    code, _, err = _run(capsys, "generate", str(tiny_artifact), "--jsonl", "--input", str(source))
    assert code == 1 and 'line 2: each object needs "text" (a string) or "ids"' in err


def test_stdin_lines_and_stream_keep_alignment(model, tiny_artifact):
    """A blank line keeps its place and does not shift the seeds: the k-th non-blank input samples
    with seed + k, streamed or not."""
    command = [sys.executable, "-m", "seqport.cli", "generate", str(tiny_artifact), "--max-new-tokens", "4",
               "--do-sample", "--seed", "5", "--temperature", "1.5"]  # fmt: skip
    sampled = model.generate(["le chat", "un chien"], max_new_tokens=4, do_sample=True, seed=5, temperature=1.5)
    expected = [r.text for r in sampled]
    for extra in ([], ["--stream"]):
        done = subprocess.run(command + extra, input=b"le chat\n\nun chien\n", capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().split("\n") == [expected[0], "", expected[1], ""]


def test_progress_bar_changes_nothing_but_stderr(model, tiny_artifact, capsys):
    texts = ["le chat", "un chien", "le chien", "un chat", "le tapis"]
    sample = ["--do-sample", "--seed", "3", "--max-new-tokens", "5", "--batch-size", "2"]
    code, out, err = _run(capsys, "generate", str(tiny_artifact), *texts, *sample, "--progress")
    expected = model.generate(texts, do_sample=True, seed=3, max_new_tokens=5)
    assert code == 0 and out.splitlines() == [r.text for r in expected]
    assert "2/5 [" in err  # tqdm's bar, by --batch-size chunks (seeds follow the input index)
    code, _, err = _run(capsys, "generate", str(tiny_artifact), *texts, *sample, "--no-progress")
    assert code == 0 and err == ""


def test_wrong_architecture_is_one_line(tiny_artifact, capsys):
    for verb in ("embed", "classify"):
        code, _, err = _run(capsys, verb, str(tiny_artifact), "le chat")
        assert code == 1 and len(err.strip().splitlines()) == 1
        assert f"is an encoder-decoder artifact, which generates text; `seqport {verb}` needs an encoder-only" in err
    code, _, err = _run(capsys, "generate", str(tiny_artifact), "le chat", "--chat")
    assert code == 1 and "--chat needs a decoder-only artifact" in err
    code, _, err = _run(capsys, "chat", str(tiny_artifact))
    assert code == 1 and "`seqport chat` needs a decoder-only one" in err
