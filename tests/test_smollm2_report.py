"""benchmarks/smollm2.py's arithmetic, on made-up records: the agreement column and the issue
#16 target verdicts (which seqport variant counts, met or missed). No model runs, no timing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import llm_report
        import smollm2

        yield smollm2, llm_report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.path.remove(str(ROOT / "benchmarks" / "peers"))


def _record(system, variant, batch, tokens_per_s, rss=500.0, kind="throughput", **extra):
    record = {"system": system, "variant": variant, "batch": batch, "kind": kind, "status": "ok", "note": ""}
    record.update(tokens_per_s=tokens_per_s, peak_rss_mb=rss, ms_per_step=1e3 * batch / tokens_per_s)
    record.update(first_token_ms={"p50": 100.0}, generate_ms={"p50": 1000.0}, input_tokens=32, **extra)
    return record


def test_agreement_is_the_fraction_of_positions_equal_to_the_reference(modules):
    smollm2, _ = modules
    records = [
        _record("pytorch", "eager", 1, 10.0, agreement_ids=[[1, 2, 3, 4], [5, 6]]),
        _record("genai", "int4", 1, 50.0, agreement_ids=[[1, 2, 9, 9], [5, 6]]),
        _record("seqport", "int4", 1, 60.0, agreement_ids=[[1, 2, 3, 4], [5, 0]]),
    ]
    smollm2.add_agreement(records)
    assert [r["agreement"] for r in records] == [1.0, round(4 / 6, 4), round(5 / 6, 4)]


def test_targets_pick_the_best_variant_and_say_met_or_missed(modules):
    _, report = modules
    records = [
        _record("genai", "fp32", 1, 40.0, rss=800.0),
        _record("genai", "int4", 1, 100.0, agreement=0.8),
        _record("seqport", "fp32", 1, 40.0, rss=700.0),
        _record("seqport", "fused", 1, 46.0, rss=900.0),
        _record("seqport", "int8", 1, 200.0, agreement=0.5),  # faster, but agrees less than GenAI int4
        _record("seqport", "int4", 1, 90.0, agreement=0.85),
    ]
    lines = "\n".join(report.targets(records, [1]))
    assert "| fp32 ≥ 1.1× GenAI fp32 | 1 | fused | 1.15× (met) |" in lines
    assert "| fp32 peak RSS ≤ GenAI fp32 | 1 | fused | 1.12× (missed) |" in lines
    assert "| 1 | int4 | 0.90× (missed) |" in lines  # int8 does not count: its agreement is below GenAI's


def test_cpu_flags_name_the_kernel_extensions(modules):
    _, report = modules
    flags = report.cpu_flags()
    assert set(flags) == set(report.FLAGS) and all(isinstance(v, bool) for v in flags.values())


def test_compare_models_smollm2_runs_the_llm_benchmark_with_the_shared_settings(modules, monkeypatch, tmp_path):
    smollm2, _ = modules
    import compare

    seen: list[list[str]] = []
    monkeypatch.setattr(smollm2, "main", lambda argv: seen.append(argv) or 0)
    status = compare.main(["--models", "smollm2", "--batch-sizes", "1,8", "--threads", "2", "--out", str(tmp_path),
                           "--smollm2-args", "--genai-python /venv/bin/python --long ''"])
    assert status == 0 and len(seen) == 1
    argv = seen[0]
    assert argv[argv.index("--batch-sizes") + 1] == "1,8" and argv[argv.index("--out") + 1] == str(tmp_path)
    assert argv[-4:] == ["--genai-python", "/venv/bin/python", "--long", ""]


def test_long_context_decode_is_timed_inside_the_n_token_call(modules, monkeypatch):
    """peers/common.py with decode_in_call: the N-token call goes through the runner's split and
    the record's decode_ms_per_step is (call − its first token) / (N − 1), whatever the separate
    1-token call took; without a split (or the flag) the protocol is the old one."""
    import common

    calls: list[int] = []

    def generate(inputs, n):
        calls.append(n)
        return [n] * len(inputs)

    def split(inputs, n):  # first token after 2.0 s, then 0.01 s per step
        calls.append(-n)
        return 2.0, 2.0 + 0.01 * (n - 1)

    plan = {"inputs": [[1, 2, 3]], "new_tokens": 11, "warmup": 1, "repeats": 3, "decode_in_call": True}
    record = common.measure(generate, plan, split)
    assert calls == [-11, 1] * 4 and record["decode_ms_per_step"]["p50"] == pytest.approx(10.0)
    assert record["generate_ms"]["p50"] == pytest.approx(2100.0)
    calls.clear()
    ticks = iter(range(100))  # a clock that advances 1 s per reading: every generate call takes 1 s
    monkeypatch.setattr(common.time, "perf_counter", lambda: float(next(ticks)))
    assert "decode_ms_per_step" not in common.measure(generate, {**plan, "decode_in_call": False}, split)
    assert calls == [11, 1] * 4


def test_long_context_targets_read_the_in_call_decode(modules):
    _, report = modules
    records = [
        _record("genai", "int4", 1, 100.0, kind="long"),
        _record("seqport", "int4-sym-pre", 1, 100.0, kind="long"),
    ]
    records[0].update(input_tokens=2048, ms_per_step=10.0, decode_ms_per_step={"p50": 12.0})
    records[1].update(input_tokens=2048, ms_per_step=12.0, decode_ms_per_step={"p50": 11.0})
    lines = "\n".join(report.targets(records, []))
    assert "| 2048-token decode ≥ 1.0× GenAI int4 | 1 | int4-sym-pre | 1.09× (met) |" in lines
    table = "\n".join(report._long(records))
    assert "| 2048 | seqport | int4-sym-pre | 100 | 90.9 | 83.3 | 500 |" in table


def test_interleaved_rounds_carry_the_in_call_decode(modules, capsys):
    """common.serve_rounds (smollm2.py's long context runs in interleaved rounds): each round's
    reply has its in-call decode ms per step, and the record their median."""
    import common

    steps = iter([0.02, 0.01, 0.03, 0.05])  # warm-up, then three rounds: s per step after the first token

    def split(inputs, n):
        return 1.0, 1.0 + next(steps) * (n - 1)

    plan = {"inputs": [[4, 5]], "new_tokens": 9, "warmup": 1, "decode_in_call": True}
    record = common.serve_rounds(lambda inputs, n: [n] * len(inputs), plan, ["round"] * 3 + ["finish"], split)
    assert [r["decode_ms_per_step"] for r in record["rounds"]] == pytest.approx([10.0, 30.0, 50.0])
    assert record["decode_ms_per_step"]["p50"] == pytest.approx(30.0)
    assert '"round": 3' in capsys.readouterr().out


def test_interleaved_targets_show_the_same_round_ratios_and_rounds_met(modules):
    _, report = modules
    rounds = lambda *speeds: [{"tokens_per_s": v, "first_token_ms": 100.0} for v in speeds]  # noqa: E731
    records = [
        _record("genai", "fp32", 1, 40.0, rounds=rounds(40.0, 50.0, 40.0)),
        _record("seqport", "fused", 1, 46.0, rounds=rounds(46.0, 50.0, 48.0)),
    ]
    lines = "\n".join(report.targets(records, [1]))
    # 46/40 = 1.15 of the medians; rounds 1.15, 1.00 and 1.20: two of three meet 1.1 alone
    assert "| fused | 1.15× (met); same-round 1.00–1.20×, met in 2 of 3 rounds |" in lines


def test_same_round_ratios_need_rounds_on_both_sides_and_invert_for_times(modules):
    import report as peers_report  # benchmarks/peers/report.py, which llm_report uses

    ours = {"rounds": [{"decode_ms_per_step": 10.0}, {"decode_ms_per_step": 20.0}]}
    peer = {"rounds": [{"decode_ms_per_step": 12.0}, {"decode_ms_per_step": 18.0}]}
    assert peers_report.round_ratios(ours, peer, "decode_ms_per_step", invert=True) == [1.2, 0.9]
    assert peers_report.round_ratios(ours, {"rounds": peer["rounds"][:1]}, "decode_ms_per_step") == []
    assert peers_report.round_ratios(ours, None, "decode_ms_per_step") == []
    one_missing = {"rounds": [{}, {"decode_ms_per_step": 18.0}]}  # a round without the field is left out
    assert peers_report.round_ratios(ours, one_missing, "decode_ms_per_step") == [1.111]


def test_a_long_context_only_report_has_no_empty_throughput_table(modules):
    _, report = modules
    long = dict(kind="long", decode_ms_per_step={"p50": 12.0})
    records = [_record("seqport", "int4-sym-pre", 1, 80.0, **long), _record("genai", "int4", 1, 85.0, **long)]
    for r in records:
        r["input_tokens"] = 2048
    text = report.markdown({"settings": {"long_new": 128, "long_repeats": 6}}, records)
    assert "\n| system | variant |" not in text and "Agreement:" not in text
    assert "median of 6 interleaved rounds" in text and "| 2048 | genai | int4 |" in text
