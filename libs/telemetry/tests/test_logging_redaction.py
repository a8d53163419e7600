"""A token sent in a URL's query never reaches the log, and the filter that blanks it changes nothing else."""

from __future__ import annotations

import logging

import pytest

from rtai_telemetry.logging import RedactQueryTokens


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)


def test_a_query_token_is_blanked_and_the_rest_of_the_line_kept() -> None:
    record = _record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/v1/ws?access_token=SECRET&x=1")
    assert RedactQueryTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /v1/ws?access_token=[redacted]&x=1" [accepted]'


def test_a_bad_format_call_is_left_to_the_handler_not_raised_at_the_caller() -> None:
    """Filters run outside the handler's error handling: a library's bad %-format must not raise where it logged."""
    record = _record("took %d ms", "not a number")
    assert RedactQueryTokens().filter(record)
    with pytest.raises(TypeError):  # still broken for the handler to report, as without the filter
        record.getMessage()


def test_structlog_event_dicts_pass_untouched() -> None:
    record = logging.LogRecord("rtai", logging.INFO, __file__, 1, {"event": "x", "q": "access_token=S"}, None, None)
    assert RedactQueryTokens().filter(record)
    assert record.msg == {"event": "x", "q": "access_token=S"}
