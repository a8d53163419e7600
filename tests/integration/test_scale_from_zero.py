"""Workers scaled to zero: a gateway with `admission.queue_when_no_workers` takes requests for a registered task whose
workers are all gone, exports the queue they make (what starts the first worker: KEDA's activation), and the next
worker answers them. A gateway without the setting refuses them `unavailable`, side by side on the same Redis."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import httpx

from tests.support import procs
from tests.support.polling import until
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn


def gauge(g: procs.Service, name: str, task: str) -> float | None:
    text = httpx.get(f"{g.base}/metrics", timeout=5).text
    m = re.search(rf'^{name}{{task="{task}"}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else None


def listed(g: procs.Service) -> dict[str, int]:
    """Task -> live workers, as GET /v1/tasks lists them."""
    return {t["task"]: t["workers"] for t in httpx.get(f"{g.base}/v1/tasks", timeout=5).json()["tasks"]}


async def test_requests_wait_in_the_queue_while_workers_are_scaled_to_zero(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    first = start(services, procs.worker(env, prefix))
    queuing = start(services, procs.gateway(env, prefix, ADMISSION__QUEUE_WHEN_NO_WORKERS="true"))
    refusing = start(services, procs.gateway(env, prefix))
    for g in (queuing, refusing):
        g.wait_task("sentiment")
    assert first.stop() == 0  # scaled to zero: the worker drains and deregisters

    await until(lambda: listed(refusing) == {} and listed(queuing) == {"sentiment": 0}, "the worker deregistered")
    c = await Conn(ws_url(refusing)).open()
    refused = await c.call("sentiment", "refused while no worker serves it")
    assert (refused["type"], refused["code"], refused["retry_after_ms"] > 0) == ("error", "unavailable", True)

    q = await Conn(ws_url(queuing)).open()
    held = [await q.infer("sentiment", f"held {i}: I love it") for i in range(5)]
    late = await q.infer("sentiment", "waits past its deadline", deadline_ms=1500)
    for rid in [*held, late]:
        await q.wait_for(lambda f, rid=rid: f["type"] == "accepted" and f["id"] == rid)
    # Every gateway exports the queue with no worker left; a reading held from the last live worker would say 0.
    for g in (queuing, refusing):
        await until(lambda g=g: gauge(g, "rtai_queue_length", "sentiment") == 6, "the backlog is exported")
        assert gauge(g, "rtai_queue_workers", "sentiment") == 0
        assert (gauge(g, "rtai_queue_oldest_age_seconds", "sentiment") or 0) > 0
    expired = await q.final(late, timeout=5)
    assert (expired["type"], expired["code"]) == ("error", "deadline_exceeded"), expired

    start(services, procs.worker(env, prefix))  # the autoscaler's first worker
    for rid in held:
        final = await q.final(rid, timeout=20)
        assert final["type"] == "result", final
    refusing.wait_task("sentiment")
    assert (await c.call("sentiment", "served again"))["type"] == "result"
    await asyncio.sleep(0.5)
    assert [len(q.finals(rid)) for rid in [*held, late]] == [1] * 6
    await until(lambda: gauge(queuing, "rtai_queue_length", "sentiment") == 0, "the backlog drained")
    await c.close()
    await q.close()


async def declare(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`python -m rtai_worker declare` (or another command) with a worker's env: (exit code, output)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rtai_worker", *(args or ["declare"])],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


async def test_a_task_declared_before_any_worker_ran_is_queued_for_the_first_one(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A new deployment with its workers at zero: no worker has ever registered the task. `python -m rtai_worker
    declare` (the chart's hook Job) records it; the gateway queues its requests, and the first worker answers them.
    Declaring again while a worker serves the task leaves that worker's registration alone."""
    env = procs.redis_env_for_url(redis_server.url)
    queuing = start(services, procs.gateway(env, prefix, ADMISSION__QUEUE_WHEN_NO_WORKERS="true"))
    c = await Conn(ws_url(queuing)).open()
    unknown = await c.call("sentiment", "no worker ever ran")
    assert (unknown["type"], unknown["code"]) == ("error", "unknown_task"), unknown

    declarer = procs.worker(env, prefix)  # the worker's settings, as the hook Job gets them; never started
    code, out = await declare(declarer.env)
    assert code == 0 and '"task.declared"' in out, out[-2000:]
    await until(lambda: listed(queuing) == {"sentiment": 0}, "the declared task is listed")
    rid = await c.infer("sentiment", "queued for the first worker: I love it")
    await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == rid)
    await until(lambda: gauge(queuing, "rtai_queue_length", "sentiment") == 1, "the backlog is exported")

    start(services, procs.worker(env, prefix))
    assert (await c.final(rid, timeout=20))["type"] == "result"
    code, out = await declare(declarer.env)
    assert code == 0 and '"task.served"' in out, out[-2000:]
    assert listed(queuing) == {"sentiment": 1}
    await c.close()


async def test_a_retired_task_is_forgotten_once_no_worker_serves_it(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """Tasks dropped from the workers' configuration (listed in `retired_tasks` for the chart's hook Job): while a
    worker of the last deployment still serves one, the Job waits for it to go (`retire_wait_s`) and fails past that
    (Kubernetes runs it again); once no worker serves a task it is removed, the gateways refuse it `unknown_task` and
    stop exporting its queue (a reading frozen at its last value would keep an autoscaler and an alert acting on
    it), and the jobs still queued for it end at their deadlines."""
    env = procs.redis_env_for_url(redis_server.url)
    old = start(services, procs.worker(env, prefix, tasks="old=vader"))
    older = start(services, procs.worker(env, prefix, tasks="older=vader"))
    queuing = start(services, procs.gateway(env, prefix, ADMISSION__QUEUE_WHEN_NO_WORKERS="true"))
    queuing.wait_task("old")
    queuing.wait_task("older")
    upgrade = procs.worker(env, prefix, tasks="sentiment=vader", RETIRED_TASKS="old,older")  # the new release's Job

    code, out = await declare({**upgrade.env, "RTAI_WORKER_RETIRE_WAIT_S": "0"})
    assert code == 5 and out.count('"task.still_served"') == 2, out[-2000:]

    assert old.stop() == 0
    c = await Conn(ws_url(queuing)).open()
    queued = await c.infer("old", "queued for a worker that will not come", deadline_ms=4000)
    await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == queued)
    await until(lambda: gauge(queuing, "rtai_queue_length", "old") == 1, "the old task's queue is exported")

    job = asyncio.create_task(declare({**upgrade.env, "RTAI_WORKER_RETIRE_WAIT_S": "30"}))  # the Job's next run
    await asyncio.sleep(1.5)
    assert not job.done(), "it gave up while a worker of `older` was still live"
    await until(lambda: "old" not in listed(queuing), "the task no worker serves is removed at once")
    assert older.stop() == 0  # the last release's pod drains and goes
    code, out = await asyncio.wait_for(job, 30)
    assert code == 0 and '"task.waiting_for_workers"' in out and out.count('"task.forgotten"') == 2, out[-2000:]
    assert '"queued":1' in out.replace(" ", ""), out[-2000:]
    await until(lambda: listed(queuing) == {"sentiment": 0}, "the retired tasks are no longer listed")
    assert gauge(queuing, "rtai_queue_length", "old") is None
    assert gauge(queuing, "rtai_queue_workers", "old") is None
    refused = await c.call("old", "after it was forgotten")
    assert (refused["type"], refused["code"]) == ("error", "unknown_task"), refused
    expired = await c.final(queued, timeout=8)
    assert (expired["type"], expired["code"]) == ("error", "deadline_exceeded"), expired

    code, out = await declare(upgrade.env, "forget", "old", "never-was")  # by hand: nothing left to remove
    assert code == 0 and out.count('"task.not_registered"') == 2, out[-2000:]
    await c.close()
