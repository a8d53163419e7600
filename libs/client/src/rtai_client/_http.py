"""The gateway's HTTP side, as far as the SDK needs it: `GET /v1/tasks` (stdlib only)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One entry of `GET /v1/tasks`."""

    task: str
    model: str
    streaming: bool
    max_input_chars: int
    workers: int


def http_url(ws_url: str, path: str) -> str:
    """The HTTP(S) URL of `path` on the gateway a WebSocket URL points at."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def get_json(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def parse_tasks(body: dict[str, Any]) -> list[TaskInfo]:
    return [
        TaskInfo(
            task=t["task"],
            model=t.get("model", ""),
            streaming=bool(t.get("streaming", False)),
            max_input_chars=int(t.get("max_input_chars", 0)),
            workers=int(t.get("workers", 0)),
        )
        for t in body.get("tasks", [])
    ]
