"""Interleaved rounds: one loaded worker process per system, asked for one timed round in turn.

compare.py used to run each system's repeats as one block, so a slow minute on a shared machine
hit one system only and moved its ratios by 10-25 %. Here every system is loaded (and warmed up)
once, in its own process, and then round r asks each worker for one round, starting at worker
r mod k, so no system always runs first or right after the same neighbour. The medians per
system then come from the same minutes, and each round's figures give the spread.

`run_rounds` is what compare.py and smollm2.py call: it loads one worker per system, runs the
rounds and fills each system's record. Stdlib only. The runner side of the protocol is
common.serve_rounds.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

PEERS = Path(__file__).resolve().parent
#: seconds between two systems' turns: OpenMP threads spin up to 200 ms after their work
#: (KMP_BLOCKTIME), which would steal a core from the next system on a 2-core machine.
SETTLE_S = 0.3


class RoundWorker(Protocol):
    """What `interleave` needs of a worker (a `Worker`, or a fake in tests)."""

    name: str

    def round(self) -> dict[str, Any]: ...

    def finish(self) -> dict[str, Any]: ...


class Worker:
    """One runner process in interleaved mode (plan["interleave"] = True), loaded and warmed up.

    Two threads drain its stdout (JSON lines, into a queue) and stderr (last lines kept), so a
    chatty library can never fill a pipe and stall the runner.

    Args:
        name: what error messages call it, e.g. "seqport int8".
        command: the runner's command line, PLAN.json last.
        timeout: seconds allowed for loading, for one round and for the final record.
        env: the runner's environment.

    Raises:
        RuntimeError: the runner died, timed out or never said what was asked.
    """

    def __init__(self, name: str, command: Sequence[str], timeout: float, env: dict[str, str] | None = None):
        self.name, self.timeout = name, timeout
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=3)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._reply("ready")

    def round(self) -> dict[str, Any]:
        """One timed round: {"round", "generate_ms", "first_token_ms", "tokens_per_s"}."""
        return self._ask("round", "round")

    def finish(self) -> dict[str, Any]:
        """The runner's record (its last line); the process has exited."""
        record = self._ask("finish", "peak_rss_mb")  # only the final record has it
        self.process.wait(self.timeout)
        return record

    def close(self) -> None:
        """Kill the runner if it still runs (after a failure elsewhere)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # end of stdout: the runner has exited

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line.rstrip("\n"))

    def _ask(self, command: str, key: str) -> dict[str, Any]:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the runner has died: _reply says why
        return self._reply(key)

    def _reply(self, key: str) -> dict[str, Any]:
        """The next JSON line with `key` on the runner's stdout (other lines are library chatter)."""
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("{") and key in (reply := json.loads(line)):
                return reply
        self.close()
        time.sleep(0.1)  # let the stderr thread read the last lines
        why = " | ".join(self._stderr) or f"exit status {self.process.returncode}"
        raise RuntimeError(f"{self.name} gave no {key!r} reply within {self.timeout:g} s: {why}"[:600])


def interleave(
    workers: Sequence[RoundWorker], rounds: int, settle_s: float = 0.0
) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Ask every worker for `rounds` rounds, round-robin, starting one worker later each round.

    A worker that fails is dropped from the later rounds; the others go on.

    Args:
        workers: loaded workers, in the order of round 0.
        rounds: how many timed rounds each worker runs.
        settle_s: pause before each turn, so threads that spin after their own work (OpenMP's
            block time, onnxruntime's spinning) are idle before the next system is timed.

    Returns:
        (worker name → its round replies in round order, worker name → why it failed).
    """
    replies: dict[str, list[dict]] = {w.name: [] for w in workers}
    failed: dict[str, str] = {}
    for r in range(rounds):
        start = r % len(workers) if workers else 0
        for worker in [*workers[start:], *workers[:start]]:
            if worker.name in failed:
                continue
            time.sleep(settle_s)
            try:
                replies[worker.name].append(worker.round())
            except RuntimeError as exc:
                failed[worker.name] = str(exc)
    return replies, failed


def spread(rounds: Sequence[dict[str, Any]], field: str = "tokens_per_s") -> dict[str, float]:
    """min, max and (max − min) / median in percent of one field over a worker's rounds."""
    values = sorted(r[field] for r in rounds)
    middle = values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1 :][:2]) / 2
    return {
        "min": round(values[0], 2),
        "max": round(values[-1], 2),
        "spread_pct": round(100 * (values[-1] - values[0]) / middle, 1) if middle else 0.0,
    }


def runner_env() -> dict[str, str]:
    """The runners' environment: CT2_USE_MKL dropped (MKL on AMD is far slower, peers.md)."""
    return {k: v for k, v in os.environ.items() if k != "CT2_USE_MKL"}


def run_rounds(label: str, jobs: list[tuple[dict, str, str, dict]], repeats: int, timeout: float) -> None:
    """Load one worker per job, run `repeats` interleaved rounds, fill each job's record.

    Args:
        label: what the progress lines on stderr start with, e.g. "[t5 batch 1]".
        jobs: (record, python, runner script under benchmarks/peers, plan) per system; the
            record gets the runner's final record, its rounds' spread and the load average, or
            status "failed" with why.
        repeats: timed rounds per system.
        timeout: seconds allowed for a load, a round and the final record.
    """
    workers: list[tuple[dict, Worker]] = []
    with tempfile.TemporaryDirectory() as plans:
        try:
            for i, (record, python, script, plan) in enumerate(jobs):
                name = f"{record['system']} {record['variant']}"
                print(f"{label} loading {name}", file=sys.stderr)
                path = Path(plans) / f"plan{i}.json"
                path.write_text(json.dumps({**plan, "interleave": True}))
                command = [python, str(PEERS / script), str(path)]
                try:
                    workers.append((record, Worker(name, command, timeout, runner_env())))
                except RuntimeError as exc:
                    record.update(status="failed", note=str(exc))
            print(f"{label} {repeats} rounds over {len(workers)} systems", file=sys.stderr)
            start = os.getloadavg()
            _, failed = interleave([w for _, w in workers], repeats, SETTLE_S)
            load = {"rounds_start": [round(x, 2) for x in start], "rounds_end": [round(x, 2) for x in os.getloadavg()]}
            for record, worker in workers:
                _finish(record, worker, failed.get(worker.name))
                record["load_average"] = load  # 1, 5, 15 min: other work on the machine during the rounds
        finally:
            for _, worker in workers:
                worker.close()


def _finish(record: dict, worker: Worker, failure: str | None) -> None:
    """The worker's record (its rounds and their spread), or a failed row."""
    try:
        if failure:
            raise RuntimeError(failure)
        record.update(worker.finish())
        record["round_spread"] = spread(record["rounds"])
    except RuntimeError as exc:
        record.update(status="failed", note=str(exc))
