"""Gateway settings that cannot work together are refused at startup, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rtai_gateway.settings import GatewaySettings


def test_request_state_must_outlive_the_longest_deadline() -> None:
    with pytest.raises(ValidationError, match=r"must exceed deadlines\.max_ms"):
        GatewaySettings(sessions={"request_ttl_s": 60}, deadlines={"max_ms": 60_000, "default_ms": 30_000})
    GatewaySettings(sessions={"request_ttl_s": 61}, deadlines={"max_ms": 60_000, "default_ms": 30_000})
