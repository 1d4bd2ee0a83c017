"""Prometheus metrics of one app, in its own registry (two apps in a process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)
_STAGE = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class ServerMetrics:
    """The server's counters, gauges and histograms (names start with seqport_).

    Args:
        queue_depth, running_rows: read when /metrics is scraped.
    """

    def __init__(self, queue_depth: Callable[[], float], running_rows: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("seqport_queue_depth", "Requests waiting to start", registry=r).set_function(queue_depth)
        Gauge("seqport_running_rows", "Decoder rows of requests still generating", registry=r).set_function(
            running_rows
        )
        self.batch_rows = Histogram("seqport_batch_rows", "Rows per decoded batch", buckets=_BATCH, registry=r)
        self.ttft = Histogram(
            "seqport_time_to_first_token_seconds", "Request start to first token", buckets=_LATENCY, registry=r
        )
        self.inter_token = Histogram(
            "seqport_inter_token_seconds", "Time between two tokens of a stream", buckets=_LATENCY, registry=r
        )
        self.e2e = Histogram("seqport_request_seconds", "Request start to last token", buckets=_LATENCY, registry=r)
        self.generated = Counter("seqport_generated_tokens", "Tokens generated", registry=r)
        self.prompt = Counter("seqport_prompt_tokens", "Prompt tokens read", registry=r)
        self.requests = Counter("seqport_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.rejected = Counter(
            "seqport_rejected_requests", "Requests refused: queue full or shutting down", registry=r
        )
        self.admitted_mid_batch = Counter(
            "seqport_mid_batch_admissions", "Requests admitted into a batch already running", registry=r
        )
        self.lane_started = Counter(
            "seqport_prefill_lane_requests",
            "Requests the prefill lane started while the worker stepped (continuous batching)",
            registry=r,
        )
        self.idle_step_missed = Counter(
            "seqport_idle_step_deadline_misses",
            "Idle-priority decoder calls that missed their deadline and ran at normal priority (--step-priority)",
            registry=r,
        )
        self.cancelled = Counter("seqport_cancelled_requests", "Requests whose client went away", registry=r)
        self.first_token_stages = Histogram(
            "seqport_first_token_stage_seconds",
            "Streams' time to first token by stage (seqport.serving.jobs.STAGES), each since the one before",
            ["stage"], buckets=_STAGE, registry=r,
        )  # fmt: skip

    def observe_stages(self, seconds: dict[str, float]) -> None:
        """Record one request's time to first token by stage (jobs.stage_seconds)."""
        for stage, value in seconds.items():
            self.first_token_stages.labels(stage).observe(value)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
