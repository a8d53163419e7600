"""Which tasks live workers serve, under which model configuration.

Workers register each task after their model is loaded and warmed, and refresh a heartbeat; the gateway reads the
registry to answer `unknown_task` at once and to list tasks. One task name = one model configuration: registration is
refused while live workers serve the task with another fingerprint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

from rtai_protocol import now_ms
from rtai_transport.client import Redis, text
from rtai_transport.errors import TaskConfigConflict
from rtai_transport.keys import Keys
from rtai_transport.lua import DECLARE_TASK, FORGET_TASK, REGISTER_TASK


@dataclass(frozen=True, slots=True)
class TaskInfo:
    task: str
    model: str
    fingerprint: str
    max_input_chars: int
    streaming: bool
    device: str = "cpu"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> TaskInfo:
        data = orjson.loads(raw)
        return cls(
            task=str(data["task"]),
            model=str(data.get("model", "")),
            fingerprint=str(data["fingerprint"]),
            max_input_chars=int(data.get("max_input_chars", 0)),
            streaming=bool(data.get("streaming", False)),
            device=str(data.get("device", "cpu")),
        )


async def register_task(redis: Redis, keys: Keys, info: TaskInfo, worker_id: str, ttl_s: float) -> None:
    """Register or refresh this worker for a task. Raises TaskConfigConflict if the task is served differently."""
    now = now_ms()
    result: Any = await redis.eval(
        REGISTER_TASK,
        2,
        keys.tasks,
        keys.task_workers(info.task),
        info.task,
        info.to_json(),
        info.fingerprint,
        worker_id,
        now,
        now + int(ttl_s * 1000),
    )
    ok, current = result
    if not int(ok):
        theirs = TaskInfo.from_json(current)
        raise TaskConfigConflict(
            f"task {info.task!r} is served by live workers with model {theirs.model!r} ({theirs.fingerprint}); "
            f"this worker's {info.model!r} ({info.fingerprint}) differs: give it another task name"
        )


async def declare_task(redis: Redis, keys: Keys, info: TaskInfo) -> bool:
    """Record a task's configuration without a live worker (see DECLARE_TASK); False if live workers serve it, whose
    registration stands."""
    declared: Any = await redis.eval(DECLARE_TASK, 2, keys.tasks, keys.task_workers(info.task), info.task,
                                     info.to_json(), now_ms())  # fmt: skip
    return bool(int(declared))


async def forget_task(redis: Redis, keys: Keys, task: str) -> Literal["forgotten", "unknown", "served"]:
    """Remove a task from the registry (see FORGET_TASK): `served` (left alone) while live workers serve it."""
    result: Any = await redis.eval(FORGET_TASK, 2, keys.tasks, keys.task_workers(task), task, now_ms())
    code = int(result)
    if code < 0:
        return "served"
    return "forgotten" if code else "unknown"


async def deregister_task(redis: Redis, keys: Keys, task: str, worker_id: str) -> None:
    await redis.zrem(keys.task_workers(task), worker_id)


async def registered_tasks(redis: Redis, keys: Keys) -> dict[str, tuple[TaskInfo, int]]:
    """Every task a worker ever registered: task -> (info, number of live workers, 0 when all are gone)."""
    raw = await redis.hgetall(keys.tasks)
    infos = {text(k): TaskInfo.from_json(v) for k, v in raw.items()}
    if not infos:
        return {}
    now = now_ms()
    async with redis.pipeline(transaction=False) as pipe:
        for task in infos:
            pipe.zcount(keys.task_workers(task), now, "+inf")
        counts = await pipe.execute()
    return {task: (info, int(n)) for (task, info), n in zip(infos.items(), counts, strict=True)}


async def live_tasks(redis: Redis, keys: Keys) -> dict[str, tuple[TaskInfo, int]]:
    """Tasks with at least one live worker: task -> (info, number of live workers)."""
    return {task: (info, n) for task, (info, n) in (await registered_tasks(redis, keys)).items() if n > 0}
