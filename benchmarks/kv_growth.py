"""How much does growing the KV cache by concatenation cost? (issue #6)

Today the decoder graph concatenates past and new K/V inside the graph and returns `present`
(B, H, P+T, D) for every layer, so step t copies the whole cache: O(t) bytes per step and O(N²)
over N steps. The alternative is a buffer allocated once for the longest sequence and written
in place (O(1) per step), which needs a graph that takes the whole buffer plus the past length
(onnxruntime's GroupQueryAttention with a shared past/present buffer does this).

This script measures, on one artifact's geometry:

  step    one real decoder step (public API: model.decoder_step) at growing past lengths P: how
          the step time grows with P (attention over P positions + the in-graph concat).
  copy    the cache traffic alone over N steps, in numpy, three ways:
            concat          np.concatenate(past, new) per layer per step (what the graph does);
            prealloc+view   write into a preallocated (B, H, N, D) buffer, then make the (B, H, t, D)
                            view contiguous (what feeding a buffer slice to a runtime costs);
            prealloc        write in place only (a graph that reads the whole buffer + length).

Compare the `copy` totals with N × the step time to see how much of generation the concat
costs at that length. Run it when the machine is quiet (docs/benchmarks.md):

    python benchmarks/kv_growth.py ARTIFACT --batch 1 --steps 256 --json kv.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import seqport.engine as sp
from seqport.engine.benchmark import device, synthetic_inputs, versions


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50": round(float(np.median(ms)), 4), "p90": round(float(np.percentile(ms, 90)), 4)}


def timed(fn, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def step_feeds(model, batch: int, past: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Logical decoder feeds for one new token after `past` random cached positions."""
    m = model.manifest
    kv = m.kv
    cache = rng.standard_normal((batch, kv.num_kv_heads, past, kv.head_dim)).astype(kv.dtype)  # (B, H, P, D)
    feeds = {f"past_{kind}.{i}": cache for i in range(kv.num_layers) for kind in ("key", "value")}
    feeds["input_ids"] = np.full((batch, 1), synthetic_inputs(m, 1, 1)[0][0], dtype=np.int64)  # (B, 1)
    feeds["logits_positions"] = np.zeros(1, dtype=np.int64)
    if m.architecture == "encoder-decoder":
        source = np.asarray(synthetic_inputs(m, batch, min(16, m.max_positions)), dtype=np.int64)  # (B, S)
        mask = np.ones_like(source)
        encoded = model.encode(source, mask)
        feeds.update({k: v for k, v in encoded.items() if k.startswith("cross_")})
        feeds["encoder_attention_mask"] = mask
    else:
        feeds["attention_mask"] = np.ones((batch, past + 1), dtype=np.int64)  # (B, P+1)
        feeds["position_ids"] = np.full((batch, 1), past, dtype=np.int64)  # (B, 1)
    return feeds


def measure_steps(model, batch: int, warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    limit = model.manifest.max_positions - 1
    lengths = sorted({p for p in (0, 8, 32, 128, 512, 2048) if p <= limit} | {limit})
    results = {}
    for past in lengths:
        feeds = step_feeds(model, batch, past, rng)
        results[str(past)] = timed(lambda feeds=feeds: model.decoder_step(feeds), warmup, repeats)
    return results


def grow(strategy: str, shape: tuple[int, int, int, int], layers: int, steps: int) -> None:
    """Grow `layers` × (key, value) caches of (B, H, ·, D) by one position per step."""
    batch, heads, _, dim = shape
    new = np.ones((batch, heads, 1, dim), dtype=np.float32)  # (B, H, 1, D)
    if strategy == "concat":
        caches = [np.zeros((batch, heads, 0, dim), np.float32) for _ in range(2 * layers)]
        for _ in range(steps):
            caches = [np.concatenate([c, new], axis=2) for c in caches]  # (B, H, t+1, D): copies t+1
        return
    buffers = [np.empty((batch, heads, steps, dim), np.float32) for _ in range(2 * layers)]  # (B, H, N, D)
    for t in range(steps):
        for buffer in buffers:
            buffer[:, :, t : t + 1] = new
            if strategy == "prealloc+view":
                np.ascontiguousarray(buffer[:, :, : t + 1])  # (B, H, t+1, D) view → contiguous copy


def measure_copies(model, batch: int, steps: int, warmup: int, repeats: int) -> dict[str, dict]:
    kv = model.manifest.kv
    shape = (batch, kv.num_kv_heads, steps, kv.head_dim)
    item = np.dtype(kv.dtype).itemsize
    per_position = 2 * kv.num_layers * batch * kv.num_kv_heads * kv.head_dim * item  # bytes per cached position
    copied = {
        "concat": per_position * steps * (steps + 1) // 2,
        "prealloc+view": per_position * (steps + steps * (steps + 1) // 2),
        "prealloc": per_position * steps,
    }
    return {
        name: {
            "total_ms": timed(lambda name=name: grow(name, shape, kv.num_layers, steps), warmup, repeats),
            "bytes_copied": copied[name],
        }
        for name in copied
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="a generating artifact folder (encoder-decoder or decoder-only)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=256, help="N: cache positions grown in the copy test")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime decides)")
    parser.add_argument("--json", metavar="FILE", help="append the record (one JSON line)")
    args = parser.parse_args(argv)
    model = sp.load(args.artifact, options=sp.RuntimeOptions(intra_op_threads=args.threads))
    record = {
        "schema": "seqport.kv_growth/1",
        "artifact": args.artifact,
        "family": model.manifest.family,
        "versions": versions(),
        "device": device(),
        "threads": args.threads,
        "batch": args.batch,
        "lengths": {"steps": args.steps, "max_positions": model.manifest.max_positions},
        "kv": {
            "num_layers": model.manifest.kv.num_layers,
            "num_kv_heads": model.manifest.kv.num_kv_heads,
            "head_dim": model.manifest.kv.head_dim,
            "dtype": model.manifest.kv.dtype,
        },
        "warmup": args.warmup,
        "repeats": args.repeats,
        "step_ms_by_past": measure_steps(model, args.batch, args.warmup, args.repeats),
        "copy": measure_copies(model, args.batch, args.steps, args.warmup, args.repeats),
    }
    print("decoder step (ms p50/p90) by past length:")
    for past, figures in record["step_ms_by_past"].items():
        print(f"  P={past:>5}: {figures['p50']:.3f}/{figures['p90']:.3f}")
    print(f"cache growth over {args.steps} steps (ms p50/p90, MiB copied):")
    for name, figures in record["copy"].items():
        total = figures["total_ms"]
        print(f"  {name:>14}: {total['p50']:.2f}/{total['p90']:.2f}  {figures['bytes_copied'] / 2**20:.1f}")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
