"""Huge pages under the weights against 4 KiB pages, side by side in one process (issue #16).

The artifact is loaded twice, once with `RuntimeOptions(huge_pages=False)` and once with the
default (engine/huge_pages.py moves the sessions' memory onto 2 MiB pages), and the two models
generate exactly N tokens in turn, the order swapped every round, so both see the same minutes
of a machine whose memory bandwidth drifts (docs/benchmarks.md, "Ninth session"). One artifact
per process: a second load in the same process may reuse memory an earlier model freed, which
was mapped before that load and so stays as it was (engine/huge_pages.py).

    python benchmarks/huge_pages.py ARTIFACT --label NAME --batch-sizes 1,8 --rounds 8 \\
        --threads 2 --out benchmarks/results

writes huge_pages-NAME.json and huge_pages-NAME.md in --out. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import seqport.engine as sp
from seqport.cli.bench_report import device, versions
from seqport.cli.bench_runner import synthetic_inputs
from seqport.engine.huge_pages import unavailable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_report import cpu_flags  # noqa: E402


def _resident(field: str) -> int:
    """A field of /proc/self/smaps_rollup, MiB."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def measure(models: dict, batch: int, args: argparse.Namespace) -> dict:
    """Tokens/s of the two loads ("4k", "huge") per round at `batch`, and their ratio per round."""
    inputs = synthetic_inputs(models["4k"].manifest, batch, args.prompt_tokens)
    config = sp.GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    rates: dict[str, list[float]] = {"4k": [], "huge": []}
    for model in models.values():
        model.generate_ids(inputs, config)  # warm-up
    for r in range(args.rounds):
        for name in ("4k", "huge") if r % 2 == 0 else ("huge", "4k"):
            start = time.perf_counter()
            models[name].generate_ids(inputs, config)
            rates[name].append(batch * args.new_tokens / (time.perf_counter() - start))
    per_round = [h / s for s, h in zip(rates["4k"], rates["huge"])]
    return {
        "batch": batch,
        "tokens_per_s": {name: round(statistics.median(v), 1) for name, v in rates.items()},
        "ratio": round(statistics.median(rates["huge"]) / statistics.median(rates["4k"]), 3),
        "ratio_per_round": [round(x, 3) for x in per_round],
    }


def markdown(meta: dict, rows: list[dict]) -> str:
    flags = ", ".join(f for f, on in meta["cpu_flags"].items() if on)
    lines = [
        "# Huge pages under the weights: 4 KiB pages against huge pages, one process",
        "",
        f"{meta['date']}; {meta['device']['cpu']}, {meta['device']['cpu_count']} CPUs ({flags}); "
        f"{meta['threads']} threads; {meta['prompt_tokens']} prompt ids, exactly {meta['new_tokens']} new, "
        f"greedy; {meta['rounds']} rounds, the order swapped each round; load average {meta['load_before']} "
        f"before, {meta['load_after']} after. `python benchmarks/huge_pages.py` (docs/benchmarks.md).",
        "",
        f"Artifact `{meta['artifact']}`; {meta['mib_on_huge_pages']} MiB of the second load's memory on huge pages.",
        "",
        "| batch | tokens/s 4 KiB pages | tokens/s huge pages | ratio | per round |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        rounds = ", ".join(f"{x:.2f}" for x in r["ratio_per_round"])
        lines.append(
            f"| {r['batch']} | {r['tokens_per_s']['4k']} | {r['tokens_per_s']['huge']} | {r['ratio']:.3f} | {rounds} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--label", default="", help="suffix of the result files (huge_pages-LABEL.md)")
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if (reason := unavailable()) is not None:
        sys.exit(f"no huge pages for weights here: {reason}")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    options = {"intra_op_threads": args.threads}
    models = {"4k": sp.load(args.artifact, "cpu", options=sp.RuntimeOptions(**options, huge_pages=False))}
    before = _resident("AnonHugePages")
    models["huge"] = sp.load(args.artifact, "cpu", options=sp.RuntimeOptions(**options))
    on_huge_pages = _resident("AnonHugePages") - before
    rows = [measure(models, int(b), args) for b in args.batch_sizes.split(",")]
    meta = {
        "artifact": args.artifact,
        "mib_on_huge_pages": on_huge_pages,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device(),
        "cpu_flags": cpu_flags(),
        "versions": versions(),
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "load_before": " ".join(load_before),
        "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"huge_pages-{args.label}" if args.label else "huge_pages"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(meta, rows))
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
