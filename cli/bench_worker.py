"""`python -m seqport.cli.bench_worker PLAN_JSON`: measure one bench plan in this fresh process.

`seqport bench` (seqport.cli.bench_runner.run_in_subprocess) starts one such process per
(runtime, batch size), so each run's peak RSS is its own. Prints one JSON record on stdout; an
error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys

from seqport.cli.bench_runner import BenchPlan, measure
from seqport.engine.errors import SeqportError


def main(argv: list[str]) -> int:
    """Measure the plan given as JSON in argv[0]; returns the exit status."""
    try:
        record = measure(BenchPlan(**json.loads(argv[0])))
    except SeqportError as exc:
        print(f"seqport: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
