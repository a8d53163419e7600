"""Run the gateway or the worker with candidate optimisations applied by monkeypatching (benchmark-only processes).

    python bench/patched.py gateway|worker [--uvloop] [--no-spans] [--inline-predict]

Nothing here changes the services' code: each flag prototypes a change proposed in docs/performance.md so that
bench/experiments.py can measure it side by side with the unpatched service, in the same run.
- `--uvloop`: run the service's `asyncio.run` on uvloop (the gateway calls asyncio.run itself, so uvicorn's
  `loop="auto"` never applies; the worker does the same).
- `--no-spans`: skip OpenTelemetry span creation and header propagation on the hot paths when no tracer provider is
  installed (tracing off, the default), instead of entering no-op spans per request.
- `--inline-predict` (worker): call a fast model's `predict` on the event loop instead of `asyncio.to_thread`.
- `--unlogged-finals` (gateway): send a worker's final frame to its socket without logging it in Redis first (no
  LOG_FRAME round trip; the frame gets the next seq the socket has not seen). It breaks resume and exactly-once, so
  it is no candidate: it measures the most that taking the log step off the gateway's path could buy.
- `--gc-log`: write a line to stderr (the service's log) for every full collection: seconds since start, its pause
  in ms, the objects it walked. Changes nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any


class _NoSpanTracer:
    def start_as_current_span(self, *_: Any, **__: Any) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def _no_spans(module: Any) -> None:
    module.tracer = _NoSpanTracer()
    if hasattr(module, "inject_headers"):
        module.inject_headers = lambda headers, ctx=None: None
    if hasattr(module, "extract_context"):
        from opentelemetry.context import Context

        empty = Context()
        module.extract_context = lambda headers: empty
    if hasattr(module, "Link"):
        module.Link = lambda ctx: None


def _unlogged_finals(hub_class: Any) -> None:
    logged = hub_class._log

    def _log(
        self: Any,
        session: Any,
        session_id: str,
        owner: str,
        request_id: str,
        body: bytes,
        kind: str,
        index: int,
        then: Any,
    ) -> asyncio.Future[None]:
        if kind != "final" or session is None or session.conn is None:
            queued: asyncio.Future[None] = logged(self, session, session_id, owner, request_id, body, kind, index, then)
            return queued
        then([session.delivered + 1, b""])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    hub_class._log = _log


def _log_full_collections() -> None:
    import gc
    import json
    import time

    started = time.perf_counter()
    began = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began[0] = time.perf_counter()
            return
        now = time.perf_counter()
        walked = sum(len(gc.get_objects(g)) for g in range(3))
        line = {"event": "gc.full", "t_s": round(now - started, 2), "ms": round((now - began[0]) * 1000, 1)}
        sys.stderr.write(json.dumps({**line, "objects": walked}) + "\n")

    gc.callbacks.append(callback)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("service", choices=["gateway", "worker"])
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--no-spans", action="store_true")
    parser.add_argument("--inline-predict", action="store_true")
    parser.add_argument("--no-cancel-screen", action="store_true")
    parser.add_argument("--unlogged-finals", action="store_true")
    parser.add_argument("--gc-log", action="store_true")
    args = parser.parse_args()
    if args.gc_log:
        _log_full_collections()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.service == "gateway":
        from rtai_gateway import __main__ as entry
        from rtai_gateway import hub

        if args.no_spans:
            _no_spans(hub)
        if args.unlogged_finals:
            _unlogged_finals(hub.Hub)
        sys.argv = [sys.argv[0]]
        entry.main()
        return
    from rtai_worker import __main__ as wentry
    from rtai_worker import task_server

    if args.no_spans:
        _no_spans(task_server)
    if args.inline_predict:
        import time

        async def _predict(self: Any, inputs: list[Any]) -> list[Any]:
            m = self.metrics
            m.batch_size.labels(self.task).observe(len(inputs))
            started = time.perf_counter()
            try:
                return list(self.model.predict(inputs))
            except Exception as e:
                return [e] * len(inputs)
            finally:
                m.inference.labels(self.task).observe(time.perf_counter() - started)

        task_server.TaskServer._predict = _predict  # type: ignore[method-assign]
    if args.no_cancel_screen:
        from rtai_worker import consumer

        async def _cancelled(self: Any, jobs: Any) -> set[str]:
            return set()

        consumer.Consumer.cancelled = _cancelled  # type: ignore[method-assign]
    sys.argv = [sys.argv[0]]
    raise SystemExit(wentry.main())


if __name__ == "__main__":
    main()
