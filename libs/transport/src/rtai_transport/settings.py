"""Redis connection settings, nested in each service's settings (`RTAI_GW_REDIS__URL`, `RTAI_WORKER_REDIS__...`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode


def unknown_env_vars(prefix: str, model: type[BaseModel], environ: Mapping[str, str] | None = None) -> list[str]:
    """Environment variables under a service's prefix that name no setting (`RTAI_GW_REDIS__URLL`).

    pydantic-settings ignores them even with `extra="forbid"`; a typo in a deployment would then silently fall back
    to a default, so the services refuse to start instead.
    """
    env = os.environ if environ is None else environ
    known: set[str] = set()

    def walk(cls: type[BaseModel], at: str) -> None:
        for name, field in cls.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{at}{name.upper()}__")
            known.add(f"{at}{name.upper()}")

    walk(model, prefix)
    return sorted(k for k in env if k.upper().startswith(prefix) and k.upper() not in known)


def _without_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class RedisSettings(BaseModel):
    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL (`redis://` or `rediss://` for TLS). Ignored when `sentinels` is set.",
    )
    sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Sentinel addresses (comma-separated `host:port`); when set, the master is found through them.",
    )
    master: str = Field(default="mymaster", description="Sentinel master name.")
    username: str | None = Field(
        default=None, description="Redis ACL user name (least-privilege user for this service)."
    )
    password: SecretStr | None = Field(default=None, description="Redis password (never logged).")
    sentinel_password: SecretStr | None = Field(
        default=None, description="Password of the Sentinel processes, if they need one."
    )
    tls: bool = Field(default=False, description="Use TLS to Redis and Sentinels (a `rediss://` URL implies it).")
    tls_ca_file: str | None = Field(
        default=None, description="CA bundle that signed the Redis (and Sentinel) certificates; default: the system's."
    )
    db: int = Field(
        default=0, ge=0, description="Database number (Sentinel mode); separate environments by `prefix`, not by db."
    )
    prefix: str = Field(
        default="rtai",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_\-.]+$",
        description="Prefix of every key and stream name. Separate environments and tests by prefix.",
    )
    socket_timeout_s: float = Field(
        default=5.0, gt=0, description="Timeout of one Redis command's I/O (blocking reads add their block time)."
    )
    connect_timeout_s: float = Field(default=1.0, gt=0, description="Timeout to open a connection.")
    retries: int = Field(
        default=3, ge=0, description="Retries of a failed command (with jittered exponential backoff)."
    )
    retry_backoff_cap_s: float = Field(default=0.5, gt=0, description="Longest pause between two retries.")
    max_connections: int = Field(
        default=128, ge=4, description="Connection pool size per process; a command waits for a free connection."
    )

    @field_validator("sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, v: object) -> object:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("sentinels")
    @classmethod
    def _check_sentinels(cls, v: list[str]) -> list[str]:
        for addr in v:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"sentinel address {addr!r} must be host:port")
        return v

    @model_validator(mode="after")
    def _check_url(self) -> RedisSettings:
        if not self.sentinels and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis url must start with redis://, rediss:// or unix://")
        return self

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        out = []
        for addr in self.sentinels:
            host, _, port = addr.rpartition(":")
            out.append((host.removeprefix("[").removesuffix("]"), int(port)))  # [::1]:26379, as in URLs
        return out

    def __repr_args__(self) -> Any:
        # A URL may carry credentials (redis://user:password@host): never let a repr or a log line show them.
        for name, value in super().__repr_args__():
            yield (name, _without_credentials(value)) if name == "url" and isinstance(value, str) else (name, value)

    def describe(self) -> str:
        """Where we connect, safe to log (no password)."""
        if self.sentinels:
            return f"sentinel:{','.join(self.sentinels)}/{self.master}"
        return _without_credentials(self.url)
