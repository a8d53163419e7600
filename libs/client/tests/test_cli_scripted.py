"""`rtai send` and `rtai chat` against a scripted gateway in a thread (the commands run their own event loop): a refused
handshake, a stream that lost a chunk in a failover (a skipped `chunk.index`) or whose result differs from its chunks
with nothing lost, a connection closed for good."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import pytest
from typer.testing import CliRunner, Result
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from rtai_client.cli import app

TASKS = {
    "tasks": [
        {"task": "sentiment", "model": "vader", "streaming": False, "max_input_chars": 100, "workers": 1},
        {"task": "generate", "model": "smollm2", "streaming": True, "max_input_chars": 100, "workers": 1},
    ]
}
Handler = Callable[[ServerConnection], None]


def _tasks_or_upgrade(connection: ServerConnection, request: Request) -> Response | None:
    """`GET /v1/tasks` answered over HTTP (the CLI asks whether a task streams), anything else upgraded."""
    if request.path == "/v1/tasks":
        body = json.dumps(TASKS).encode()
        headers = Headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
        return Response(200, "OK", headers, body)
    return None


def _forbid(connection: ServerConnection, request: Request) -> Response:
    return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")


@pytest.fixture
def gateway() -> Iterator[Callable[..., str]]:
    """Start a scripted gateway: `gateway(handler, process_request=...)` -> its WebSocket URL."""
    servers: list[Any] = []

    def start(handler: Handler, process_request: Any = _tasks_or_upgrade) -> str:
        server = serve(handler, "127.0.0.1", 0, process_request=process_request)
        threading.Thread(target=server.serve_forever, name="scripted-gateway", daemon=True).start()
        servers.append(server)
        return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1/ws"

    yield start
    for s in servers:
        s.shutdown()


def _welcome(ws: ServerConnection) -> dict[str, Any]:
    assert json.loads(ws.recv())["type"] == "hello"
    ws.send(json.dumps({"type": "welcome", "session": "s1", "resumed": False, "gateway": "g1"}))
    infer: dict[str, Any] = json.loads(ws.recv())
    return infer


def _never(ws: ServerConnection) -> None:
    raise AssertionError("the handshake was refused: no connection")


@pytest.mark.parametrize("command", [["send", "hello"], ["chat", "--task", "sentiment"]])
def test_a_refused_handshake_is_one_line_and_a_failed_exit(gateway: Callable[..., str], command: list[str]) -> None:
    url = gateway(_never, process_request=_forbid)
    out = CliRunner().invoke(app, [*command, "--url", url], input="hi\n")
    assert isinstance(out.exception, SystemExit), out.exception  # before: websockets' InvalidStatus, a traceback
    assert out.exit_code == 1
    assert "Traceback" not in out.output
    assert out.output.startswith("error:") and "HTTP 403" in out.output


def _streams(chunks: dict[int, str], text: str) -> Handler:
    """Accept the request, stream `chunks` (index -> data; a missing index was lost), then a result with `text`."""

    def handler(ws: ServerConnection) -> None:
        rid = _welcome(ws)["id"]
        ws.send(json.dumps({"type": "accepted", "id": rid, "seq": 1, "task": "generate", "deadline_ms": 0}))
        for seq, (index, data) in enumerate(chunks.items(), start=2):
            ws.send(json.dumps({"type": "chunk", "id": rid, "seq": seq, "index": index, "data": data}))
        ws.send(json.dumps({"type": "result", "id": rid, "seq": len(chunks) + 2, "output": {"text": text}}))
        for _ in ws:
            pass

    return handler


def _send_streamed(url: str) -> Result:
    out = CliRunner().invoke(app, ["send", "hi", "--task", "generate", "--url", url])
    assert out.exit_code == 0, out.output
    return out


def test_a_stream_that_lost_a_chunk_prints_the_whole_result(gateway: Callable[..., str]) -> None:
    """A Redis failover can lose a chunk for good (its index is skipped); the result carries the whole output."""
    out = _send_streamed(gateway(_streams({0: "Hello", 2: " world"}, "Hello there world")))  # index 1 lost
    lines = out.output.splitlines()
    assert lines[0] == "Hello world"  # as it streamed
    assert "lost" in lines[1]
    assert lines[2] == "Hello there world"


def test_a_stream_whose_result_goes_on_gets_its_end_printed_without_a_notice(gateway: Callable[..., str]) -> None:
    """The worker holds back a token that ends inside a character, and stops streaming once a re-decode no longer
    extends what it sent: the result can go on after the last chunk with nothing lost. Its end is printed."""
    out = _send_streamed(gateway(_streams({0: "Hello", 1: " wor"}, "Hello world")))
    assert out.output == "Hello world\n"  # no notice: nothing was lost


def test_a_stream_the_result_revises_gets_the_result_without_claiming_a_loss(gateway: Callable[..., str]) -> None:
    """A final decode can change text already streamed (no index is missing): the result is the answer."""
    out = _send_streamed(gateway(_streams({0: "Hello", 1: " ."}, "Hello.")))
    lines = out.output.splitlines()
    assert lines[0] == "Hello ."  # as it streamed
    assert "lost" not in out.output and "failover" not in out.output
    assert lines[-1] == "Hello."
    assert len(lines) == 3, out.output  # one line says the next is the answer


def test_a_stream_that_lost_its_first_chunk_prints_the_whole_result(gateway: Callable[..., str]) -> None:
    out = _send_streamed(gateway(_streams({1: " world"}, "Hello world")))  # index 0 lost
    lines = out.output.splitlines()
    assert lines[0] == " world"  # as it streamed
    assert "lost" in lines[1]
    assert lines[2:] == ["Hello world"]


def test_a_stream_printed_whole_gets_no_notice(gateway: Callable[..., str]) -> None:
    def handler(ws: ServerConnection) -> None:
        rid = _welcome(ws)["id"]
        ws.send(json.dumps({"type": "chunk", "id": rid, "seq": 1, "index": 0, "data": "[b]Hi"}))
        ws.send(json.dumps({"type": "result", "id": rid, "seq": 2, "output": {"text": "[b]Hi"}}))
        for _ in ws:
            pass

    out = CliRunner().invoke(app, ["send", "hi", "--task", "generate", "--url", gateway(handler)])
    assert out.exit_code == 0, out.output
    assert out.output == "[b]Hi\n"  # printed as text, not as markup


def test_chat_ends_once_the_connection_is_closed_for_good(gateway: Callable[..., str]) -> None:
    """Every later line would fail the same way: the chat says so once and exits non-zero."""

    def handler(ws: ServerConnection) -> None:
        _welcome(ws)
        ws.send(json.dumps({"type": "error", "id": None, "code": "unauthenticated", "message": "token expired"}))
        ws.close(1008, "unauthenticated")

    url = gateway(handler)
    out = CliRunner().invoke(app, ["chat", "--task", "sentiment", "--url", url], input="one\ntwo\nthree\n")
    assert out.exit_code == 1, out.output
    assert out.output.count("1008") == 1, out.output
    assert "error: the connection to the gateway is closed" in out.output
