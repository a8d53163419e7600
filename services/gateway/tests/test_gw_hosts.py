"""The Host allowlist's rules: names as a Host header carries them, patterns, the default by listen address, and the
setting's validation. (Requests through a real gateway: tests/security/test_hosts_live.py.)"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rtai_gateway.hosts import effective_allowed_hosts, host_allowed, host_name
from rtai_gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8443", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_the_name_in_a_host_header(header: str, name: str) -> None:
    assert host_name(header) == name


def test_names_and_subdomain_patterns() -> None:
    allowed = ("gw.example", "*.apps.example")
    assert host_allowed("gw.example:443", allowed)
    assert host_allowed("a.b.apps.example", allowed)
    assert not host_allowed("apps.example", allowed)
    assert not host_allowed("evilgw.example", allowed)
    assert not host_allowed("gw.example.evil", allowed)
    assert not host_allowed(None, allowed)
    assert host_allowed(None, ("*",))


@pytest.mark.parametrize(
    ("listen", "loopback_only"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False), ("gw", False)],
)
def test_the_default_follows_the_listen_address(listen: str, loopback_only: bool) -> None:
    hosts = effective_allowed_hosts([], listen)
    assert (hosts == ("localhost", "127.0.0.1", "::1")) is loopback_only
    assert ("*" in hosts) is not loopback_only
    assert effective_allowed_hosts(["gw.example"], listen) == ("gw.example",)


def test_the_setting_takes_names_and_refuses_ports_and_urls() -> None:
    s = GatewaySettings(allowed_hosts="GW.example, *.apps.example,[::1], 10.0.0.5")
    assert s.allowed_hosts == ["gw.example", "*.apps.example", "::1", "10.0.0.5"]
    assert GatewaySettings(allowed_hosts="*").allowed_hosts == ["*"]
    for bad in ("gw.example:8000", "https://gw.example", "a.*.example", "gw/x"):
        with pytest.raises(ValidationError, match="allowed host"):
            GatewaySettings(allowed_hosts=bad)
