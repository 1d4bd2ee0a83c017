"""`seqport bench`: the records have every field, runs are exactly N tokens, errors are clear.

No timing is asserted: the figures depend on the machine; only their presence and shape are.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import seqport.engine as sp
from seqport.cli.bench_runner import BenchPlan, exact_length_config, run_in_subprocess, synthetic_inputs
from seqport.cli.main import main
from seqport.engine.errors import SeqportError

FIGURES = ("tokenize_ms", "ttft_ms", "step_ms", "engine_overhead_ms", "generate_ms")
HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_bench_json_has_every_field(tiny_artifact, tmp_path, capsys):
    runtimes = ["onnxruntime", "torch"] if HAS_TORCH else ["onnxruntime"]
    out = tmp_path / "bench.jsonl"
    argv = ["bench", str(tiny_artifact), "--runtimes", ",".join(runtimes), "--batch-sizes", "1,3"]
    argv += ["--new-tokens", "5", "--input-length", "7", "--warmup", "1", "--repeats", "2", "--threads", "1"]
    assert main(argv + ["--json", str(out), "-q"]) == 0
    table = capsys.readouterr().out
    assert "tokens/s" in table and all(f"{r}:cpu" in table for r in runtimes)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["runtime"], r["batch"]) for r in records] == [(r, b) for r in runtimes for b in (1, 3)]
    for r in records:
        assert r["schema"] == "seqport.bench/1" and r["provider"] == "cpu"
        assert {"python", "seqport", "numpy", "onnxruntime", "tokenizers", "torch"} <= set(r["versions"])
        assert r["versions"]["onnxruntime"] and r["device"]["cpu_count"] >= 1 and "cpu" in r["device"]
        assert r["threads"]["intra_op"] == 1
        assert r["lengths"] == {"input": 7, "new_tokens": 5} and (r["warmup"], r["repeats"]) == (1, 2)
        assert r["shapes"]["kv"]["num_layers"] == 3 and r["shapes"]["vocab_size"] == 120
        assert r["shapes"]["components"]["decoder"]["inputs"]["input_ids"] == ["batch_size", "sequence_length"]
        assert r["forced_length"] == "min_new_tokens=max_new_tokens"
        for name in FIGURES:
            assert r[name]["p50"] > 0 and r[name]["p90"] >= r[name]["p50"]
        assert r["step_ms"]["n"] == 2 * (5 - 1)  # repeats × (N - 1) steps after the first token
        assert r["ttft_ms"]["n"] == 2
        assert r["load_s"] > 0 and r["tokens_per_s"] > 0
        assert 0 < r["engine_overhead_pct"] < 100 and r["engine_overhead_ms"]["n"] == r["step_ms"]["n"]
        assert r["weights"] == "float32" and r["kv_cache"] == "growing"
        assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0


def test_each_run_is_its_own_process(tiny_artifact):
    """The worker reports the RSS of a fresh process; an error in it is quoted, not lost."""
    plan = BenchPlan(str(tiny_artifact), batch=2, new_tokens=3, input_length=5, warmup=0, repeats=1)
    record = run_in_subprocess(plan)
    assert record["batch"] == 2 and record["step_ms"]["n"] == 2
    broken = BenchPlan(str(tiny_artifact), provider="tensorrt", new_tokens=3, input_length=5, warmup=0, repeats=1)
    with pytest.raises(SeqportError, match=r"bench run onnxruntime batch 1 failed: .*'tensorrt' is not available"):
        run_in_subprocess(broken)


@pytest.mark.parametrize("new_tokens", [1, 6])
def test_runs_generate_exactly_n_tokens(tiny_artifact, new_tokens):
    model = sp.load(tiny_artifact)
    inputs = synthetic_inputs(model.manifest, 3, 9)
    assert all(len(row) == 9 and row[-1] == 2 and min(row[:-1]) > 3 for row in inputs)
    results = model.generate_ids(inputs, exact_length_config(new_tokens))
    assert [len(r.ids) for r in results] == [new_tokens] * 3
    assert {r.finish_reason for r in results} == {"length"}


def test_bench_rejects_what_cannot_run_before_measuring(tiny_artifact, capsys):
    argv = ["bench", str(tiny_artifact), "--runtimes", "onnxruntime,tvm", "--new-tokens", "100", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unknown runtime 'tvm'; supported runtimes are: onnxruntime, torch" in err
    assert "need 100 positions; this model has 40: lower --input-length or --new-tokens" in err


def test_plot_needs_matplotlib_or_writes_a_png(tiny_artifact, tmp_path, capsys):
    png = tmp_path / "bench.png"
    argv = ["bench", str(tiny_artifact), "--new-tokens", "3", "--input-length", "5", "--warmup", "0"]
    code = main(argv + ["--repeats", "1", "--plot", str(png), "-q"])
    if importlib.util.find_spec("matplotlib") is None:
        assert code == 1 and "--plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err
        assert not png.exists()
    else:
        assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synthetic_inputs_avoid_specials_at_either_end(tiny_artifact):
    """Marian's pad is its last id: inputs are drawn between the specials, never on one."""
    import dataclasses

    from seqport.cli.bench_runner import synthetic_inputs
    from seqport.engine.manifest import load_manifest

    manifest = load_manifest(tiny_artifact)
    vocab = manifest.vocab_size
    marian_like = dataclasses.replace(
        manifest, special_ids=dataclasses.replace(manifest.special_ids, pad=vocab - 1, decoder_start=vocab - 1)
    )
    rows = np.asarray(synthetic_inputs(marian_like, 4, 50))
    specials = {*manifest.special_ids.eos, vocab - 1, manifest.special_ids.bos, manifest.special_ids.unk}
    assert not np.isin(rows[:, :-1], list(specials - {None})).any()
    assert (rows[:, -1] == manifest.special_ids.eos[0]).all()
