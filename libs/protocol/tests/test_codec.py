"""Client frames are parsed strictly; server and internal messages tolerantly; errors name the problem."""

from __future__ import annotations

import json

import pytest

from rtai_protocol import (
    Accepted,
    ErrorCode,
    Hello,
    Infer,
    Job,
    ProtocolError,
    Result,
    decode_client_frame,
    decode_internal,
    decode_server_frame,
    encode,
    with_seq,
)
from rtai_protocol.codec import UnsupportedMessage


def test_valid_infer_parses_with_defaults() -> None:
    frame = decode_client_frame('{"type":"infer","id":"r-1","task":"sentiment","input":"hi"}')
    assert isinstance(frame, Infer)
    assert frame.options.stream is False
    assert frame.options.deadline_ms is None


def test_generation_options_parse() -> None:
    raw = '{"type":"infer","id":"g","task":"generate","input":"hi","options":{"time_limit_s":2.5,"temperature":0.7}}'
    frame = decode_client_frame(raw)
    assert isinstance(frame, Infer)
    assert (frame.options.time_limit_s, frame.options.temperature) == (2.5, 0.7)


@pytest.mark.parametrize(
    ("raw", "needle", "rid"),
    [
        ("{nope", "not valid JSON", None),
        ('{"type":"infer","id":"a","task":"s","input":1}', "input", "a"),
        ('{"type":"infer","id":"a","task":"s","input":"x","extra":1}', "extra", "a"),
        ('{"type":"infer","id":"a","task":"s","input":"x","options":{"deadline_ms":"5"}}', "deadline_ms", "a"),
        ('{"type":"infer","id":"has space","task":"s","input":"x"}', "id", "has space"),
        ('{"type":"infer","id":"a","task":"Bad Task","input":"x"}', "task", "a"),
        ('{"type":"teleport"}', "type", None),
        ("[1,2]", "JSON object", None),
        ('{"a":' * 40 + "1" + "}" * 40, "nested deeper", None),
        ('{"type":"infer","id":"a","task":"s","input":"x","options":{"temperature":3}}', "temperature", "a"),
        ('{"type":"infer","id":"a","task":"s","input":"x","options":{"time_limit_s":0}}', "time_limit_s", "a"),
        ('{"type":"hello","last_seq":100000000000000000000}', "last_seq", None),
        ('{"type":"hello","last_seq":5.5}', "last_seq", None),
        ('{"type":"hello","last_seq":true}', "last_seq", None),
        ('{"type":"hello","v":2}', "hello.v", None),
        ('{"type":"infer","id":"a","task":"s","input":"x","options":{"deadline_ms":0.0}}', "deadline_ms", "a"),
    ],
)
def test_bad_frames_raise_invalid_request_naming_the_problem(raw: str, needle: str, rid: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(raw)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert needle in info.value.message
    assert info.value.request_id == rid


def test_whole_floats_count_as_integers_as_in_json_schema() -> None:
    """A frame the published schema accepts (its "integer" takes 5000.0) is not refused by the server."""
    infer = decode_client_frame('{"type":"infer","id":"a","task":"s","input":"x","options":{"deadline_ms":5000.0}}')
    assert isinstance(infer, Infer) and infer.options.deadline_ms == 5000
    assert isinstance(infer.options.deadline_ms, int)
    hello = decode_client_frame('{"type":"hello","v":1.0,"last_seq":1e3}')
    assert isinstance(hello, Hello) and (hello.v, hello.last_seq) == (1, 1000)


def test_server_frames_tolerate_unknown_fields_and_codes() -> None:
    frame = decode_server_frame('{"type":"error","id":"x","code":"brand_new_code","message":"m","future":1}')
    assert frame.type == "error"
    assert frame.code == "brand_new_code"  # type: ignore[union-attr]


def test_with_seq_puts_seq_into_an_encoded_frame() -> None:
    body = encode(Result(id="r", output={"label": "positive"}))
    numbered = json.loads(with_seq(body, 7))
    assert numbered == {"seq": 7, "type": "result", "id": "r", "output": {"label": "positive"}}
    assert json.loads(with_seq(encode(Accepted(id="a")), 1))["seq"] == 1


def test_internal_messages_accept_this_and_the_previous_version_and_ignore_new_fields() -> None:
    job = Job(
        job_id="j",
        request_id="r",
        owner="o",
        session="s",
        task="t",
        input="x",
        deadline_ms=1,
        enqueued_ms=1,
        reply_to="q",
    )
    data = json.loads(encode(job))
    data["added_later"] = True
    assert decode_internal(json.dumps(data)) == job
    data["v"] = 0
    assert isinstance(decode_internal(json.dumps(data)), Job)
    data["v"] = 99
    with pytest.raises(UnsupportedMessage):
        decode_internal(json.dumps(data))
    with pytest.raises(UnsupportedMessage):
        decode_internal(b'{"v":1,"type":"mystery"}')
    for v in ("[1]", "{}", '"1"', "1.5", "true"):  # unhashable or of another type: refused, not a TypeError
        with pytest.raises(UnsupportedMessage):
            decode_internal(b'{"v":' + v.encode() + b',"type":"job"}')
