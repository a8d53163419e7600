"""structlog configuration shared by every service: JSON in production, console for humans, stdlib bridged.

Request-scoped values (request id, session, trace id) are bound with `structlog.contextvars`, so every line logged
while handling a request carries them without being passed around.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import FilteringBoundLogger


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid and "trace_id" not in event:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


_QUERY_TOKEN = re.compile(r"(access_token=)[^&\s\"']*")


class RedactQueryTokens(logging.Filter):
    """Blank `access_token=` values in stdlib log lines. uvicorn logs each WebSocket handshake's path with its query
    string ("WebSocket /v1/ws?access_token=... [accepted]", or 403), so a token sent in the URL (accepted with
    `auth.allow_query_token`, ignored without it) would otherwise land in the gateway's logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True  # structlog's own lines (an event dict): the gateway never logs a URL's query
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format call: the handler reports it, as it would without this filter
            return True
        if "access_token=" in message:
            record.msg, record.args = _QUERY_TOKEN.sub(r"\1[redacted]", message), None
        return True


def configure_logging(*, json: bool, level: str = "info") -> None:
    """Route structlog and stdlib logging (uvicorn, redis, ...) through one pipeline to stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    threshold = logging.getLevelNamesMapping().get(level.upper())
    if threshold is None:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning, error or critical")
    structlog.configure(
        # filter_by_level first: a line below a stdlib logger's own level costs one check, not the processor chain.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Methods below the service's level are no-ops: the per-request debug lines cost a call, not an event dict
        # built and dropped by an exception (3 us each, measured, on the gateway's hot path).
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RedactQueryTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # One line per HTTP request is noise at our request rates; WebSocket events are logged by the gateway itself.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # At debug, the WebSocket protocol logs every frame with its payload: user text. Never below info for those.
    for name in ("uvicorn.error", "websockets"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


def get_logger(name: str) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
