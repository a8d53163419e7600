"""Least-privilege Redis and secrets that never leak.

Redis runs with the ACL file scripts/redis_acl.py writes: no default user, a gateway user and a worker user limited
to the prefix's keys, one channel and the commands their code sends. Gateway and worker run end to end under those
users (requests, streams, cancel, resume, idempotent retries, reclaim); afterwards Redis' ACL LOG must hold no
denial. Then: what each user must not do is refused, and no secret (Redis passwords, JWT secret, client tokens)
appears in either service's logs, in any frame a client received, or in /metrics.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.security.conftest import JWT_ENV, JWT_SECRET, metrics_text, token
from tests.support import procs
from tests.support.ports import free_port
from tests.support.procs import start, ws_url
from tests.support.redis_server import redis_binary
from tests.support.ws_client import Conn

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PREFIX = "acltest"
NO_RETRY = Retry(NoBackoff(), 0)  # redis-py retries refused logins for seconds by default


def _acl_module() -> Any:
    spec = importlib.util.spec_from_file_location("redis_acl", REPO / "scripts" / "redis_acl.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


acl = _acl_module()


@dataclass
class AclRedis:
    port: int
    passwords: dict[str, str]
    proc: subprocess.Popen[bytes]
    workdir: Path

    def client(self, user: str | None) -> redis.Redis:
        password = self.passwords[user] if user else None
        return redis.Redis(port=self.port, username=user, password=password, socket_timeout=5)

    def env(self, user: str) -> dict[str, str]:
        return {
            "REDIS__URL": f"redis://127.0.0.1:{self.port}/0",
            "REDIS__USERNAME": user,
            "REDIS__PASSWORD": self.passwords[user],
        }


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[AclRedis]:
    workdir = Path(tempfile.mkdtemp(prefix="rtai-acl-"))
    passwords = {u: "pw-" + secrets.token_hex(16) for u in (acl.GATEWAY_USER, acl.WORKER_USER, acl.ADMIN_USER)}
    lines = acl.acl_lines(PREFIX, passwords[acl.GATEWAY_USER], passwords[acl.WORKER_USER], passwords[acl.ADMIN_USER])
    (workdir / "users.acl").write_text("\n".join(lines) + "\n")
    assert not any(p in (workdir / "users.acl").read_text() for p in passwords.values()), "passwords stored in clear"
    port = free_port()
    cmd = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--aclfile", str(workdir / "users.acl")]
    with (workdir / "log.txt").open("ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    server = AclRedis(port, passwords, proc, workdir)
    deadline = time.monotonic() + 10
    while True:
        try:
            if server.client(acl.ADMIN_USER).ping():
                break
        except redis.RedisError:
            assert proc.poll() is None, (workdir / "log.txt").read_text()
            assert time.monotonic() < deadline, "redis with ACL file did not start"
            time.sleep(0.05)
    server.client(acl.ADMIN_USER).acl_log_reset()
    yield server
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def acl_stack(acl_redis: AclRedis, module_services: list[procs.Service]) -> tuple[procs.Service, procs.Service]:
    w = start(
        module_services,
        procs.worker(
            acl_redis.env(acl.WORKER_USER),
            PREFIX,
            tasks="sentiment=vader,stream=tests.support.fake_models:tokens",
            RTAI_TEST_TOKEN_MS="50",
            LOG_LEVEL="debug",
        ),
    )
    g = start(module_services, procs.gateway(acl_redis.env(acl.GATEWAY_USER), PREFIX, **JWT_ENV, LOG_LEVEL="debug"))
    return g, w


async def drive_every_path(g: procs.Service) -> list[dict[str, Any]]:
    """Requests, a stream, a cancel, an idempotent retry, a resume, refusals: every Redis path both services use."""
    tok = token("alice")
    c = await Conn(ws_url(g)).open(subprotocols=["rtai.v1", f"bearer.{tok}"])
    assert (await c.call("sentiment", "I love this")).get("output", {}).get("label") == "positive"
    await c.infer("stream", "one two three four five six seven eight", rid="s1", stream=True)
    assert (await c.final("s1", timeout=15))["type"] == "result"
    await c.infer("stream", " ".join(["word"] * 200), rid="s2", stream=True)
    await c.wait_for(lambda f: f["type"] == "chunk" and f["id"] == "s2")
    await c.send({"type": "cancel", "id": "s2"})
    assert (await c.final("s2"))["code"] == "cancelled"
    # A request resent while in flight, in the same session (a client that retries, or resumes on another gateway):
    # SUBMIT finds it admitted in this session and reads its stored state (HMGET) instead of enqueueing it again.
    await c.infer("stream", " ".join(["word"] * 20), rid="s4", stream=True)
    await c.wait_for(lambda f: f["type"] == "chunk" and f["id"] == "s4")
    await c.infer("stream", " ".join(["word"] * 20), rid="s4", stream=True)
    resent = await c.final("s4", timeout=15)
    assert resent["type"] == "result", f"the resent request failed (the gateway user lacks a command?): {resent}"
    await c.infer("sentiment", "I love this", rid="s3")
    await c.final("s3")
    await c.infer("sentiment", "I love this", rid="s3")  # answered again from the stored result
    await c.infer("nope", "x", rid="u1")
    assert (await c.final("u1"))["code"] == "unknown_task"
    session = c.session
    await c.ws.close(code=4001)
    r = await Conn(ws_url(g)).open(
        {"type": "hello", "session": session, "last_seq": 0}, subprotocols=["rtai.v1", f"bearer.{tok}"]
    )
    assert r.frames[0]["resumed"] is True
    await r.final("s1")
    await r.close()
    frames = c.frames + r.frames
    for bad in (token("alice", secret=JWT_SECRET[::-1]), tok + "x"):
        ws = await websockets.connect(ws_url(g), subprotocols=["rtai.v1", f"bearer.{bad}"])  # type: ignore[list-item]
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1008
    return frames


async def test_services_run_end_to_end_under_least_privilege_users_and_leak_no_secret(
    acl_redis: AclRedis, acl_stack: tuple[procs.Service, procs.Service]
) -> None:
    g, w = acl_stack
    frames = await drive_every_path(g)
    # The chart's hook Job, under the worker's user: declares the served task, forgets a retired one.
    declarer = procs.worker(acl_redis.env(acl.WORKER_USER), PREFIX, RETIRED_TASKS="retired")
    cmd = [sys.executable, "-m", "rtai_worker", "declare"]
    env = {**os.environ, **declarer.env}
    job = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=60)
    assert job.returncode == 0 and '"task.not_registered"' in job.stdout + job.stderr, job.stdout + job.stderr
    await asyncio.sleep(2.5)  # heartbeats, registry refreshes, reclaim scans and gauges run a few times
    denied = acl_redis.client(acl.ADMIN_USER).acl_log()
    summary = sorted({(e["username"], e["reason"], e["object"]) for e in denied})
    assert summary == [], f"the ACL refused what the services need (update scripts/redis_acl.py): {summary}"

    secret_values = [*acl_redis.passwords.values(), JWT_SECRET, token("alice").rsplit(".", 1)[1]]
    async with httpx.AsyncClient() as http:
        worker_metrics = (await http.get(f"{w.base}/metrics")).text
    texts = {
        "gateway log": g.logs(),
        "worker log": w.logs(),
        "frames": json.dumps(frames),
        "gateway metrics": await metrics_text(g),
        "worker metrics": worker_metrics,
    }
    assert "gateway.started" in texts["gateway log"]
    assert "unauthenticated" in texts["frames"]
    for where, text in texts.items():
        for value in secret_values:
            assert value not in text, f"a secret appears in the {where}"


def test_each_user_is_refused_what_it_does_not_need(acl_redis: AclRedis) -> None:
    admin = acl_redis.client(acl.ADMIN_USER)
    admin.acl_log_reset()
    gw = acl_redis.client(acl.GATEWAY_USER)
    wk = acl_redis.client(acl.WORKER_USER)
    session_key = f"{PREFIX}:v1:session:{{abc}}:log"
    refusals = [
        lambda: redis.Redis(port=acl_redis.port, retry=NO_RETRY).ping(),
        gw.flushall,
        lambda: gw.keys("*"),
        lambda: gw.config_get("*"),
        lambda: gw.set("other-app:key", "x"),
        lambda: gw.get(f"{PREFIX}x:v1:probe"),
        lambda: gw.acl_list(),
        lambda: gw.publish("other-channel", "x"),
        wk.flushdb,
        lambda: wk.xrange(session_key),  # workers never read session logs (other users' frames)
        lambda: wk.hgetall(f"{PREFIX}:v1:req:{{alice}}:r1"),
        lambda: wk.xread({session_key: "0-0"}),
        lambda: wk.publish(f"{PREFIX}:v1:cancel", "x"),  # only the gateway cancels
        wk.script_flush,
    ]
    for attempt in refusals:
        with pytest.raises((redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError)):
            attempt()
    assert gw.set(f"{PREFIX}:v1:probe", "1")  # what they need still works
    assert wk.get(f"{PREFIX}:v1:probe") == b"1"
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis.port, username=acl.GATEWAY_USER, password="wrong-password", retry=NO_RETRY).ping()


def test_a_wrong_redis_password_is_not_logged(acl_redis: AclRedis, sec_services: list[procs.Service]) -> None:
    env = {**acl_redis.env(acl.GATEWAY_USER), "REDIS__PASSWORD": "wrong-" + secrets.token_hex(12)}
    g = procs.gateway(env, PREFIX, LOG_LEVEL="debug", REDIS__RETRIES="1")
    sec_services.append(g)
    g.start(wait_ready=False)
    # The gateway must say why it is not ready: wait for the refusal itself, not for any line that happens to mention
    # Redis (the startup line does). Its loops log a failure once per streak; the retries go on meanwhile.
    deadline = time.monotonic() + 15
    while '"error": "AuthenticationError"' not in g.logs():
        assert time.monotonic() < deadline, f"no AuthenticationError logged: {g.logs()[-2000:]}"
        time.sleep(0.2)
    time.sleep(2)  # a few retries with the wrong password: none of them may log it either
    assert httpx.get(f"{g.base}/readyz", timeout=2).status_code == 503
    assert env["REDIS__PASSWORD"] not in g.logs()
