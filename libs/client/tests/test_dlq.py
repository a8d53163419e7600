"""`rtai dlq replay` against a real Redis when the dead letters mix jobs with entries no worker could read.

An unreadable entry (a worker dead-letters it with a `reason`) must neither block the jobs around it nor leave a
replay half done: `--all` replays every job and lists what it skipped, and named ids that include an unreadable entry
write nothing at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from rtai_client import dlq
from rtai_client.cli import app

pytestmark = pytest.mark.integration
redis_py = pytest.importorskip("redis")


def _job(request_id: str, prefix: str) -> dict[str, Any]:
    return {
        "type": "job",
        "job_id": f"j-{request_id}",
        "request_id": request_id,
        "owner": "anon:s",
        "session": "s",
        "task": "sentiment",
        "input": f"input of {request_id}",
        "deadline_ms": 1,
        "enqueued_ms": 1,
        "reply_to": f"{prefix}:v1:replies:gone",
    }


@pytest.fixture
def r(redis_server: Any) -> Iterator[Any]:
    client = redis_py.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _dead_letters(r: Any, prefix: str) -> tuple[str, str, str]:
    """good, unreadable, good, in that order, as workers write them."""
    key = f"{prefix}:v1:dlq:sentiment"
    first = r.xadd(key, {"m": json.dumps(_job("r1", prefix)), "deliveries": "5", "worker": "w1"})
    bad = r.xadd(key, {"m": b'{"v":[1],"type":"job"}', "reason": "invalid envelope", "deliveries": "1", "worker": "w1"})
    second = r.xadd(key, {"m": json.dumps(_job("r2", prefix)), "deliveries": "5", "worker": "w2"})
    return first.decode(), bad.decode(), second.decode()


def _queued(r: Any, prefix: str) -> list[str]:
    return [json.loads(fields[b"m"])["request_id"] for _, fields in r.xrange(f"{prefix}:v1:jobs:sentiment")]


def _left(r: Any, prefix: str) -> list[str]:
    return [eid.decode() for eid, _ in r.xrange(f"{prefix}:v1:dlq:sentiment")]


def test_replay_all_skips_and_reports_unreadable_entries(r: Any, redis_server: Any, prefix: str) -> None:
    first, bad, second = _dead_letters(r, prefix)
    common = ["dlq", "replay", "--task", "sentiment", "--redis-url", redis_server.url, "--prefix", prefix]
    runner = CliRunner()

    out = runner.invoke(app, [*common, first, bad])
    assert out.exit_code == 1, out.output
    assert bad in out.output
    assert "cannot be replayed" in out.output
    assert "invalid envelope" in out.output
    assert _queued(r, prefix) == []  # not even the readable one named with it
    assert _left(r, prefix) == [first, bad, second]

    out = runner.invoke(app, [*common, "--all"])
    assert out.exit_code == 0, out.output
    assert f"replayed {first} ->" in out.output
    assert f"replayed {second} ->" in out.output
    assert f"skipped {bad}: not a job the workers can read (invalid envelope)" in out.output
    assert "2 job(s) re-queued, 1 skipped" in out.output
    assert _queued(r, prefix) == ["r1", "r2"]
    assert _left(r, prefix) == [bad]

    out = runner.invoke(app, [*common, "--all"])  # the entry left behind does not turn every later run into an error
    assert out.exit_code == 0, out.output
    assert "0 job(s) re-queued, 1 skipped" in out.output
    assert _queued(r, prefix) == ["r1", "r2"]


async def test_replay_returns_what_it_did_and_queues_an_id_named_twice_once(
    r: Any, redis_server: Any, prefix: str
) -> None:
    first, bad, second = _dead_letters(r, prefix)
    done = await dlq.replay(redis_server.url, prefix, "sentiment", [second, second], keep=True)
    assert [old for old, _ in done.requeued] == [second]
    assert done.skipped == []
    assert _queued(r, prefix) == ["r2"]
    assert _left(r, prefix) == [first, bad, second]  # kept

    everything = await dlq.replay(redis_server.url, prefix, "sentiment", None, deadline_s=None)
    assert [old for old, _ in everything.requeued] == [first, second]
    assert [old for old, _ in everything.skipped] == [bad]
    [_, (_, fields)] = r.xrange(f"{prefix}:v1:jobs:sentiment", count=2)
    assert json.loads(fields[b"m"])["deadline_ms"] == 1  # deadline_s=None keeps the job's own
