"""An OpenAI-compatible HTTP server over seqport artifacts (`seqport serve`; the `serve` extra).

from seqport.serving import run_server
run_server("artifacts/translator", port=8000)
"""

from seqport.serving.app import ServeOptions, build_app
from seqport.serving.jobs import GenerationRequest, TokenEvent
from seqport.serving.scheduler import MicroBatchScheduler, QueueFull, Scheduler, SchedulerLimits, ShuttingDown
from seqport.serving.server import bundled_translator, run_server

__all__ = [
    "GenerationRequest",
    "MicroBatchScheduler",
    "QueueFull",
    "Scheduler",
    "SchedulerLimits",
    "ServeOptions",
    "ShuttingDown",
    "TokenEvent",
    "build_app",
    "bundled_translator",
    "run_server",
]
