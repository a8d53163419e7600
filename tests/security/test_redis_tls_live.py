"""TLS to Redis: gateway and worker talk to a TLS-only redis-server through `rediss://` and a private CA."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import procs
from tests.support.ports import free_port
from tests.support.redis_server import RedisProcess
from tests.support.ws_client import Conn

pytestmark = pytest.mark.integration


def make_certs(d: Path) -> None:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=rtai-test-ca",
    )
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl(
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.crt",
        "-days",
        "1",
        "-extfile",
        "ext",
    )


async def test_services_work_over_tls_and_plain_text_is_refused(
    tmp_path: Path, prefix: str, sec_services: list[procs.Service]
) -> None:
    make_certs(tmp_path)
    port = free_port()
    tls_args = [
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(tmp_path / "redis.crt"),
        "--tls-key-file",
        str(tmp_path / "redis.key"),
        "--tls-ca-cert-file",
        str(tmp_path / "ca.crt"),
        "--tls-auth-clients",
        "no",
    ]
    redis = RedisProcess(port=port, args=tls_args)
    redis.wait_ping = lambda timeout=10.0: None  # type: ignore[method-assign] # the plain-text probe cannot speak TLS
    redis.start()
    try:
        env = {"REDIS__URL": f"rediss://127.0.0.1:{port}/0", "REDIS__TLS_CA_FILE": str(tmp_path / "ca.crt")}
        sec_services.append(procs.worker(env, prefix).start())
        g = procs.gateway(env, prefix).start()
        sec_services.append(g)
        c = await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open()
        assert (await c.call("sentiment", "encrypted and happy"))["type"] == "result"
        await c.close()
        # The same server over plain text: never ready, and it says why.
        plain = procs.gateway({"REDIS__URL": f"redis://127.0.0.1:{port}/0"}, prefix).start(wait_ready=False)
        sec_services.append(plain)
        status = None
        deadline = time.monotonic() + 10
        while status is None and time.monotonic() < deadline:
            try:
                status = httpx.get(f"{plain.base}/readyz", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.1)
        assert status == 503
    finally:
        redis.kill()
