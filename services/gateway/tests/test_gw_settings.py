"""Gateway settings that cannot work together are refused at startup, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rtai_gateway.settings import GatewaySettings


def test_request_state_must_outlive_the_longest_deadline() -> None:
    with pytest.raises(ValidationError, match=r"must exceed deadlines\.max_ms"):
        GatewaySettings(sessions={"request_ttl_s": 60}, deadlines={"max_ms": 60_000, "default_ms": 30_000})
    GatewaySettings(sessions={"request_ttl_s": 61}, deadlines={"max_ms": 60_000, "default_ms": 30_000})


@pytest.mark.parametrize("gateway_id", ["gw:1", ""])
def test_gateway_id_without_colon(gateway_id: str) -> None:
    """Other gateways read the id from the end of its reply stream's key, after the last `:`: `gw:1` would be read as
    `1`, never found alive, and its requests re-run by whoever took their sessions over."""
    with pytest.raises(ValidationError, match="gateway_id"):
        GatewaySettings(gateway_id=gateway_id)
    GatewaySettings(gateway_id="gw-1.pod_a")
