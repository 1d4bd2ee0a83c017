"""benchmarks/peers/rounds.py: compare.py's interleaved rounds, with fake runners (no model, < 2 s).

The order test uses in-process fakes; the protocol test starts one real runner process whose
"system" is a sleep, through common.run, so Worker and common.serve_rounds are tested together.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
import report  # noqa: E402
import rounds  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks" / "peers"))


class FakeWorker:
    def __init__(self, name: str, log: list[str], fail_at: int | None = None):
        self.name, self.log, self.fail_at, self.done = name, log, fail_at, 0

    def round(self) -> dict:
        self.log.append(self.name)
        self.done += 1
        if self.done == self.fail_at:
            raise RuntimeError(f"{self.name} broke")
        return {"round": self.done, "tokens_per_s": 10.0 * self.done}

    def finish(self) -> dict:
        return {}


def test_rounds_visit_every_system_once_per_round_starting_one_later():
    log: list[str] = []
    workers = [FakeWorker(n, log) for n in "abc"]
    replies, failed = rounds.interleave(workers, 4)
    assert log == list("abc" "bca" "cab" "abc")
    assert failed == {}
    assert [r["round"] for r in replies["b"]] == [1, 2, 3, 4]


def test_a_failing_worker_is_dropped_and_the_others_go_on():
    log: list[str] = []
    workers = [FakeWorker("a", log), FakeWorker("b", log, fail_at=2), FakeWorker("c", log)]
    replies, failed = rounds.interleave(workers, 3)
    assert log == list("abc" "bca" "ca")
    assert failed == {"b": "b broke"} and len(replies["a"]) == len(replies["c"]) == 3


def test_spread_and_same_round_ratios():
    ours = {"rounds": [{"tokens_per_s": 90.0}, {"tokens_per_s": 110.0}, {"tokens_per_s": 100.0}]}
    eager = {"rounds": [{"tokens_per_s": 30.0}, {"tokens_per_s": 50.0}, {"tokens_per_s": 40.0}]}
    assert rounds.spread(ours["rounds"]) == {"min": 90.0, "max": 110.0, "spread_pct": 20.0}
    assert report.round_ratios(ours, eager, "tokens_per_s") == [3.0, 2.2, 2.5]


FAKE_RUNNER = """
import sys, time
sys.path.insert(0, {peers!r})
from common import read_plan, run

def load():
    def generate(inputs, n):
        time.sleep(0.002 * n)
        return [n] * len(inputs)
    return generate

run(load, read_plan(), ())
"""


@pytest.fixture
def fake_runner(tmp_path) -> tuple[list[str], Path]:
    script = tmp_path / "run_fake.py"
    script.write_text(textwrap.dedent(FAKE_RUNNER.format(peers=str(ROOT / "benchmarks" / "peers"))))
    plan = {"inputs": [[1, 2], [3, 4]], "new_tokens": 5, "warmup": 1, "repeats": 99, "interleave": True}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    return [sys.executable, str(script), str(tmp_path / "plan.json")], tmp_path


def test_a_worker_process_times_one_round_per_request(fake_runner):
    command, _ = fake_runner
    worker = rounds.Worker("fake", command, timeout=30)
    try:
        first = [worker.round(), worker.round()]
        record = worker.finish()
    finally:
        worker.close()
    assert [r["round"] for r in first] == [1, 2]
    assert all(r["generate_ms"] >= 10 and r["tokens_per_s"] > 0 for r in first)
    assert len(record["rounds"]) == record["generate_ms"]["n"] == 2  # the plan's repeats do not count
    assert record["generate_ms"]["p50"] > record["first_token_ms"]["p50"] and record["peak_rss_mb"] > 0
    assert worker.process.returncode == 0


def test_a_dead_worker_is_an_error_that_names_it(fake_runner):
    command, tmp_path = fake_runner
    (tmp_path / "plan.json").write_text("{}")  # the runner dies on a KeyError before it is ready
    with pytest.raises(RuntimeError, match=r"fake gave no 'ready' reply .*KeyError"):
        rounds.Worker("fake", command, timeout=30)


def test_a_busy_machine_is_noted_beside_the_group():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    try:
        import compare
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.path.remove(str(ROOT / "benchmarks" / "peers"))
    busy = [{"load_average": {"rounds_start": [1.0, 1.0, 1.0], "rounds_end": [99.0, 9.0, 9.0]}}]
    quiet = [{"load_average": {"rounds_start": [0.1, 0.1, 0.1], "rounds_end": [0.2, 0.1, 0.1]}}]
    assert compare._busy_note("gpt2", 8, quiet) == []
    (note,) = compare._busy_note("gpt2", 8, busy)
    assert note.startswith("gpt2 batch 8: 1-minute load average up to 99.0") and "not a fair comparison" in note


def test_float32_speed_targets_take_the_best_float32_variant_and_rss_the_plain_export():
    """A fused export counts for the speed targets (it is float32), never for peak RSS."""

    def record(system, variant, speed, rss):
        return {"model": "t5", "batch": 1, "status": "ok", "system": system, "variant": variant}, {
            "tokens_per_s": speed,
            "peak_rss_mb": rss,
        }

    rows = [
        record("seqport", "fp32", 100.0, 300.0),
        record("seqport", "optimized-fused", 130.0, 280.0),
        record("seqport", "int8", 400.0, 150.0),
        record("optimum", "fp32", 100.0, 1000.0),
        record("ctranslate2", "fp32", 120.0, 290.0),
        record("pytorch", "eager", 50.0, 600.0),
    ]
    lines = report._targets([{**a, **b} for a, b in rows], ["t5"])
    optimum = next(line for line in lines if "1.2× Optimum" in line)
    assert "130.0 (optimized-fused)" in optimum and "1.30×" in optimum and "| yes |" in optimum
    rss = next(line for line in lines if "peak RSS" in line)
    assert "300.0 (fp32)" in rss  # not the fused export's 280
