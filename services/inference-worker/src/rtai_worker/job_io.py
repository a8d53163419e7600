"""A job's two ends as a worker sees them: the input its model gets, and the replies that answer it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from rtai_protocol import ErrorCode, Job, Reply
from rtai_telemetry.logging import get_logger
from rtai_telemetry.tracing import inject_headers, trace_id_of, tracing_enabled
from rtai_worker.engine import DeadlinePassed, ModelError, ModelInput
from rtai_worker.metrics import WorkerMetrics

log = get_logger("rtai_worker.task")


class JobIO:
    """Turns one task's jobs into model inputs and model outputs into replies signed by this worker, and counts each
    job's outcome (`rtai_worker_jobs_total`) once its answer is written."""

    __slots__ = ("max_new_tokens", "metrics", "task", "worker")

    def __init__(self, task: str, worker: str, max_new_tokens: int, metrics: WorkerMetrics) -> None:
        self.task = task
        self.worker = worker
        self.max_new_tokens = max_new_tokens
        self.metrics = metrics

    def model_input(self, job: Job) -> ModelInput:
        options = dict(job.options)
        if "max_new_tokens" in options:
            options["max_new_tokens"] = min(int(options["max_new_tokens"]), self.max_new_tokens)
        else:
            options["max_new_tokens"] = self.max_new_tokens
        options["deadline_ms"] = job.deadline_ms
        return ModelInput(text=job.input, options=options, seed=job.seed)

    def count(self, outcome: str, n: int = 1) -> None:
        self.metrics.jobs.labels(self.task, outcome).inc(n)

    def count_answered(self, answers: Iterable[Reply | None]) -> None:
        """Count jobs whose answers are written (None: cancelled, the gateway answered it). Counted after the write,
        not when the answer is made: a write that fails leaves the job pending, to be run and counted again."""
        for r in answers:
            self.count(_outcome(r))

    def answer(self, job: Job, out: Any) -> Reply:
        """The reply to a plain job from its model output: the result, or the error an exception in its place means."""
        if isinstance(out, DeadlinePassed):
            return self.error(job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while the model ran it")
        if isinstance(out, ModelError):
            return self.error(job, ErrorCode.INVALID_REQUEST, str(out))
        if isinstance(out, Exception):
            return self.error(job, ErrorCode.INTERNAL, "the model failed on this request")
        log.debug("job.done", request_id=job.request_id, task=self.task, trace_id=trace_id_of(job.headers))
        return self.reply(job, "result", data=out)

    def reply(
        self,
        job: Job,
        kind: Literal["chunk", "result", "error"],
        *,
        data: Any = None,
        index: int = 0,
        code: str | None = None,
        message: str | None = None,
    ) -> Reply:
        headers: dict[str, str] = {}
        if tracing_enabled():
            inject_headers(headers)
        return Reply(
            job_id=job.job_id,
            request_id=job.request_id,
            owner=job.owner,
            session=job.session,
            task=job.task,
            kind=kind,
            index=index,
            data=data,
            code=code,
            message=message,
            worker=self.worker,
            headers=headers,
        )

    def error(self, job: Job, code: ErrorCode, message: str) -> Reply:
        return self.reply(job, "error", code=str(code), message=message)


def _outcome(r: Reply | None) -> str:
    if r is None:
        return "cancelled"
    if r.kind == "result":
        return "ok"
    return "expired" if r.code == ErrorCode.DEADLINE_EXCEEDED else "error"
