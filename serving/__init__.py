"""An OpenAI-compatible HTTP server over seqport artifacts (`seqport serve`; the `serve` extra).

    from seqport.serving import run_server
    run_server("artifacts/translator", port=8000)

Names load on first use, so `seqport.serving.cli` imports (and `seqport --help` works) where
the serve extra (starlette, uvicorn, prometheus-client) is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ServeOptions": "app",
    "build_app": "app",
    "default_threads": "threads",
    "GenerationRequest": "jobs",
    "TokenEvent": "jobs",
    "MicroBatchScheduler": "scheduler",
    "QueueFull": "scheduler",
    "Scheduler": "scheduler",
    "SchedulerLimits": "scheduler",
    "ShuttingDown": "scheduler",
    "bundled_translator": "server",
    "run_server": "server",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'seqport.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"seqport.serving.{_HOMES[name]}"), name)
