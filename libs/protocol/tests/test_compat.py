"""Golden frames of protocol v1: what clients send and receive today must keep parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtai_protocol import decode_client_frame, decode_server_frame

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("client-*.json")), ids=lambda p: p.stem)
def test_client_fixture_parses(path: Path) -> None:
    frame = decode_client_frame(path.read_text())
    assert frame.type == json.loads(path.read_text())["type"]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("server-*.json")), ids=lambda p: p.stem)
def test_server_fixture_parses(path: Path) -> None:
    frame = decode_server_frame(path.read_text())
    assert frame.type == json.loads(path.read_text())["type"]


def test_fixtures_exist() -> None:
    assert len(list(FIXTURES.glob("*.json"))) >= 8
