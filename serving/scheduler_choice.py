"""Which scheduler serves an artifact: continuous batching where its rows can be merged into a
running batch, static micro-batching otherwise (an encoder-decoder without per-row positions
and masks, preallocated KV buffers, fused decoder-only attention, a device placement)."""

from __future__ import annotations

import logging
from typing import Any

from seqport.engine.errors import ConfigError
from seqport.engine.placement import HOST
from seqport.serving.continuous import DEFAULT_LANE, ContinuousScheduler
from seqport.serving.scheduler import MicroBatchScheduler, SchedulerLimits

logger = logging.getLogger(__name__)

SCHEDULERS = ("continuous", "micro")


def continuous_unsupported(model: Any) -> str | None:
    """Why `model` cannot be batched continuously, or None when it can."""
    m = model.manifest
    if m.architecture not in ("decoder-only", "encoder-decoder"):
        return f"continuous batching serves decoder-only and encoder-decoder artifacts; this one is {m.architecture}"
    if m.architecture == "encoder-decoder" and not getattr(model, "row_positions", False):
        return (
            "the artifact's decoder takes no per-row position_ids and attention_mask (exported before "
            "seqport had them, or a family without them yet); re-export it to batch continuously"
        )
    if m.kv.allocation != "growing":
        return "the artifact preallocates its KV buffers (export with a growing cache to batch continuously)"
    if m.attention != "portable" and m.architecture == "decoder-only":  # encoder-decoder: the bias masks rows
        return f"attention {m.attention!r} takes no left-padded rows (export with --attention portable)"
    if getattr(model, "placement", HOST) is not HOST:
        return "the model runs in the device loop (continuous batching runs on the host placement)"
    return None


def make_scheduler(model: Any, limits: SchedulerLimits, kind: str = "continuous", **callbacks: Any) -> Any:
    """The scheduler `kind` asks for, or micro-batching where the artifact cannot batch continuously.

    Args:
        model: a loaded generating model.
        limits: admission limits.
        kind: "continuous" (falls back to "micro" with a log line) or "micro".
        **callbacks: on_batch(rows) and, for continuous batching, on_admit(count), `lane`,
            on_lane, `step_priority` and on_step_missed (ContinuousScheduler's); `outbox`: where the worker's events go
            (MicroBatchScheduler's argument).

    Raises:
        ConfigError: `kind` is not one of SCHEDULERS.
    """
    if kind not in SCHEDULERS:
        raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    reason = continuous_unsupported(model) if kind == "continuous" else "asked for --scheduler micro"
    if reason is None:
        logger.info("continuous batching (up to %d rows, prefill lane %s, step priority %s)", limits.max_batch_rows,
                    callbacks.get("lane", DEFAULT_LANE), callbacks.get("step_priority", "normal"))
        return ContinuousScheduler(model, limits, **callbacks)
    log = logger.info if kind == "micro" else logger.warning  # continuous asked for, micro given: say so
    log("static micro-batching: %s", reason)
    return MicroBatchScheduler(model, limits, on_batch=callbacks.get("on_batch"), outbox=callbacks.get("outbox"))
