"""Worker settings, from `RTAI_WORKER_*` environment variables (nested with `__`, e.g. `RTAI_WORKER_REDIS__URL`)."""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rtai_transport.settings import RedisSettings, unknown_env_vars

_TASK = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RTAI_WORKER_",
        env_nested_delimiter="__",
        extra="forbid",
        # A rejected value (a Redis URL with its password) must not be echoed into logs.
        hide_input_in_errors=True,
    )

    tasks: str = Field(
        default="sentiment=vader",
        description="Comma-separated `task=model` pairs this worker serves. A model is a built-in name, "
        "`package.module:factory`, or an `rtai.models` entry point.",
    )
    retired_tasks: str = Field(
        default="",
        description="Comma-separated task names no worker serves any more: `python -m rtai_worker declare` removes "
        "them from the registry (once no live worker serves them), so gateways refuse them `unknown_task` instead of "
        "queueing for a worker that never starts.",
    )
    retire_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="How long `declare` (retired tasks) and `forget` wait for a task's live workers to go before "
        "giving up (exit 5): during an upgrade the last release's pods are still draining.",
    )
    worker_id: str = Field(
        default_factory=_default_worker_id, description="Consumer name in the task streams' group; unique per process."
    )
    http_port: int = Field(
        default=9100, ge=0, le=65535, description="Port of /healthz, /readyz and /metrics (0 picks a free one)."
    )
    http_host: str = Field(default="0.0.0.0", description="Address of the health and metrics port.")
    max_batch_size: int = Field(default=32, ge=1, le=1024, description="Most jobs run in one model call.")
    max_batch_delay_ms: float = Field(
        default=2.0,
        ge=0,
        description="After the first job arrives, how long to wait for more before running the batch.",
    )
    max_streams: int = Field(default=4, ge=1, description="Streaming jobs (token generation) run at once.")
    max_reply_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Largest encoded reply (a result or a chunk); a larger output is answered `internal`.",
    )
    max_new_tokens: int = Field(default=256, ge=1, description="Server cap on `max_new_tokens` for generation.")
    reclaim_idle_ms: int = Field(
        default=5000,
        ge=100,
        description="A job pending this long on a silent worker is taken over (that worker is presumed dead).",
    )
    max_deliveries: int = Field(
        default=3, ge=1, description="Deliveries after which a job is dead-lettered and answered `failed`."
    )
    registration_ttl_s: float = Field(
        default=10.0, gt=0, description="A worker that misses heartbeats this long is no longer listed for its tasks."
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="On SIGTERM, how long the current batch and streams may take, in all, before they are handed back.",
    )
    model_call_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A model call running this long past its limit is taken as hung: the worker hands its jobs back, "
        "drains the rest and exits with code 4 for the orchestrator to restart it (a thread cannot be stopped from "
        "outside). A batch's limit is its requests' last deadline (a generator answers each by its own); a stream "
        "step's is its start. Models declared inline (VADER) run on the event loop, untimed.",
    )
    device: str = Field(default="cpu", description="`cpu` or `cuda` (fails at start if no GPU is there).")
    model_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "rtai",
        description="Where converted model artifacts are built once and reused.",
    )
    log_json: bool = Field(default=True, description="JSON logs (production) or human-readable console logs.")
    log_level: str = Field(default="info", description="Log level.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "cuda") and not v.startswith("cuda:"):
            raise ValueError("device must be cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _tasks_parse(self) -> WorkerSettings:
        self.task_models()
        self.retired()
        if self.reclaim_idle_ms < 3 * 100:
            raise ValueError("reclaim_idle_ms too small")
        return self

    def task_models(self) -> dict[str, str]:
        """`sentiment=vader,embed=minilm-embed` -> {"sentiment": "vader", "embed": "minilm-embed"}."""
        out: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.tasks.split(","))):
            task, sep, model = pair.partition("=")
            task, model = task.strip(), model.strip()
            if not sep or not model:
                raise ValueError(f"tasks entry {pair!r} must be task=model")
            if not _TASK.match(task):
                raise ValueError(f"task name {task!r}: lowercase letters, digits, '-' and '_' only")
            if task in out:
                raise ValueError(f"task {task!r} listed twice")
            out[task] = model
        if not out:
            raise ValueError("tasks must name at least one task=model pair")
        return out

    def retired(self) -> list[str]:
        """`old-a, old-b` -> ["old-a", "old-b"]: names only, none of them also in `tasks`."""
        names = [t.strip() for t in self.retired_tasks.split(",") if t.strip()]
        for name in names:
            if not _TASK.match(name):
                raise ValueError(f"retired task name {name!r}: lowercase letters, digits, '-' and '_' only")
        served = sorted(set(names) & set(self.task_models()))
        if served:
            raise ValueError(f"retired_tasks names tasks this worker serves: {', '.join(served)}")
        return names

    @model_validator(mode="after")
    def _no_unknown_env(self) -> WorkerSettings:
        unknown = unknown_env_vars("RTAI_WORKER_", type(self))
        if unknown:
            raise ValueError(f"unknown settings in the environment: {', '.join(unknown)} (see docs/config.md)")
        return self
