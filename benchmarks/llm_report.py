"""smollm2.md from the records benchmarks/smollm2.py collected (stdlib only), and the CPU's flags.

Targets (issue #16), ratios within one sitting:
- fp32: seqport's best fp32 export ≥ 1.1× GenAI fp32 tokens/s at every batch; peak RSS ≤ GenAI's.
- low-bit: seqport's best low-bit export whose agreement ≥ GenAI int4's, ≥ 1.0× GenAI int4.
- long context (longest prompt): TTFT ≤ 1.0× GenAI's, decode tokens/s ≥ 1.0× GenAI's, per precision.
The verdict is the ratio of the medians; with interleaved rounds the same-round ratios beside it
show whether it holds round by round or only on a median.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))  # benchmarks/peers: scripts, not a package
from report import round_ratios  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _fp32(variant: str) -> bool:
    """seqport variant names: "int8" and "int4[-...]" are low-bit, every other one is fp32."""
    return not variant.startswith("int")


#: long context: which seqport variants (the fastest counts) against which GenAI variant
PAIRS = ((_fp32, "fp32"), (lambda v: v.startswith("int4"), "int4"))


def cpu_flags() -> dict[str, bool]:
    """Which of the vector/matrix extensions that decide CPU kernels /proc/cpuinfo lists."""
    info = Path("/proc/cpuinfo")
    text = info.read_text(errors="replace") if info.is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {flag: flag in flags for flag in FLAGS}


def _ok(records: list[dict], **match: Any) -> list[dict]:
    return [r for r in records if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def _one(records: list[dict], **match: Any) -> dict | None:
    found = _ok(records, **match)
    return found[0] if found else None


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _throughput(records: list[dict], batches: list[int]) -> list[str]:
    head = " | ".join(f"tokens/s b{b} | ms/step b{b} | peak RSS MB b{b}" for b in batches)
    lines = [f"| system | variant | {head} | agreement |", "|---" * (3 + 3 * len(batches)) + "|"]
    names = dict.fromkeys((r["system"], r["variant"]) for r in records if r["kind"] == "throughput")
    for system, variant in names:
        cells, agreement = [], None
        for b in batches:
            r = _one(records, kind="throughput", system=system, variant=variant, batch=b)
            cells += [_num(r and r["tokens_per_s"]), _num(r and r["ms_per_step"], 2)]
            cells.append(_num(r and r["peak_rss_mb"], 0))
            agreement = agreement if r is None or "agreement" not in r else r["agreement"]
        why = next((r["note"] for r in records if (r["system"], r["variant"]) == (system, variant) and r["note"]), "")
        tail = f" ({why[:80]})" if why else ""
        lines.append(f"| {system} | {variant}{tail} | {' | '.join(cells)} | {_num(agreement, 3)} |")
    return lines


def decode_ms(record: dict) -> float | None:
    """A long-context record's decode ms per step: measured inside the N-token call where the
    runner could (peers/common.py, decode_in_call), else (t(N) − t(1)) / (N − 1)."""
    in_call = record.get("decode_ms_per_step")
    return in_call["p50"] if in_call else record["ms_per_step"]


def _long(records: list[dict]) -> list[str]:
    lines = [
        "| prompt | system | variant | TTFT ms | decode tokens/s | (t(N) − t(1)) tokens/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["kind"] == "long"):
        if r["status"] != "ok":
            why = f"{r['status']}: {r['note'][:80]}"
            lines.append(f"| {r['input_tokens']} | {r['system']} | {r['variant']} | {why} | | | |")
            continue
        decode, subtracted = decode_ms(r), r["ms_per_step"]
        lines.append(
            f"| {r['input_tokens']} | {r['system']} | {r['variant']} | {_num(r['first_token_ms']['p50'], 0)} "
            f"| {_num(decode and 1e3 / decode)} | {_num(subtracted and 1e3 / subtracted)} "
            f"| {_num(r['peak_rss_mb'], 0)} |"
        )
    return lines


def _verdict(ratio: float | None, target: float, higher: bool, rounds: list[float] | None = None) -> str:
    """The ratio of the medians, met or missed; with interleaved records also the same-round
    ratios' range and how many rounds met the target on their own."""
    if ratio is None:
        return "not measured"
    met = ratio >= target if higher else ratio <= target
    text = f"{ratio:.2f}× ({'met' if met else 'missed'})"
    if rounds:
        won = sum(r >= target if higher else r <= target for r in rounds)
        text += f"; same-round {min(rounds):.2f}–{max(rounds):.2f}×, met in {won} of {len(rounds)} rounds"
    return text


def targets(records: list[dict], batches: list[int]) -> list[str]:
    """One line per target of issue #16 with the ratio and whether it is met."""
    lines = ["| target | batch | seqport variant | result |", "|---|---|---|---|"]
    genai_int4 = _ok(records, system="genai", variant="int4")
    genai_agreement = next((r["agreement"] for r in genai_int4 if "agreement" in r), None)
    low_ok = {
        r["variant"]
        for r in _ok(records, system="seqport", kind="throughput")
        if not _fp32(r["variant"]) and genai_agreement is not None and r.get("agreement", -1) >= genai_agreement
    }
    for b in batches:
        rows = _ok(records, kind="throughput", batch=b)
        genai = {r["variant"]: r for r in rows if r["system"] == "genai"}
        fp32 = max((r for r in rows if r["system"] == "seqport" and _fp32(r["variant"])), key=_speed, default=None)
        ratio = fp32 and genai.get("fp32") and fp32["tokens_per_s"] / genai["fp32"]["tokens_per_s"]
        verdict = _verdict(ratio, 1.1, True, round_ratios(fp32, genai.get("fp32"), "tokens_per_s"))
        lines.append(f"| fp32 ≥ 1.1× GenAI fp32 | {b} | {fp32 and fp32['variant']} | {verdict} |")
        rss = fp32 and genai.get("fp32") and fp32["peak_rss_mb"] / genai["fp32"]["peak_rss_mb"]
        lines.append(f"| fp32 peak RSS ≤ GenAI fp32 | {b} | {fp32 and fp32['variant']} | {_verdict(rss, 1.0, False)} |")
        low = max((r for r in rows if r["system"] == "seqport" and r["variant"] in low_ok), key=_speed, default=None)
        ratio = low and genai.get("int4") and low["tokens_per_s"] / genai["int4"]["tokens_per_s"]
        label = f"low-bit ≥ 1.0× GenAI int4, agreement ≥ GenAI int4's ({_num(genai_agreement, 3)})"
        which = low["variant"] if low else "none agrees enough"
        verdict = _verdict(ratio, 1.0, True, round_ratios(low, genai.get("int4"), "tokens_per_s"))
        lines.append(f"| {label} | {b} | {which} | {verdict} |")
    longest = max((r["input_tokens"] for r in records if r["kind"] == "long"), default=None)
    for family, theirs in PAIRS if longest is not None else ():
        rows = _ok(records, kind="long", system="seqport", input_tokens=longest)
        ours = [r for r in rows if family(r["variant"])]
        seq = min(ours, key=lambda r: r["generate_ms"]["p50"], default=None)
        gen = _one(records, kind="long", system="genai", variant=theirs, input_tokens=longest)
        ours = seq["variant"] if seq else "–"
        ttft = seq and gen and seq["first_token_ms"]["p50"] / gen["first_token_ms"]["p50"]
        decode = seq and gen and decode_ms(gen) / decode_ms(seq)
        verdict = _verdict(ttft, 1.0, False, round_ratios(seq, gen, "first_token_ms"))
        lines.append(f"| {longest}-token TTFT ≤ 1.0× GenAI {theirs} | 1 | {ours} | {verdict} |")
        verdict = _verdict(decode, 1.0, True, round_ratios(seq, gen, "decode_ms_per_step", invert=True))
        lines.append(f"| {longest}-token decode ≥ 1.0× GenAI {theirs} | 1 | {ours} | {verdict} |")
    return lines


def _speed(record: dict) -> float:
    return record["tokens_per_s"]


def markdown(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The report: setting, throughput with agreement, long context (each where measured), targets."""
    batches = sorted({r["batch"] for r in records if r["kind"] == "throughput"})
    flags = ", ".join(f for f, on in meta.get("cpu_flags", {}).items() if on) or "none of " + ", ".join(FLAGS)
    settings = meta.get("settings", {})
    load = f"load average {meta.get('load_average')} at the start, {meta.get('load_average_end')} at the end"
    lines = [
        f"# {meta.get('model', 'SmolLM2')}: seqport vs onnxruntime-genai, PyTorch eager",
        "",
        f"Measured {meta.get('created', '?')} by benchmarks/smollm2.py on {meta.get('cpu', '?')} "
        f"({meta.get('cpu_count', '?')} CPUs; flags: {flags}); {load}; "
        f"read bandwidth {meta.get('bandwidth', {}).get('gbs')} GB/s. Greedy, {settings.get('threads')} threads, "
        "prompts cut from English text. Each run's load average is in smollm2.json.",
        "",
    ]
    if batches:
        lines += _throughput_section(meta, records, batches)
    if any(r["kind"] == "long" for r in records):
        lines += _long_section(settings, records)
    lines += [
        "## Targets (issue #16)",
        "",
        "Each verdict is the ratio of the two medians. Interleaved records add the same-round ratios: "
        "round i of one system over round i of the other, timed minutes apart at most, their range and "
        "in how many rounds the ratio met the target on its own.",
        "",
        *targets(records, batches),
        "",
    ]
    return "\n".join(lines)


def _throughput_section(meta: dict[str, Any], records: list[dict[str, Any]], batches: list[int]) -> list[str]:
    settings = meta.get("settings", {})
    prompts = next((len(r["agreement_ids"]) for r in records if "agreement_ids" in r), 0)
    interleaved = any(r.get("rounds") for r in records if r["kind"] == "throughput")  # older results: blocks
    order = " interleaved rounds" if interleaved else " (each system's rounds back to back)"
    return [
        f"Throughput: exactly {settings.get('new_tokens')} new tokens after {settings.get('input_tokens')} "
        f"prompt tokens; warm-up {settings.get('warmup')}, median of {settings.get('repeats')}{order}.",
        "",
        f"Agreement: {prompts} English prompts, {settings.get('agreement_new')} greedy tokens each at batch 1; "
        "the fraction of positions whose id equals PyTorch eager fp32's. seqport int8 is exported past its own "
        "gate (peers/export_llm.py); "
        f"the export gate's own (teacher-forced) agreement: {meta.get('export_agreement')}.",
        "",
        *_throughput(records, batches),
        "",
    ]


def _long_section(settings: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    return [
        f"Long context: one prompt, {settings.get('long_new')} new tokens, batch 1, median of "
        f"{settings.get('long_repeats')} interleaved rounds; TTFT = a 1-token generate call "
        "(prefill + first token), decode = tokens/s of the steps after the first token inside the "
        f"{settings.get('long_new')}-token call "
        "(peers/common.py decode_in_call); the column after it is the older (t(N) − t(1)) / (N − 1), which takes "
        "one call's prefill from another's.",
        "",
        *_long(records),
        "",
    ]
