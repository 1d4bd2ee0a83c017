"""Growing vs preallocated KV cache, side by side in one process (issues #6 and #7).

Two exports of the same model, one with `--kv-cache growing` (the decoder returns past + new:
each step copies the whole cache once more) and one with `--kv-cache preallocated` (buffers
sized for the request; the decoder writes the new slots in place through IOBinding). Both run
the same engine loop, alternately, on the same inputs:

  step      one decoder step at past lengths P (batch B): what a step costs as the cache grows;
  generate  exactly N new tokens (greedy, batch B), host loop and device loop (`device_loop=True`,
            the IOBinding path GPUs use, run here on the CPU): tokens/s, median of the repeats;
  bytes     K/V bytes each scheme writes over N steps (concatenation copies P+1 slots a step,
            in-place writes one), from the geometry.

    python benchmarks/kv_growth.py build/compare/t5/seqport-fp32 build/compare/t5/seqport-prealloc \\
        --batch-sizes 1,8 --new-tokens 64,256 --threads 2 --out benchmarks/results

writes kv_growth.json and kv_growth.md in --out. Run it on a quiet machine (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import seqport.engine as sp
from seqport.cli.bench_report import device, versions
from seqport.cli.bench_runner import plain_greedy_config, synthetic_inputs
from seqport.engine.kv_cache import KVCache

KINDS = ("growing", "preallocated")


def paired_ms(first, second, warmup: int, repeats: int) -> tuple[float, float]:
    """Median ms of two functions run alternately (first, second, first, ...), so a noisy
    neighbour slows both alike."""
    for _ in range(warmup):
        first(), second()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, times in zip((first, second), samples):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return float(np.median(samples[0]) * 1e3), float(np.median(samples[1]) * 1e3)


def step_values(model, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Logical decoder feeds (without the cache) for one new token per row."""
    m = model.manifest
    values = {
        "input_ids": np.full((batch, 1), synthetic_inputs(m, 1, 1)[0][0], dtype=np.int64),  # (B, 1)
        "logits_positions": np.zeros(1, dtype=np.int64),
    }
    if m.architecture == "encoder-decoder":
        source = np.asarray(synthetic_inputs(m, batch, min(16, m.max_positions)), dtype=np.int64)  # (B, S)
        mask = np.ones_like(source)
        values.update({k: v for k, v in model.encode(source, mask).items() if k.startswith("cross_")})
        values["encoder_attention_mask"] = mask
    return values


def cache_at(model, batch: int, past: int, rng: np.random.Generator) -> tuple[KVCache, callable]:
    """A cache holding `past` random positions, and a function that restores it to that state
    (a step grows a growing cache and fills one more slot of a preallocated one)."""
    kv = model.manifest.kv
    preallocated = kv.allocation == "preallocated"
    slots = past + 1 if preallocated else past
    shape = (batch, kv.num_kv_heads, slots, kv.head_dim)
    keys = [rng.standard_normal(shape).astype(kv.dtype) for _ in range(kv.num_layers)]
    values = [rng.standard_normal(shape).astype(kv.dtype) for _ in range(kv.num_layers)]

    def fresh() -> KVCache:
        return KVCache(list(keys), list(values), filled=past if preallocated else None)

    return fresh(), fresh


def one_step(model, batch: int, past: int):
    """A function running one decoder step after `past` cached positions."""
    rng = np.random.default_rng(past)
    values = step_values(model, batch, rng)
    if model.manifest.architecture != "encoder-decoder":
        values["attention_mask"] = np.ones((batch, past + 1), dtype=np.int64)  # P+1 slots either way
        values["position_ids"] = np.full((batch, 1), past, dtype=np.int64)
    _, fresh = cache_at(model, batch, past, rng)
    return lambda: model.run_decoder(dict(values), fresh())


def generation(model, batch: int, new: int) -> tuple[callable, list[int]]:
    """A function generating greedily (seqport.cli.bench_runner.plain_greedy_config), and the list
    it appends each run's token count to."""
    m = model.manifest
    inputs = synthetic_inputs(m, batch, min(32, m.max_positions - new))
    config = plain_greedy_config(m, new)
    produced: list[int] = []

    def run() -> None:
        produced.append(sum(len(r.ids) for r in model.generate_ids(inputs, config)))

    return run, produced


def bytes_written(model, batch: int, new: int) -> dict[str, int]:
    kv = model.manifest.kv
    per_slot = 2 * kv.num_layers * batch * kv.num_kv_heads * kv.head_dim * np.dtype(kv.dtype).itemsize
    return {"growing": per_slot * new * (new + 1) // 2, "preallocated": per_slot * new}


def table(record: dict) -> str:
    lines = [
        "# Growing vs preallocated KV cache",
        "",
        f"Measured {record['created']} on {record['device']['cpu']} ({record['device']['cpu_count']} logical "
        f"CPUs), {record['threads']} threads, by `python benchmarks/kv_growth.py {' '.join(record['argv'])}`; "
        f"family {record['family']}, median of {record['repeats']} runs (steps: 5×) after {record['warmup']} warm-up, "
        "the two artifacts alternating run by run. Growing: the decoder concatenates past + new each step; "
        "preallocated: request-sized buffers written in place (docs/manifest.md).",
        "",
        "## One decoder step (ms) by past length",
        "",
        "Isolated calls, each after engine work: onnxruntime's threads are not kept warm as in a",
        "generation loop, so these run slower than the per-token rates below; read them against each other.",
        "",
        "| batch | past | growing | preallocated | growing / preallocated |",
        "|---|---|---|---|---|",
    ]
    for row in record["steps"]:
        g, p = row["growing_ms"], row["preallocated_ms"]
        lines.append(f"| {row['batch']} | {row['past']} | {g:.2f} | {p:.2f} | {g / p:.2f}× |")
    lines += [
        "",
        "## Generation, N new tokens (tokens/s)",
        "",
        "| batch | N | loop | growing | preallocated | preallocated / growing | K/V MiB written (grow / prealloc) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in record["generate"]:
        g, p = row["growing_tps"], row["preallocated_tps"]
        written = row["bytes_written"]
        mib = f"{written['growing'] / 2**20:.1f} / {written['preallocated'] / 2**20:.1f}"
        lines.append(f"| {row['batch']} | {row['new']} | {row['loop']} | {g:.1f} | {p:.1f} | {p / g:.2f}× | {mib} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("growing", help="artifact exported with --kv-cache growing")
    parser.add_argument("preallocated", help="the same model exported with --kv-cache preallocated")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", default="64,256", help="comma-separated N for the generation runs")
    parser.add_argument("--pasts", default="0,32,128,256", help="past lengths for the step timings")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--out", default="benchmarks/results", help="folder for kv_growth.json and kv_growth.md")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    news = [int(n) for n in args.new_tokens.split(",")]
    def load(path: str, loop: str):
        return sp.load(path, options=sp.RuntimeOptions(intra_op_threads=args.threads, device_loop=loop == "device"))

    models = {
        (kind, loop): load(path, loop)
        for kind, path in (("growing", args.growing), ("preallocated", args.preallocated))
        for loop in ("host", "device")
    }
    allocations = {kind: models[(kind, "host")].manifest.kv.allocation for kind in ("growing", "preallocated")}
    if allocations != {"growing": "growing", "preallocated": "preallocated"}:
        parser.error(f"expected a growing then a preallocated artifact, got {allocations}")
    limit = models[("growing", "host")].manifest.max_positions - 1
    record = {
        "schema": "seqport.kv_growth/2",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:] if argv is None else argv,
        "family": models[("growing", "host")].manifest.family,
        "versions": versions(),
        "device": device(),
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "steps": [],
        "generate": [],
    }
    for batch in batches:
        for past in (int(p) for p in args.pasts.split(",") if int(p) <= limit):
            steps = [one_step(models[(kind, "host")], batch, past) for kind in ("growing", "preallocated")]
            grown, pre = paired_ms(*steps, args.warmup, 5 * args.repeats)
            row = {"batch": batch, "past": past, "growing_ms": grown, "preallocated_ms": pre}
            record["steps"].append(row)
            print(f"step  B={batch} P={past}: {row['growing_ms']:.2f} / {row['preallocated_ms']:.2f} ms", flush=True)
        for new in news:
            for loop in ("host", "device"):
                (run_g, made_g), (run_p, made_p) = (generation(models[(k, loop)], batch, new) for k in KINDS)
                ms_g, ms_p = paired_ms(run_g, run_p, args.warmup, args.repeats)
                row = {"batch": batch, "new": new, "loop": loop, "tokens": made_g[-1]}
                row.update(growing_tps=made_g[-1] / ms_g * 1e3, preallocated_tps=made_p[-1] / ms_p * 1e3)
                row["bytes_written"] = bytes_written(models[("growing", loop)], batch, new)
                record["generate"].append(row)
                print(f"gen   B={batch} N={new} {loop}: {row['growing_tps']:.1f} / {row['preallocated_tps']:.1f} tok/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kv_growth.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "kv_growth.md").write_text(table(record), encoding="utf-8")
    print(f"wrote {out / 'kv_growth.json'} and {out / 'kv_growth.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
