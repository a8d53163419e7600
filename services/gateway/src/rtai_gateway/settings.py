"""Gateway settings, read from `RTAI_GW_*` environment variables (nested with `__`, e.g. `RTAI_GW_REDIS__URL`)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rtai_transport.settings import RedisSettings, unknown_env_vars

_HOST_NAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


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
    queue_when_no_workers: bool = Field(
        default=False,
        description="Take requests for a registered task whose workers are all gone, and queue them until a worker "
        "starts or their deadline passes, instead of refusing them `unavailable`. Turn it on where the workers scale "
        "to zero (KEDA, `minReplicas: 0`): the queue the gateway then exports is what starts the first worker. The "
        "backlog and age limits above still apply while the first worker loads its model.",
    )


class LimitSettings(BaseModel):
    max_frame_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Largest WebSocket message accepted (larger closes with 1009)."
    )
    max_json_depth: int = Field(default=32, ge=2, description="Deepest JSON nesting accepted in a client frame.")
    send_queue_frames: int = Field(
        default=1024, ge=8, description="Frames buffered per socket for a slow reader before it is closed with 1013."
    )
    messages_per_s: float = Field(
        default=100.0,
        gt=0,
        description="Sustained client frames per second per connection (token bucket); over it: `rate_limited`.",
    )
    message_burst: int = Field(
        default=200,
        ge=1,
        description="Token bucket size: frames a connection may send at once before the rate applies.",
    )
    max_connections: int = Field(
        default=10_000, ge=1, description="Open WebSockets per gateway process; one more is closed with 1013."
    )
    max_connections_per_user: int = Field(
        default=32, ge=1, description="Open WebSockets per authenticated identity on this gateway (more: close 1008)."
    )
    max_inflight_per_user: int = Field(
        default=64,
        ge=1,
        description="Requests one identity may have queued at the workers from this gateway; more wait in a per-user "
        "queue at the gateway, released fairly across users as the identity's requests finish.",
    )
    max_queued_per_user: int = Field(
        default=256, ge=0, description="Requests one identity may have waiting at the gateway; more: `overloaded`."
    )
    max_queued_total: int = Field(
        default=10_000, ge=0, description="Requests waiting in all per-user queues of this gateway; more: `overloaded`."
    )
    handshake_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection whose HTTP request head (the WebSocket upgrade) is not complete this long after "
        "it opened is closed (slowloris).",
    )
    first_message_timeout_s: float = Field(
        default=10.0, gt=0, description="A socket that sends no frame this long after connecting is closed with 1008."
    )
    idle_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A socket with nothing in flight that sends no frame this long is closed with 1000.",
    )
    ping_interval_s: float = Field(
        default=20.0, gt=0, description="WebSocket ping interval (keepalive; detects dead peers and proxies)."
    )
    ping_timeout_s: float = Field(
        default=20.0, gt=0, description="A socket whose pong does not come back within this is closed (1011)."
    )
    close_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A socket still open this long after the gateway began closing it (close frame sent, ping "
        "unanswered, or the handler done) is aborted: a client that stopped reading cannot hold its buffers.",
    )
    per_message_deflate: bool = Field(
        default=False,
        description="Accept permessage-deflate (RFC 7692) from clients that offer it (browsers always do). Off by "
        "default: each compressing socket keeps zlib state, 76 KB of gateway memory per idle socket against 33.5 KB "
        "without, and ~9% more CPU per request (docs/performance.md). Turn it on where bandwidth costs more than "
        "gateway memory (slow mobile links, large streamed outputs).",
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
        description="How long a request's id and final frame are kept for idempotent retries (from its last frame); "
        "must exceed `deadlines.max_ms`.",
    )
    detach_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="After an abnormal disconnect, how long in-flight requests wait for the client to resume "
        "before they are cancelled.",
    )
    jobs_maxlen: int = Field(
        default=100_000, ge=1000, description="Safety cap on a task stream's length (admission refuses far earlier)."
    )
    reply_block_ms: int = Field(default=1000, ge=10, description="How long one read of the reply stream blocks.")
    log_lanes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Redis connections that number and log frames, each one batch at a time; a session always uses "
        "the same one, so its frames stay in order. 2 gave 1.04-1.15x the throughput of 1 at saturation and no "
        "worse latency at half load; 4 and 8 were slower again (docs/performance.md).",
    )


PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "jwt-secret", "test", "example"})


class JwtSettings(BaseModel):
    secret: SecretStr | None = Field(
        default=None, description="HS256 shared secret (at least 32 bytes). Exclusive with `jwks_file`."
    )
    jwks_file: Path | None = Field(
        default=None,
        description="JWKS file of RS256/ES256 public keys (a mounted Secret or ConfigMap; re-read when it changes).",
    )
    audience: str | None = Field(default=None, description="Required `aud` claim (tokens without it are refused).")
    issuer: str | None = Field(default=None, description="Required `iss` claim (tokens without it are refused).")
    leeway_s: float = Field(default=30.0, ge=0, le=300, description="Clock skew allowed on `exp` and `nbf`.")
    subject_claim: str = Field(default="sub", min_length=1, description="Claim that names the user.")
    tenant_claim: str | None = Field(
        default=None, description="Claim naming the tenant; when set the identity is `tenant:subject`."
    )

    @model_validator(mode="after")
    def _real_secret(self) -> JwtSettings:
        # A model validator, not a field one: a field validator's error would echo the rejected secret itself.
        if self.secret is not None:
            raw = self.secret.get_secret_value()
            if raw.strip().lower() in PLACEHOLDER_SECRETS or len(raw.encode()) < 32:
                raise ValueError("auth.jwt.secret must be a real secret of at least 32 bytes")
        return self


class AuthSettings(BaseModel):
    mode: Literal["none", "api_key", "jwt"] = Field(
        default="none",
        description="`none` (every connection is its own anonymous user; logged loudly), `api_key` or `jwt`.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="For `api_key`: lines of `<sha256 hex of the key> <identity>` (`python -m rtai_gateway.auth`).",
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings, description="For `jwt`: how tokens are verified.")
    timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Time to send the `auth` frame when the handshake carried no token."
    )
    allow_query_token: bool = Field(
        default=False,
        description="Also accept `?access_token=` in the URL. Off: proxies and access logs record URLs.",
    )

    @model_validator(mode="after")
    def _mode_has_its_inputs(self) -> AuthSettings:
        if self.mode == "api_key" and self.api_keys_file is None:
            raise ValueError("auth.mode=api_key needs auth.api_keys_file")
        if self.mode == "jwt" and (self.jwt.secret is None) == (self.jwt.jwks_file is None):
            raise ValueError("auth.mode=jwt needs exactly one of auth.jwt.secret and auth.jwt.jwks_file")
        return self


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RTAI_GW_",
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=True,  # a rejected value may be a secret (Redis URL with a password, a JWT key)
    )

    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP and WebSocket port.")
    gateway_id: str = Field(
        default_factory=_default_gateway_id,
        description="This process's id (names its reply stream); unique per process, without `:`.",
    )
    log_json: bool = Field(default=True, description="JSON logs (production) or human-readable console logs.")
    log_level: str = Field(default="info", description="Log level.")
    drain_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests may finish before sockets close with 1012.",
    )
    unready_after_redis_down_s: float = Field(
        default=30.0,
        gt=0,
        description="Readiness fails once Redis has been unreachable this long. A shorter outage (a Sentinel failover "
        "takes 6-8 s) keeps the gateway in rotation: its clients get `unavailable` with `retry_after_ms` and retry, "
        "where an ingress with no ready gateway would answer new sockets with a bare 503.",
    )
    page: bool = Field(default=True, description="Serve the web page at `/`.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings, description="Admission control.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Per-connection limits.")
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings, description="Request deadlines.")
    sessions: SessionSettings = Field(default_factory=SessionSettings, description="Sessions, resume and idempotency.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="Client authentication.")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to open sockets (comma separated, e.g. `https://app.example.com`), or "
        "`*`. The gateway's own origin and clients that send no Origin (non-browsers) are always allowed.",
    )

    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the gateway answers besides IP addresses and `localhost`, against DNS rebinding "
        "(comma separated, without the port; `*.example.com` for the subdomains of a domain; `*` for every name). "
        "Other names get HTTP 400, or a refused upgrade for a socket.",
    )

    @field_validator("gateway_id")
    @classmethod
    def _check_gateway_id(cls, v: str) -> str:
        # Other gateways read the id back from the end of its reply stream's key, after the last `:` (the key prefix
        # may hold colons too); an empty id reads as "no gateway holds the session".
        if not v or ":" in v:
            raise ValueError(f"gateway_id {v!r} must be non-empty and must not contain ':'")
        return v

    @field_validator("allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, v: list[str]) -> list[str]:
        out = []
        for origin in v:
            if origin == "*":
                out.append(origin)
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"allowed origin {origin!r} must be `*` or scheme://host[:port]")
            out.append(f"{parts.scheme}://{parts.netloc}".lower())
        return out

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        out = []
        for host in v:
            if host == "*":
                out.append(host)
                continue
            bare = host.lower().removeprefix("*.").removesuffix(".")
            if not _HOST_NAME.fullmatch(bare) or _is_address(bare):
                raise ValueError(
                    f"allowed host {host!r} must be `*`, a DNS name without a port (punycode for an IDN) or "
                    "`*.domain` (IP addresses and localhost are always answered)"
                )
            out.append(("*." if host.startswith("*.") else "") + bare)
        return out

    @model_validator(mode="after")
    def _requests_outlive_their_deadlines(self) -> GatewaySettings:
        # A request's state (its chunks' numbers, its final frame) must outlast the longest deadline: expired while the
        # job runs, a resend would run it twice and its late frames would be logged against nothing.
        if self.sessions.request_ttl_s * 1000 <= self.deadlines.max_ms:
            raise ValueError(
                f"sessions.request_ttl_s ({self.sessions.request_ttl_s} s) must exceed deadlines.max_ms "
                f"({self.deadlines.max_ms} ms)"
            )
        return self

    @model_validator(mode="after")
    def _no_unknown_env(self) -> GatewaySettings:
        unknown = unknown_env_vars("RTAI_GW_", type(self))
        if unknown:
            raise ValueError(f"unknown settings in the environment: {', '.join(unknown)} (see docs/config.md)")
        return self
