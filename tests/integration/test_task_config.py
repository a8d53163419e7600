"""One task name = one model configuration: a worker that would serve a task differently is refused."""

from __future__ import annotations

import json
import subprocess

from tests.support import procs
from tests.support.redis_server import RedisHandle


def test_a_worker_with_another_model_for_a_live_task_is_refused(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    services.append(procs.worker(env, prefix, tasks="sentiment=vader").start())
    other = procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow")
    services.append(other.start(wait_ready=False))
    assert other.proc is not None
    try:
        code = other.proc.wait(30)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the conflicting worker kept running") from e
    assert code == 3
    refused = [json.loads(ln) for ln in other.logs().splitlines() if '"worker.refused"' in ln]
    assert refused, other.logs()[-2000:]
    assert "give it another task name" in refused[0]["reason"]
    # Under its own task name the same model is welcome.
    services.append(procs.worker(env, prefix, tasks="sentiment-slow=tests.support.fake_models:slow").start())
