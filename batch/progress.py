"""The job's progress bar (tqdm when installed, else one plain line) and its summary line.

Both write to stderr, and the bar only on a terminal: a job whose stderr is a log file gets
the summary alone.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from seqport.batch.job_types import JobSummary


class ProgressBar:
    """Counts finished records against `total`; call it as the job's `progress` callback."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.done, self.tokens = total, 0, 0
        self.start = time.perf_counter()
        self.enabled = self.stream.isatty()
        self._tqdm: Any = None
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._tqdm = tqdm(total=total, unit="rec", file=self.stream, dynamic_ncols=True)

    def __call__(self, records: int, tokens: int) -> None:
        self.done += records
        self.tokens += tokens
        if self._tqdm is not None:
            self._tqdm.update(records)
            self._tqdm.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):.0f}")
        elif self.enabled:
            self.stream.write(f"\r{self.done}/{self.total} records, {self.tokens} tokens")
            self.stream.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            self.stream.write("\n")


def summary_line(summary: JobSummary) -> str:
    """One line: records, tokens, tokens/s, records/s and failures (and skipped shards)."""
    line = (
        f"{summary.records} records written to {summary.output}; this run: {summary.processed} records, "
        f"{summary.tokens} tokens in {summary.seconds:.1f} s ({summary.tokens_per_second:.1f} tokens/s, "
        f"{summary.records_per_second:.1f} records/s); failures: {summary.failures}"
    )
    if summary.skipped_shards:
        line += f"; {summary.skipped_shards} shards already done were skipped"
    return line
