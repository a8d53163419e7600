"""One task name = one model configuration: a worker that would serve a task differently is refused."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.support import procs
from tests.support.redis_server import RedisHandle


def exit_code(worker: procs.Service, still_running: str) -> int:
    """The worker's exit status once it exits by itself (within 30 s); `still_running` is the failure otherwise."""
    assert worker.proc is not None
    try:
        return worker.proc.wait(30)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(still_running) from e


def test_a_worker_with_another_model_for_a_live_task_is_refused(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    services.append(procs.worker(env, prefix, tasks="sentiment=vader").start())
    other = procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow")
    services.append(other.start(wait_ready=False))
    assert exit_code(other, "the conflicting worker kept running") == 3
    refused = [json.loads(ln) for ln in other.logs().splitlines() if '"worker.refused"' in ln]
    assert refused, other.logs()[-2000:]
    assert "give it another task name" in refused[0]["reason"]
    # Under its own task name the same model is welcome.
    services.append(procs.worker(env, prefix, tasks="sentiment-slow=tests.support.fake_models:slow").start())


def test_a_worker_that_finds_its_task_taken_by_another_model_after_a_pause_stops_serving_it(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    ttl = {"REGISTRATION_TTL_S": "1.5"}  # heartbeats every 0.375 s
    first = procs.worker(env, prefix, tasks="sentiment=vader", **ttl).start()
    services.append(first)
    first.signal(signal.SIGSTOP)  # a long pause: its registration expires
    try:
        time.sleep(2.5)
        # With no live worker listed, one with another model may take the task.
        services.append(procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", **ttl).start())
    finally:
        first.signal(signal.SIGCONT)
    assert exit_code(first, "the worker went on serving a task registered with another model") == 3
    events = [json.loads(ln)["event"] for ln in first.logs().splitlines() if ln.startswith("{")]
    assert "task.config_conflict" in events and "worker.refused" in events, events[-20:]
