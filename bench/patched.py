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
- `--worker-logged-finals` (gateway and worker): the worker numbers and logs a non-streaming job's final frame itself,
  in the script that writes its reply (LOG_FRAME's logic run by the worker, the number spliced into the reply), and
  the gateway sends a reply that comes numbered straight to its socket. It drops the gateway's floor, has no
  ordering against the gateway's own numbered frames, does not forward a frame for a session another gateway holds,
  and loads its script once at start (a NOSCRIPT inside the MULTI would ack a job whose reply failed), so it is no
  candidate as it stands: it measures what moving the log step into the worker could buy (docs/performance.md,
  "Known limits").
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


def _unlogged_finals(log_class: Any) -> None:
    logged = log_class.append

    def append(
        self: Any,
        session: Any,
        session_id: str,
        owner: str,
        request_id: str,
        body: bytes,
        kind: str,
        index: int,
        then: Any,
        after_chunk: int | None = None,
    ) -> asyncio.Future[None]:
        if kind != "final" or session is None or session.conn is None:
            queued: asyncio.Future[None] = logged(
                self, session, session_id, owner, request_id, body, kind, index, then, after_chunk
            )
            return queued
        then([session.delivered + 1, b""])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    log_class.append = append


def _worker_logs_finals() -> None:
    from rtai_protocol import Error, Result, encode
    from rtai_transport import WORKER_GROUP, resp
    from rtai_transport.lua import _APPEND, LOG_FRAME
    from rtai_worker import consumer

    # LOG_FRAME's body as a function, then: write the reply with the frame's number (and a repeat's logged body).
    script = (
        _APPEND
        + "local function log_frame()\n"
        + LOG_FRAME.removeprefix(_APPEND)
        + "end\n"
        + """
local r = log_frame()
local extra = ',"seq":' .. r[1] .. ',"holder":' .. cjson.encode(r[2])
if r[3] then extra = extra .. ',"logged":' .. cjson.encode(r[3]) end
local m = string.sub(ARGV[9], 1, -2) .. extra .. '}'
redis.call('XADD', KEYS[6], '*', 'm', m)
redis.call('EXPIRE', KEYS[6], ARGV[10])
return r[1]
"""
    )
    ensure_group = consumer.Consumer.ensure_group

    async def _ensure_group(self: Any) -> None:
        self.log_reply_sha = await self.redis.script_load(script)
        await ensure_group(self)

    async def _finish(self: Any, done: Any) -> None:
        if not done:
            return
        k = self.keys
        commands: list[Any] = []
        streams: dict[str, None] = {}
        for d, reply in done:
            if reply is None:
                continue
            j, stream = d.job, d.job.reply_to
            streams[stream] = None
            if j.stream or reply.kind == "chunk":
                commands.append(("XADD", stream, "*", "m", encode(reply)))
                continue
            if reply.kind == "result":
                body = encode(Result(id=reply.request_id, output=reply.data))
            else:
                body = encode(Error(id=reply.request_id, code=reply.code or "internal", message=reply.message or ""))
            keys = [k.session_seq(j.session), k.session_log(j.session), k.session_meta(j.session)]
            keys += [k.request(j.owner, j.request_id), k.session_inflight(j.session), stream]
            # The gateway's session settings at their defaults (a real change would carry them in the job).
            args = [body, "final", 0, 600, 2000, j.request_id, 600, 0, encode(reply)]
            commands.append(("EVALSHA", self.log_reply_sha, 6, *keys, *args, consumer.REPLY_STREAM_TTL_S))
        commands += [("EXPIRE", s, consumer.REPLY_STREAM_TTL_S) for s in streams]
        ids = [d.entry_id for d, _ in done]
        commands.append(("XACK", self.stream, WORKER_GROUP, *ids))
        commands.append(("XDEL", self.stream, *ids))
        await resp.transaction(self.redis, commands)

    consumer.Consumer.ensure_group = _ensure_group  # type: ignore[method-assign]
    consumer.Consumer.finish = _finish  # type: ignore[method-assign]


def _gateway_takes_logged_finals() -> None:
    import orjson

    from rtai_gateway import hub, loops, worker_replies
    from rtai_protocol import Reply

    class LoggedReply(Reply):
        seq: int
        holder: str
        logged: str | None = None

    decode = vars(loops)["decode_internal"]

    def _decode(raw: bytes) -> Any:
        data = orjson.loads(raw)
        return LoggedReply.model_validate(data) if "seq" in data else decode(raw)

    handle = hub.Hub.handle_replies

    async def handle_replies(self: Any, replies: list[Any], *, drop_rejected: bool = False) -> None:
        forwards: list[tuple[str, bytes]] = []
        for r in replies:
            if isinstance(r, LoggedReply) and r.seq:
                body, kind = worker_replies._frame_of(r)
                after = r.logged.encode() if r.logged else body
                worker_replies._after_logged(self, r, after, kind, r.seq, r.logged is not None, r.holder, forwards)
        await handle(self, [r for r in replies if not isinstance(r, LoggedReply)], drop_rejected=drop_rejected)

    vars(loops)["decode_internal"] = _decode  # the reply reader's name for it
    hub.Hub.handle_replies = handle_replies  # type: ignore[method-assign]


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
    parser.add_argument("--worker-logged-finals", action="store_true")
    parser.add_argument("--gc-log", action="store_true")
    args = parser.parse_args()
    if args.gc_log:
        _log_full_collections()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.argv = [sys.argv[0]]
    if args.service == "gateway":
        _gateway(args)
    else:
        _worker(args)


def _gateway(args: argparse.Namespace) -> None:
    from rtai_gateway import __main__ as entry
    from rtai_gateway import admission, ending, session_log

    if args.no_spans:
        _no_spans(admission)
        _no_spans(ending)
    if args.unlogged_finals:
        _unlogged_finals(session_log.SessionLog)
    if args.worker_logged_finals:
        _gateway_takes_logged_finals()
    entry.main()


def _worker(args: argparse.Namespace) -> None:
    from rtai_worker import __main__ as wentry
    from rtai_worker import batches, job_io, streams

    if args.no_spans:
        for module in (batches, job_io, streams):
            _no_spans(module)
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

        batches.Batches._predict = _predict  # type: ignore[method-assign]
    if args.no_cancel_screen:
        from rtai_worker import consumer

        async def _cancelled(self: Any, jobs: Any) -> set[str]:
            return set()

        consumer.Consumer.cancelled = _cancelled  # type: ignore[method-assign]
    if args.worker_logged_finals:
        _worker_logs_finals()
    raise SystemExit(wentry.main())


if __name__ == "__main__":
    main()
