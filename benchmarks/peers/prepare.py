"""Build one shape's artifacts for the comparison (main venv: torch, transformers, seqport[export]).

    python benchmarks/peers/prepare.py PLAN.json

PLAN: {"shape", "quick", "work", "seqport_variants": [...], "ctranslate2": [...]}. Writes, under
work/SHAPE/: hf/ (a seeded random HuggingFace folder, the one source of every system), seqport-VARIANT/
(seqport's exporter, public API `export_model`), ct2-TYPE/ (ctranslate2's TransformersConverter).
Everything is reused when work/SHAPE/key.json matches the plan. Prints one JSON line: per system
and variant, the folder or the reason it is not available.
"""

from __future__ import annotations

import inspect
import json
import shutil
import sys
import time
from pathlib import Path

from common import emit, read_plan
from shapes import build_hf_folder, config_kwargs

#: seqport variant -> export_model keyword arguments (each option must exist in its signature).
SEQPORT_VARIANTS = {
    "fp32": {},
    "optimized": {"optimize": True},
    "int8": {"quantize": "int8"},
    "optimized-int8": {"optimize": True, "quantize": "int8"},
    # onnxruntime's contrib attention (MultiHeadAttention / GroupQueryAttention; a decoder-only
    # export then preallocates its KV cache): fewer nodes per decode step (docs/benchmarks.md)
    "fused": {"attention": "fused"},
    "optimized-fused": {"optimize": True, "attention": "fused"},
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _export_seqport(hf: Path, out: Path, variant: str) -> dict:
    from seqport.export.pipeline import export_model

    options = SEQPORT_VARIANTS[variant]
    missing = [k for k in options if k not in inspect.signature(export_model).parameters]
    if missing:
        return {"skipped": f"export_model has no {', '.join(missing)} option yet"}
    if (out / "seqport.json").is_file():
        return {"path": str(out), "reused": True}
    start = time.perf_counter()
    try:
        export_model(hf, out, progress=False, **options)
    except Exception as exc:  # an export gate (parity, token agreement) or a missing fusion: report, go on
        shutil.rmtree(out, ignore_errors=True)
        return {"skipped": f"export failed: {_first_line(exc)}"}
    return {"path": str(out), "export_s": round(time.perf_counter() - start, 1)}


def _convert_ct2(hf: Path, out: Path, quantization: str) -> dict:
    try:
        import ctranslate2
    except ImportError:
        return {"skipped": "ctranslate2 is not installed (pip install 'seqport[bench]')"}
    if (out / "model.bin").is_file():
        return {"path": str(out), "reused": True, "version": ctranslate2.__version__}
    start = time.perf_counter()
    try:
        converter = ctranslate2.converters.TransformersConverter(str(hf))
        converter.convert(str(out), quantization=None if quantization == "float32" else quantization, force=True)
    except Exception as exc:  # converter errors are of many types
        shutil.rmtree(out, ignore_errors=True)
        return {"skipped": f"conversion failed: {_first_line(exc)}"}
    return {"path": str(out), "convert_s": round(time.perf_counter() - start, 1), "version": ctranslate2.__version__}


def main() -> None:
    plan = read_plan()
    root = Path(plan["work"]) / plan["shape"]
    key = {"shape": plan["shape"], "quick": plan["quick"], "config": config_kwargs(plan["shape"], plan["quick"])}
    key_file = root / "key.json"
    if not key_file.is_file() or json.loads(key_file.read_text()) != key:
        shutil.rmtree(root, ignore_errors=True)
    hf = root / "hf"
    if not (hf / "bench_facts.json").is_file():
        build_hf_folder(plan["shape"], plan["quick"], hf)
        key_file.write_text(json.dumps(key) + "\n")
    facts = json.loads((hf / "bench_facts.json").read_text())
    available = {"hf": str(hf)}
    for variant in plan["seqport_variants"]:
        available[f"seqport:{variant}"] = _export_seqport(hf, root / f"seqport-{variant}", variant)
        print(f"seqport {variant}: {available[f'seqport:{variant}']}", file=sys.stderr)
    for quantization in plan["ctranslate2"]:
        available[f"ctranslate2:{quantization}"] = _convert_ct2(hf, root / f"ct2-{quantization}", quantization)
    emit({"facts": facts, "available": available})


if __name__ == "__main__":
    main()
