"""A bug while handling a frame answers `internal` without internals, and the socket keeps working (no Redis)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient

from rtai_gateway import lifecycle
from rtai_gateway.guard import build_guard
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.runtime import Runtime
from rtai_gateway.session import Session
from rtai_gateway.settings import GatewaySettings
from rtai_gateway.ws import websocket_endpoint

SECRET_DETAIL = "redis://gw:hunter2-very-secret@10.0.0.7:6379 Traceback"


class ExplodingHub:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.pending: dict[Any, Any] = {}
        self.finish_hooks: list[Any] = []
        self.reap_hooks: list[Any] = []

    async def submit(self, session: Session, frame: Any) -> None:
        if frame.input == "boom":
            raise RuntimeError(SECRET_DETAIL)
        session.send(b'{"type":"result","id":"%s","output":1}' % frame.id.encode())


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    settings = GatewaySettings(limits={"message_burst": 5, "messages_per_s": 0.5}, allowed_origins="https://ok.example")
    hub = ExplodingHub(settings)
    rt = Runtime(settings=settings, redis=None, metrics=hub.metrics, hub=hub, catalog=None)  # type: ignore[arg-type]
    guard = build_guard(settings, hub)  # type: ignore[arg-type]

    async def open_session(hub: Any, conn: Any, identity: Any, hello: Any) -> tuple[Session, bool]:
        return Session(id="s1", identity=identity or "anon:s1", conn=conn), False

    async def detach(*args: Any) -> None:
        return None

    monkeypatch.setattr(lifecycle, "open_session", open_session)
    monkeypatch.setattr(lifecycle, "detach", detach)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"rt": rt, "guard": guard}

    app = Starlette(routes=[WebSocketRoute("/v1/ws", websocket_endpoint)], lifespan=lifespan)
    with TestClient(app) as c:
        yield c


def test_internal_error_is_generic_and_the_socket_survives(client: TestClient) -> None:
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "hello"})
        assert ws.receive_json()["type"] == "welcome"
        ws.send_json({"type": "infer", "id": "a", "task": "sentiment", "input": "boom"})
        err = ws.receive_json()
        assert err == {"type": "error", "id": "a", "code": "internal", "message": "internal error"}
        ws.send_json({"type": "infer", "id": "b", "task": "sentiment", "input": "fine"})
        assert ws.receive_json() == {"type": "result", "id": "b", "output": 1}


def test_rate_limit_answers_with_the_request_id_and_retry_after(client: TestClient) -> None:
    with client.websocket_connect("/v1/ws") as ws:
        for i in range(5):
            ws.send_json({"type": "infer", "id": f"r{i}", "task": "t", "input": "fine"})
        frames = [ws.receive_json() for _ in range(6)]  # welcome + 5 results
        assert [f["type"] for f in frames].count("result") == 5
        ws.send_json({"type": "infer", "id": "over", "task": "t", "input": "fine"})
        err = ws.receive_json()
        assert err["code"] == "rate_limited"
        assert err["id"] == "over"
        assert err["retry_after_ms"] > 0


def test_foreign_origin_is_refused_at_the_handshake(client: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with (
        pytest.raises(WebSocketDisconnect) as e,
        client.websocket_connect("/v1/ws", headers={"origin": "https://evil.example"}),
    ):
        pass
    assert e.value.code == 1008
    with client.websocket_connect("/v1/ws", headers={"origin": "https://ok.example"}) as ws:
        ws.send_json({"type": "hello"})
        assert ws.receive_json()["type"] == "welcome"


def test_auth_frame_when_auth_is_off_is_answered_and_does_not_start_a_session(client: TestClient) -> None:
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "auth", "token": "abc"})
        err = ws.receive_json()
        assert err["code"] == "invalid_request"
        assert "off" in err["message"]
        ws.send_json({"type": "hello"})
        assert ws.receive_json()["type"] == "welcome"
