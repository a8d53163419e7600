"""The Host allowlist's rules: names as a Host header carries them, what is always answered, patterns, and the
setting's validation. (Requests through a real gateway: tests/security/test_hosts_live.py.)"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rtai_gateway.hosts import host_allowed, host_name
from rtai_gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8443", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8000", "::1"),
        ("[FD00:0::1]", "fd00::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]evil.example", None),
        ("localhost..", None),
        ("gw.example:80x", None),
        ("evil@localhost", None),
        ("", None),
    ],
)
def test_the_name_in_a_host_header(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_addresses_and_localhost_are_always_answered_other_names_only_if_listed() -> None:
    for always in ("127.0.0.1:8000", "[::1]:8000", "10.1.2.3", "localhost:8000", "LOCALHOST."):
        assert host_allowed(always, ()), always
    assert not host_allowed("rebound.example:8000", ())
    allowed = ("gw.example", "*.apps.example")
    assert host_allowed("gw.example:443", allowed)
    assert host_allowed("a.b.apps.example", allowed)
    assert not host_allowed("apps.example", allowed)
    assert not host_allowed("evilgw.example", allowed)
    assert not host_allowed("gw.example.evil", allowed)
    assert not host_allowed(None, allowed)
    assert host_allowed("anything.example", ("*",))


def test_the_setting_takes_names_and_refuses_what_could_never_match() -> None:
    s = GatewaySettings(allowed_hosts="GW.example, *.apps.example,gw.example.")
    assert s.allowed_hosts == ["gw.example", "*.apps.example", "gw.example"]
    assert GatewaySettings(allowed_hosts="*").allowed_hosts == ["*"]
    bad_values = ("gw.example:8000", "https://gw.example", "a.*.example", "*.", "gw example", "bücher.example", "::1")
    for bad in (*bad_values, "10.0.0.5"):
        with pytest.raises(ValidationError, match="allowed host"):
            GatewaySettings(allowed_hosts=bad)
