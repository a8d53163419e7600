"""Run a rendered gateway or inference-worker container as a local process, with the env the pod would get.

The env is built the way the kubelet builds it: the image's `ENV` (read from the service's Dockerfile, final stage),
then the container's `env` from the rendered chart (secretKeyRef/fieldRef resolved, `$(VAR)` expanded). The command
is the image `ENTRYPOINT` (or the container's `command`) plus the container's `args`, with the image's venv python
mapped to this venv's python. Only these values are changed, each one recorded in `LocalService.overrides`:

- the listen port: the env var that sets each container port gets a free loopback port (its rendered value must
  equal the rendered `containerPort`, which is where the probes go);
- the bind address: `0.0.0.0` (the chart/image default) becomes `127.0.0.1` (tests listen on loopback only);
- Redis addresses: every `host:port` in `*_REDIS__URL` / `*_REDIS__SENTINELS` must be one of the cluster addresses
  in `redis_addrs` (e.g. the Redis chart's pod DNS names) and becomes its local `127.0.0.1:port`;
- volume mount paths: an env value at or under a container `volumeMount` path points into a local folder instead
  (`/tmp` -> `<root>/tmp`, the model cache -> `<root>/model-cache`), like the volume would.

Everything else is passed exactly as rendered. Processes are started in their own session and stopped by PID.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel

from tests.deploy.dockerfile import ImageSpec, image_spec
from tests.deploy.render import REPO_ROOT, ContainerView

IMAGE_PYTHON = "/app/.venv/bin/python"
IMAGE_VENV_BIN = "/app/.venv/bin"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServiceSpec:
    """What the test knows about a service besides its chart: which settings class reads its env."""

    chart: str
    container: str
    prefix: str
    settings: str  # "module:Class"
    dockerfile: Path
    port_env: dict[str, str]  # container port name -> env var that sets the listen port
    host_env: str  # env var that sets the bind address
    stopped_event: str  # log event of a clean shutdown


SERVICES: dict[str, ServiceSpec] = {
    "gateway": ServiceSpec(
        chart="gateway",
        container="gateway",
        prefix="RTAI_GW_",
        settings="rtai_gateway.settings:GatewaySettings",
        dockerfile=REPO_ROOT / "services" / "gateway" / "Dockerfile",
        port_env={"http": "RTAI_GW_PORT"},
        host_env="RTAI_GW_HOST",
        stopped_event="gateway.stopped",
    ),
    "inference-worker": ServiceSpec(
        chart="inference-worker",
        container="inference-worker",
        prefix="RTAI_WORKER_",
        settings="rtai_worker.settings:WorkerSettings",
        dockerfile=REPO_ROOT / "services" / "inference-worker" / "Dockerfile",
        port_env={"http-metrics": "RTAI_WORKER_HTTP_PORT"},
        host_env="RTAI_WORKER_HTTP_HOST",
        stopped_event="worker.stopped",
    ),
}


# ---------------------------------------------------------------------------------------------------- the image


# ---------------------------------------------------------------------------------------------------- settings


def settings_class(spec: ServiceSpec) -> type[BaseModel]:
    module, _, name = spec.settings.partition(":")
    cls: type[BaseModel] = getattr(importlib.import_module(module), name)
    return cls


def settings_env_names(model: type[BaseModel], prefix: str) -> set[str]:
    """Every env var name the settings class reads (nested models with `__`)."""
    out = set()
    for name, info in model.model_fields.items():
        key = prefix + name.upper()
        out.add(key)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= settings_env_names(ann, key + "__")
    return out


def unknown_settings_env(env: dict[str, str] | set[str], spec: ServiceSpec) -> list[str]:
    """Env vars with the service's prefix that its settings class does not read.

    pydantic-settings skips such variables silently even with extra="forbid" (that applies to init kwargs and dotenv
    files, not to the process environment), so a renamed setting would leave the chart's value unused without any
    error at start-up: this check is what turns that drift into a failure.
    """
    known = settings_env_names(settings_class(spec), spec.prefix)
    return sorted(n for n in env if n.upper().startswith(spec.prefix) and n.upper() not in known)


# ---------------------------------------------------------------------------------------------------- redis addresses


def map_hostport(value: str, addrs: dict[str, str], what: str) -> str:
    if value not in addrs:
        raise LookupError(f"{what}: {value!r} is not an address of the Redis deployment (known: {sorted(addrs)})")
    return addrs[value]


def map_redis_url(url: str, addrs: dict[str, str], what: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 6379
    local = map_hostport(f"{host}:{port}", addrs, what)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{local}" if userinfo else local
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------------------------------------------- the process


@dataclass
class Override:
    name: str
    rendered: str | None
    local: str
    why: str


@dataclass
class LocalService:
    spec: ServiceSpec
    view: ContainerView
    root: Path
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    redis_addrs: dict[str, str] = field(default_factory=dict)
    pod_name: str = ""
    image: ImageSpec = field(init=False)
    env: dict[str, str] = field(init=False)
    command: list[str] = field(init=False)
    cwd: Path = field(init=False)
    local_ports: dict[int, int] = field(init=False)  # containerPort -> local port
    overrides: list[Override] = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        from tests.deploy.redis_pods import free_port

        self.image = image_spec(self.spec.dockerfile)
        self.pod_name = self.pod_name or f"{self.view.workload}-0"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / f"{self.pod_name}.log"
        self.overrides = []
        mounts = self._mounts()

        # the kubelet: image ENV, then the container's env (valueFrom resolved, $(VAR) expanded)
        rendered = {**self.image.env, **self.view.resolved_env(self.secrets, pod_name=self.pod_name)}
        env: dict[str, str] = {}
        for name, value in rendered.items():
            local = self._rewrite_path(value, mounts)
            why = "path in a volume mount -> local folder"
            if name == "PATH":
                why = "image venv -> this venv, base image PATH -> this PATH"
                local = value.replace(IMAGE_VENV_BIN, str(Path(sys.executable).parent)).replace(
                    "$PATH", os.environ.get("PATH", "/usr/bin:/bin")
                )
            if local != value:
                self.overrides.append(Override(name, value, local, why))
            env[name] = local

        # listen ports: the env var that sets each container port, checked against the rendered containerPort
        self.local_ports = {}
        for port_name, var in self.spec.port_env.items():
            container_port = self.view.port(port_name)
            if env.get(var) != str(container_port):
                raise AssertionError(
                    f"{self.spec.chart}: {var}={env.get(var)!r} but containerPort {port_name!r} is {container_port}: "
                    "the probes and the Service would miss the process"
                )
            self.local_ports[container_port] = free_port()
            env[var] = str(self.local_ports[container_port])
            self.overrides.append(Override(var, str(container_port), env[var], "free loopback port"))

        # bind address: loopback only
        if env.get(self.spec.host_env, "0.0.0.0") == "0.0.0.0":
            self.overrides.append(Override(self.spec.host_env, env.get(self.spec.host_env), LOOPBACK, "loopback only"))
            env[self.spec.host_env] = LOOPBACK
        else:
            raise AssertionError(f"{self.spec.host_env}={env[self.spec.host_env]!r}: expected to listen on 0.0.0.0")

        # redis addresses
        url_var = f"{self.spec.prefix}REDIS__URL"
        sent_var = f"{self.spec.prefix}REDIS__SENTINELS"
        if sent_var in env:
            mapped = ",".join(map_hostport(a.strip(), self.redis_addrs, sent_var) for a in env[sent_var].split(","))
            self.overrides.append(Override(sent_var, env[sent_var], mapped, "sentinel pod addresses -> loopback"))
            env[sent_var] = mapped
        elif url_var in env:
            mapped = map_redis_url(env[url_var], self.redis_addrs, url_var)
            self.overrides.append(Override(url_var, env[url_var], mapped, "redis address -> loopback"))
            env[url_var] = mapped
        else:
            raise AssertionError(f"{self.spec.chart}: neither {url_var} nor {sent_var} is set")
        self.env = env

        entry = self.view.command or self.image.entrypoint
        args = self.view.args if (self.view.command or self.view.args) else self.image.cmd
        self.command = [sys.executable if a == IMAGE_PYTHON else a for a in (*entry, *args)]
        self.cwd = Path(self._rewrite_path(self.image.workdir, mounts))
        self.cwd.mkdir(parents=True, exist_ok=True)

    def _mounts(self) -> dict[str, Path]:
        container = next(c for c in self.view.pod_spec["containers"] if c["name"] == self.view.name)
        out = {}
        for m in container.get("volumeMounts", []):
            local = self.root / self.pod_name / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            out[m["mountPath"]] = local
        return out

    @staticmethod
    def _rewrite_path(value: str, mounts: dict[str, Path]) -> str:
        for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == mount or value.startswith(mount + "/"):
                return str(local) + value[len(mount) :]
        return value

    def describe(self) -> str:
        lines = [f"{self.pod_name}: {shlex.join(self.command)} (cwd {self.cwd})"]
        lines += [f"  {o.name}: {o.rendered!r} -> {o.local!r} ({o.why})" for o in self.overrides]
        for name, ref in self.view.env_refs.items():
            src = ref.get("secretKeyRef") or ref.get("fieldRef")
            lines.append(f"  {name}: valueFrom {src} (resolved)")
        return "\n".join(lines)

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, port: int, path: str = "/") -> str:
        """URL of a rendered containerPort on the local process."""
        return f"http://{LOOPBACK}:{self.local_ports[port]}{path}"

    def probe(self, kind: str) -> int | None:
        """One HTTP probe as the kubelet would send it (rendered path and port, rendered timeout); status or None."""
        p = self.view.probes[kind]
        assert p.path is not None and p.port is not None, f"{kind} probe is not httpGet"
        try:
            return httpx.get(self.url(p.port, p.path), timeout=float(p.spec.get("timeoutSeconds", 1))).status_code
        except httpx.HTTPError:
            return None

    def wait_probe(self, kind: str, budget_s: float) -> float:
        """Poll a probe until it answers 200; returns seconds taken. Fails after budget_s or if the process exits."""
        t0 = time.monotonic()
        last: int | None = None
        while time.monotonic() - t0 < budget_s:
            if not self.alive():
                raise AssertionError(
                    f"{self.pod_name} exited ({self.returncode()}) before its {kind} probe passed:\n{self.tail()}"
                )
            last = self.probe(kind)
            if last == 200:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(
            f"{self.pod_name}: {kind} probe not 200 after {budget_s:.0f}s (last {last}):\n{self.tail()}"
        )

    def stopped_cleanly(self) -> bool:
        """The process logged its clean-shutdown event."""
        return f'"{self.spec.stopped_event}"' in self.log.read_text(errors="replace")

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self, grace_s: float) -> tuple[int | None, float]:
        """SIGTERM (what the kubelet sends after preStop), then SIGKILL after grace_s; (exit code, seconds)."""
        if self.proc is None:
            return None, 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                return None, time.monotonic() - t0
        return self.proc.returncode, time.monotonic() - t0

    def tail(self, chars: int = 3000) -> str:
        try:
            return f"--- {self.log.name}\n" + self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def redis_chart_addrs(
    docs: list[dict[str, Any]], redis_ports: list[int], sentinel_ports: list[int], namespace: str = "rtai"
) -> dict[str, str]:
    """Cluster addresses the rendered Redis chart serves (pod DNS names via the headless Service, and the Sentinel
    Service) -> the local ports of RedisChartPods. Anything the gateway/worker charts name must be one of these."""
    from tests.deploy.render import find

    (sts,) = find(docs, "StatefulSet")
    name = sts["metadata"]["name"]
    headless = sts["spec"]["serviceName"]
    out: dict[str, str] = {}
    for svc in find(docs, "Service"):
        svc_name = svc["metadata"]["name"]
        ports = {p["name"]: int(p["port"]) for p in svc["spec"]["ports"]}
        suffixes = ("", f".{namespace}", f".{namespace}.svc", f".{namespace}.svc.cluster.local")
        for port_name, locals_ in (("redis", redis_ports), ("sentinel", sentinel_ports)):
            if port_name not in ports:
                continue
            if svc_name == headless:
                for i, local in enumerate(locals_):
                    for sfx in suffixes:
                        out[f"{name}-{i}.{headless}{sfx}:{ports[port_name]}"] = f"{LOOPBACK}:{local}"
            else:  # a ClusterIP Service: any ready pod behind it (sentinels all answer for the master)
                for sfx in suffixes:
                    out[f"{svc_name}{sfx}:{ports[port_name]}"] = f"{LOOPBACK}:{locals_[0]}"
    return out


def termination_budget(view: ContainerView) -> float:
    """Seconds between SIGTERM and SIGKILL in the cluster: terminationGracePeriodSeconds minus the preStop sleep."""
    grace = float(view.pod_spec.get("terminationGracePeriodSeconds", 30))
    container = next(c for c in view.pod_spec["containers"] if c["name"] == view.name)
    pre: Any = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    return grace - float(pre)
