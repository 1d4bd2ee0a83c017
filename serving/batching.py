"""Decode one static batch of jobs with the engine's public API, in the worker thread.

Greedy and unseeded sampling jobs that share their options (except max_new_tokens) go
through one `model.stream()` call with the largest max_new_tokens; each row is cut at its own
limit and its text re-streamed by its own TextStream, so it equals the row decoded alone.
Beam search and n > 1 go through `model.generate()`, one request per call.
"""

from __future__ import annotations

from typing import Any

from seqport.engine.errors import SeqportError
from seqport.engine.streaming import StepResult, TextStream
from seqport.serving.jobs import Job, TokenEvent

_OPENAI_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def run_batch(model: Any, jobs: list[Job]) -> None:
    """Decode `jobs` together and hand every token to its job; errors go to the jobs they concern.

    A SeqportError before any token was produced re-runs the jobs one by one, so one bad
    request does not fail the requests batched with it.
    """
    config = jobs[0].request.config
    try:
        if config.num_beams > 1 or config.num_return_sequences > 1:
            assert len(jobs) == 1, "beam search and n > 1 run alone"
            _run_generate(model, jobs[0])
        else:
            _run_stream(model, jobs)
    except SeqportError as exc:
        if len(jobs) > 1 and not getattr(exc, "started", False):
            for job in jobs:
                run_batch(model, [job])
            return
        for job in jobs:
            job.fail(exc)


def _run_stream(model: Any, jobs: list[Job]) -> None:
    config = jobs[0].request.config.replace(max_new_tokens=max(j.request.config.max_new_tokens for j in jobs))
    texts = [TextStream(model.tokenizer.backend, config.stop) for _ in jobs]
    counts = [0] * len(jobs)
    steps = model.stream([job.request.prompt_ids for job in jobs], config)
    started, step_rows = False, set()
    try:
        for step in steps:
            started = True
            if step.index in step_rows:  # the engine's next step began: hand the last one's events over
                _flush(jobs)
                step_rows.clear()
            step_rows.add(step.index)
            job = jobs[step.index]
            if job.live:
                counts[step.index] += 1
                job.emit(token_event(step, counts[step.index], job.request.config.max_new_tokens, texts[step.index]))
            if not any(j.live for j in jobs):
                break  # every request is done or cancelled: stop decoding now
    except SeqportError as exc:
        exc.started = started  # type: ignore[attr-defined]
        raise
    finally:
        steps.close()
    for job in jobs:  # the engine ended a row without a finish (it never should): end it cleanly
        job.emit(TokenEvent(0, "", 0, "length"))
    _flush(jobs)


def _flush(jobs: list[Job]) -> None:
    """Hand the events collected in the jobs' outbox (the scheduler's, shared) to their loops."""
    outbox = jobs[0].outbox
    if outbox is not None:
        outbox.flush()


def token_event(step: StepResult, count: int, limit: int, text: TextStream) -> TokenEvent:
    """One streamed token as the request's event: its text piece, token count and OpenAI finish reason."""
    reason = step.finish_reason or ("length" if count >= limit else None)
    piece = text.step(step.token_id, reason)
    return TokenEvent(0, piece, 0 if reason == "eos" else 1, _OPENAI_REASONS.get(reason) if reason else None)


def _run_generate(model: Any, job: Job) -> None:
    if not job.live:
        return
    result = model.generate([job.request.prompt_ids], job.request.config)[0]
    for choice, sequence in enumerate(result.sequences):
        job.emit(TokenEvent(choice, sequence.text or "", len(sequence.ids), _OPENAI_REASONS[sequence.finish_reason]))
    _flush([job])
