"""compare.md and compare.png from the records compare.py collected (stdlib; matplotlib optional).

Every figure stands beside its memory-bandwidth bound: a decode step reads every step weight
once (shapes.step_params), so at batch B no system can exceed
B × bandwidth / (step weights × bytes per weight) tokens/s (fp32: 4 bytes, int8: 1 byte; the
KV cache and activations are not counted, so the true bound is a little lower).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: seqport's float32 exports: the speed targets take the best of those measured.
FP32_VARIANTS = ("fp32", "optimized", "fused", "optimized-fused")
#: (check, batch, seqport variants (best one counts), peer system, peer variant, target ratio, field)
TARGETS = [
    ("tokens/s ≥ 1.0× CTranslate2 fp32", 1, FP32_VARIANTS, "ctranslate2", "fp32", 1.0, "tokens_per_s"),
    ("tokens/s ≥ 1.2× Optimum", 1, FP32_VARIANTS, "optimum", "fp32", 1.2, "tokens_per_s"),
    ("tokens/s ≥ 2.7× PyTorch eager", 1, FP32_VARIANTS, "pytorch", "eager", 2.7, "tokens_per_s"),
    ("tokens/s ≥ 1.0× CTranslate2 fp32", 8, FP32_VARIANTS, "ctranslate2", "fp32", 1.0, "tokens_per_s"),
    (
        "int8 tokens/s ≥ 1.0× CTranslate2 int8",
        1,
        ("int8", "optimized-int8"),
        "ctranslate2",
        "int8",
        1.0,
        "tokens_per_s",
    ),
    (
        "int8 tokens/s ≥ 1.0× CTranslate2 int8",
        8,
        ("int8", "optimized-int8"),
        "ctranslate2",
        "int8",
        1.0,
        "tokens_per_s",
    ),
    ("peak RSS ≤ 1.3× CTranslate2 fp32", 1, ("fp32",), "ctranslate2", "fp32", 1.3, "peak_rss_mb"),
    ("peak RSS ≤ 1.3× CTranslate2 fp32", 8, ("fp32",), "ctranslate2", "fp32", 1.3, "peak_rss_mb"),
]


def bytes_per_weight(variant: str) -> int:
    return 1 if "int8" in variant else 4


def bound(step_parameters: int, variant: str, batch: int, bandwidth_gbs: float) -> dict[str, float]:
    """The memory-bandwidth bound of one decode step and the tokens/s it allows."""
    weight_bytes = step_parameters * bytes_per_weight(variant)
    ms = weight_bytes / (bandwidth_gbs * 1e9) * 1e3
    return {"weight_bytes": weight_bytes, "ms_per_step": round(ms, 3), "tokens_per_s": round(batch * 1e3 / ms, 1)}


def add_ratios(records: list[dict[str, Any]]) -> None:
    """ratio_to_eager on every measured record: tokens/s over PyTorch eager's in its (model, batch).

    Interleaved records (with `rounds`) also get ratio_to_eager_rounds: round i's tokens/s over
    eager's in the same round i, so each ratio comes from the same minute.
    """
    eager = {(r["model"], r["batch"]): r for r in records if r["system"] == "pytorch" and r["status"] == "ok"}
    for r in records:
        base = eager.get((r["model"], r["batch"]))
        ok = r["status"] == "ok" and base and base["tokens_per_s"]
        r["ratio_to_eager"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2) if ok else None
        if ok and (per_round := round_ratios(r, base, "tokens_per_s")):  # [] unless both are interleaved alike
            r["ratio_to_eager_rounds"] = per_round


def round_ratios(ours: dict[str, Any], peer: dict[str, Any], field: str, invert: bool = False) -> list[float]:
    """ours / peer of `field` round by round (peer / ours with `invert`: for times, where lower
    is better), for two interleaved records with as many rounds; [] otherwise. A round that
    lacks the field on either side is left out."""
    a, b = (ours or {}).get("rounds") or [], (peer or {}).get("rounds") or []
    if not a or len(a) != len(b):
        return []
    pairs = [(x.get(field), y.get(field)) for x, y in zip(a, b)]
    return [round(y / x if invert else x / y, 3) for x, y in pairs if x and y]


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _row(r: dict[str, Any]) -> str:
    b = r["bound"]
    if r["status"] != "ok":
        cells = [r["system"], r["variant"], *["–"] * 9, f"**{r['status']}**: {r['note']}"]
    else:
        cells = [
            r["system"],
            r["variant"],
            _num(r["tokens_per_s"]),
            _num(b["tokens_per_s"]),
            _num(r["ratio_to_eager"], 2) + "×" if r["ratio_to_eager"] is not None else "–",
            _num(r["ms_per_step"], 2),
            _num(b["ms_per_step"], 2),
            f"{100 * b['ms_per_step'] / r['ms_per_step']:.0f} %" if r["ms_per_step"] else "–",
            _num(r["first_token_ms"]["p50"], 1),
            _num(r["load_s"], 2),
            _num(r["peak_rss_mb"], 0),
            r.get("note", ""),
        ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| system | variant | tokens/s | bound tokens/s | × eager | ms/step | bound ms/step | bound/actual "
    "| first token ms | load s | peak RSS MiB | note |\n" + "|---" * 12 + "|"
)


def _targets(records: list[dict[str, Any]], models: list[str]) -> list[str]:
    lines = ["| model | batch | check | seqport | peer | ratio | met |", "|---|---|---|---|---|---|---|"]
    for model in models:
        for check, batch, variants, system, variant, target, field in TARGETS:
            group = [r for r in records if r["model"] == model and r["batch"] == batch and r["status"] == "ok"]
            ours = [r for r in group if r["system"] == "seqport" and r["variant"] in variants]
            peer = [r for r in group if r["system"] == system and r["variant"] == variant]
            if not ours or not peer:
                if any(r["model"] == model and r["batch"] == batch for r in records):
                    lines.append(f"| {model} | {batch} | {check} | – | – | – | not measured |")
                continue
            lower_is_better = field == "peak_rss_mb"
            best = min(ours, key=lambda r: r[field]) if lower_is_better else max(ours, key=lambda r: r[field])
            ratio = best[field] / peer[0][field]
            met = ratio <= target if lower_is_better else ratio >= target
            lines.append(
                f"| {model} | {batch} | {check} | {best[field]:,.1f} ({best['variant']}) | {peer[0][field]:,.1f} "
                f"| {ratio:.2f}×{_round_range(best, peer[0], field)} | {'yes' if met else '**no**'} |"
            )
    return lines


def _protocol(settings: dict[str, Any]) -> str:
    """How the repeats ran: "repeats" (one block per system) or interleaved rounds."""
    if settings.get("sequential", True):  # runs before interleaving have no such setting
        return "repeats"
    return "interleaved rounds (one loaded process per system; each round runs every system once, in turn)"


def _round_range(ours: dict[str, Any], peer: dict[str, Any], field: str) -> str:
    """The per-round ratio range of interleaved tokens/s records; empty otherwise (RSS is one figure)."""
    ratios = round_ratios(ours, peer, field) if field == "tokens_per_s" else []
    return f" (rounds {min(ratios):.2f}–{max(ratios):.2f}×)" if ratios else ""


def _spread_lines(records: list[dict[str, Any]]) -> list[str]:
    """The per-round table of interleaved records: tokens/s of each round and the spread."""
    rows = [r for r in records if r["status"] == "ok" and r.get("rounds")]
    if not rows:
        return []
    lines = [
        "## Rounds",
        "",
        "Each round ran every system of its (model, batch) once, one after another, starting one system later "
        "each round; spread = (max − min) / median of the rounds' tokens/s; load = the machine's 1-minute load "
        "average when the group's rounds started → ended (above the thread count, other work shared the cores).",
        "",
        "| model | batch | system | variant | tokens/s per round | spread | × eager per round | load 1 min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_round = " / ".join(_num(x["tokens_per_s"]) for x in r["rounds"])
        ratios = " / ".join(f"{x:.2f}" for x in r.get("ratio_to_eager_rounds", [])) or "–"
        load = r.get("load_average")
        load_cell = f"{load['rounds_start'][0]:.1f} → {load['rounds_end'][0]:.1f}" if load else "–"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['system']} | {r['variant']} | {per_round} "
            f"| {r['round_spread']['spread_pct']:.0f} % | {ratios} | {load_cell} |"
        )
    return lines + [""]


def markdown(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The whole compare.md: settings, one table per (model, batch), the targets."""
    s = meta["settings"]
    lines = [
        "# seqport vs PyTorch eager, Optimum and CTranslate2 (greedy, CPU)",
        "",
        f"Measured {meta['created']} on {meta['cpu']} ({meta['cpu_count']} logical CPUs) by "
        f"`python benchmarks/compare.py{''.join(' ' + a for a in meta['argv'])}`; "
        f"{s['threads']} threads, {s['input_tokens']} input tokens, exactly {s['new_tokens']} new tokens per input, "
        f"warm-up {s['warmup']}, median of {s['repeats']} {_protocol(s)}. Random-weight models built from configs"
        + (" (tiny --quick shapes: figures mean nothing)." if s["quick"] else "."),
        "",
        f"Memory read bandwidth: **{meta['bandwidth']['gbs']:.1f} GB/s** ({meta['bandwidth']['method']}). "
        "Bound = batch × bandwidth / (decode-step weight bytes), weights at 4 bytes (fp32) or 1 byte (int8); "
        "bound/actual = how close a system gets to it. ms/step = (median time for N tokens − median time for "
        "1 token) / (N − 1), the same definition for every system; first token = encoder or prompt prefill + 1 step.",
        "",
    ]
    for model, facts in meta["models"].items():
        lines.append(
            f"## {model} — {facts['parameters'] / 1e6:.1f} M parameters, {facts['step_parameters'] / 1e6:.1f} M read "
            "per decode step"
        )
        for batch in s["batch_sizes"]:
            rows = [r for r in records if r["model"] == model and r["batch"] == batch]
            if rows:
                lines += ["", f"### batch {batch}", "", HEADER, *map(_row, rows)]
        lines.append("")
    targets = _targets(records, list(meta["models"]))
    lines += ["## Targets", "", *(targets if len(targets) > 2 else ["No target applies to these batch sizes."]), ""]
    lines += _spread_lines(records)
    if meta.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in meta["notes"]], ""]
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> str | None:
    """tokens/s per system, one panel per (model, batch), bound lines; None or why not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    models = list(dict.fromkeys(r["model"] for r in records))  # run order
    batches = sorted({r["batch"] for r in records})
    figure, axes = plt.subplots(len(models), len(batches), figsize=(5 * len(batches), 3.6 * len(models)), squeeze=False)
    groups = [(m, b) for m in models for b in batches]
    for ax, (model, batch) in zip(axes.flat, groups):
        rows = [r for r in records if (r["model"], r["batch"]) == (model, batch) and r["status"] == "ok"]
        speeds = [r["tokens_per_s"] for r in rows]
        colours = ["C0" if r["system"] == "seqport" else "C7" for r in rows]
        ax.barh([f"{r['system']}\n{r['variant']}" for r in rows], speeds, color=colours)
        limits = {bytes_per_weight(r["variant"]): r["bound"]["tokens_per_s"] for r in rows}
        shown = [v for v in limits.values() if speeds and v < 3 * max(speeds)]  # others would squash the bars
        for size, limit in sorted(limits.items()):
            if limit in shown:
                style = "--" if size == 4 else ":"
                ax.axvline(
                    limit, color="k", linestyle=style, linewidth=1, label=f"{'fp32' if size == 4 else 'int8'} bound"
                )
        ax.set_xlim(0, 1.1 * max(speeds + shown, default=1))
        ax.set_title(f"{model}, batch {batch}")
        ax.set_xlabel("tokens/s")
        ax.invert_yaxis()
        if shown:
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
