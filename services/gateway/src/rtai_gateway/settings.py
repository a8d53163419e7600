"""Gateway settings, read from `RTAI_GW_*` environment variables (nested with `__`, e.g. `RTAI_GW_REDIS__URL`)."""

from __future__ import annotations

import os
import socket
import uuid

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rtai_transport.settings import RedisSettings


def _default_gateway_id() -> str:
    # Unique per process: the reply stream is read by exactly one process, and a restarted pod is a new reader.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class AdmissionSettings(BaseModel):
    max_backlog: int = Field(
        default=5000,
        ge=1,
        description="Refuse new work for a task (`overloaded`) while its stream holds this many jobs.",
    )
    max_oldest_age_s: float = Field(
        default=10.0, gt=0, description="Refuse new work while the task's oldest queued job is older than this."
    )
    max_inflight_per_connection: int = Field(
        default=256, ge=1, description="Requests one connection may have in flight at once."
    )
    retry_after_ms: int = Field(
        default=500, ge=0, description="`retry_after_ms` sent with `overloaded` and `unavailable` refusals."
    )
    refresh_interval_s: float = Field(
        default=0.25, gt=0, description="How often the gateway re-reads backlogs and the task registry from Redis."
    )


class LimitSettings(BaseModel):
    max_frame_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Largest WebSocket message accepted (larger closes with 1009)."
    )
    max_json_depth: int = Field(default=32, ge=2, description="Deepest JSON nesting accepted in a client frame.")
    send_queue_frames: int = Field(
        default=1024, ge=8, description="Frames buffered per socket for a slow reader before it is closed with 1013."
    )


class DeadlineSettings(BaseModel):
    default_ms: int = Field(
        default=30_000, ge=1, description="Deadline of a request that names none (ms from the gateway's receipt)."
    )
    max_ms: int = Field(default=300_000, ge=1, description="Cap on a client's `deadline_ms`.")

    @model_validator(mode="after")
    def _default_within_max(self) -> DeadlineSettings:
        if self.default_ms > self.max_ms:
            raise ValueError("deadlines.default_ms must not exceed deadlines.max_ms")
        return self


class SessionSettings(BaseModel):
    ttl_s: int = Field(
        default=600, ge=10, description="How long a session's frames stay resumable after its last frame."
    )
    log_maxlen: int = Field(
        default=2000, ge=16, description="Frames kept per session for resume (oldest trimmed first)."
    )
    request_ttl_s: int = Field(
        default=600,
        ge=10,
        description="How long a finished request's id and final frame are kept for idempotent retries.",
    )
    detach_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="After an abnormal disconnect, how long in-flight requests wait for the client to resume before they are cancelled.",
    )
    jobs_maxlen: int = Field(
        default=100_000, ge=1000, description="Safety cap on a task stream's length (admission refuses far earlier)."
    )
    reply_block_ms: int = Field(default=1000, ge=10, description="How long one read of the reply stream blocks.")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTAI_GW_", env_nested_delimiter="__", extra="forbid")

    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP and WebSocket port.")
    gateway_id: str = Field(
        default_factory=_default_gateway_id,
        description="This process's id (names its reply stream); unique per process.",
    )
    log_json: bool = Field(default=True, description="JSON logs (production) or human-readable console logs.")
    log_level: str = Field(default="info", description="Log level.")
    drain_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests may finish before sockets close with 1012.",
    )
    page: bool = Field(default=True, description="Serve the web page at `/`.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings, description="Admission control.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Per-connection limits.")
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings, description="Request deadlines.")
    sessions: SessionSettings = Field(default_factory=SessionSettings, description="Sessions, resume and idempotency.")
