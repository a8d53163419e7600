"""Run the rendered redis chart's StatefulSet pods as local processes on loopback.

Each "pod" runs the chart's own start scripts (from its ConfigMap) with the container's rendered env; volume mounts
become folders under a scratch dir, and the pod DNS names in REDIS_NODES/SENTINEL_NODES become 127.0.0.1 ports.
Killing a pod SIGKILLs its processes and wipes its emptyDirs (the data volume, a PVC in the cluster, is kept).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.render import find


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(port: int, *args: str, password: str | None = None, timeout: float = 3.0) -> str:
    env = dict(os.environ, REDISCLI_AUTH=password or "")
    proc = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--raw", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    return proc.stdout.strip()


@dataclass
class LocalPod:
    index: int
    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


class RedisChartPods:
    def __init__(self, docs: list[dict[str, Any]], root: Path) -> None:
        (sts,) = find(docs, "StatefulSet")
        self.name = sts["metadata"]["name"]
        self.replicas = int(sts["spec"]["replicas"])
        self.pod_spec = sts["spec"]["template"]["spec"]
        (cm,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == f"{self.name}-scripts"]
        secrets = find(docs, "Secret")
        self.secrets = {
            (s["metadata"]["name"], k): base64.b64decode(v).decode()
            for s in secrets
            for k, v in s.get("data", {}).items()
        }
        self.root = root
        self.scripts = root / "scripts"
        self.scripts.mkdir(parents=True)
        for name, text in cm["data"].items():
            (self.scripts / name).write_text(text)
        self.redis_ports = [free_port() for _ in range(self.replicas)]
        self.sentinel_ports = [free_port() for _ in range(self.replicas)]
        self.pods = [LocalPod(i, root / f"{self.name}-{i}") for i in range(self.replicas)]
        self.logs: list[Path] = []

    @property
    def password(self) -> str | None:
        env = self._container("redis")["env"]
        ref = next((e["valueFrom"]["secretKeyRef"] for e in env if e["name"] == "REDIS_PASSWORD"), None)
        return self.secrets[(ref["name"], ref["key"])] if ref else None

    def _container(self, name: str) -> dict[str, Any]:
        return next(c for c in self.pod_spec["containers"] if c["name"] == name)

    def _mounts(self, pod: LocalPod, container: dict[str, Any]) -> dict[str, Path]:
        out = {}
        for m in container.get("volumeMounts", []):
            out[m["mountPath"]] = self.scripts if m["name"] == "scripts" else pod.root / m["name"]
        return out

    def _rewrite(self, value: str, mounts: dict[str, Path]) -> str:
        for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == mount or value.startswith(mount + "/"):
                return str(local) + value[len(mount) :]
        return value

    def _env(self, pod: LocalPod, container: dict[str, Any], mounts: dict[str, Path]) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "BIND_ADDR": "127.0.0.1"}
        for e in container["env"]:
            if "value" in e:
                env[e["name"]] = self._rewrite(str(e["value"]), mounts)
            elif "fieldRef" in e["valueFrom"]:
                assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                env[e["name"]] = f"{self.name}-{pod.index}"
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secrets[(ref["name"], ref["key"])]
        # pod DNS names -> loopback ports, in ordinal order (the rendered lists name one address per pod)
        assert len(env["REDIS_NODES"].split()) == self.replicas
        env["REDIS_NODES"] = " ".join(f"127.0.0.1:{p}" for p in self.redis_ports)
        env["SENTINEL_NODES"] = " ".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return env

    def _command(self, container: dict[str, Any], mounts: dict[str, Path]) -> list[str]:
        return [self._rewrite(a, mounts) for a in container["command"] + container.get("args", [])]

    def start_container(self, index: int, name: str) -> None:
        pod = self.pods[index]
        container = self._container(name)
        mounts = self._mounts(pod, container)
        for local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{self.name}-{index}-{name}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            pod.procs[name] = subprocess.Popen(
                self._command(container, mounts),
                env=self._env(pod, container, mounts),
                cwd=pod.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def probe(self, index: int, name: str, kind: str = "readinessProbe") -> bool:
        pod = self.pods[index]
        container = self._container(name)
        mounts = self._mounts(pod, container)
        cmd = [self._rewrite(a, mounts) for a in container[kind]["exec"]["command"]]
        try:
            proc = subprocess.run(
                cmd, env=self._env(pod, container, mounts), cwd=pod.root, timeout=10, check=False, capture_output=True
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def start_pod(self, index: int, timeout: float = 30.0) -> None:
        """Start both containers and wait until both readiness probes pass (OrderedReady)."""
        for name in ("redis", "sentinel"):
            self.start_container(index, name)
        deadline = time.monotonic() + timeout
        while not (self.probe(index, "redis") and self.probe(index, "sentinel")):
            for name, p in self.pods[index].procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"pod {index} {name} exited {p.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {index} not ready:\n{self.tail()}")
            time.sleep(0.2)

    def kill_pod(self, index: int) -> None:
        """SIGKILL every process of the pod; a recreated pod gets fresh emptyDirs and keeps its PVC (data)."""
        pod = self.pods[index]
        for p in pod.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        pod.procs.clear()
        data_mounts = {"data"}
        if pod.root.exists():
            for child in pod.root.iterdir():
                if child.is_dir() and child.name not in data_mounts:
                    shutil.rmtree(child)

    def stop_all(self) -> None:
        for pod in self.pods:
            for p in pod.procs.values():
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            pod.procs.clear()

    def tail(self, lines: int = 15) -> str:
        out = []
        for log in dict.fromkeys(self.logs):
            if log.exists():
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    # ------------------------------------------------------------------ observations

    def role(self, index: int) -> list[str]:
        return cli(self.redis_ports[index], "ROLE", password=self.password).split()

    def master_seen_by(self, index: int) -> str | None:
        out = cli(self.sentinel_ports[index], "SENTINEL", "get-master-addr-by-name", "mymaster", password=self.password)
        parts = out.split()
        return f"{parts[0]}:{parts[1]}" if len(parts) == 2 else None

    def sentinel_master_info(self, index: int) -> dict[str, str]:
        out = cli(self.sentinel_ports[index], "SENTINEL", "master", "mymaster", password=self.password).split("\n")
        return dict(zip(out[::2], out[1::2], strict=False))

    def addr(self, index: int) -> str:
        return f"127.0.0.1:{self.redis_ports[index]}"
