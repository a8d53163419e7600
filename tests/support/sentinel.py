"""A real Redis Sentinel topology on loopback: one master, replicas, three sentinels (down-after 1 s)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field

import redis

from tests.support.ports import free_port
from tests.support.redis_server import RedisProcess

MASTER_NAME = "mymaster"


@dataclass
class SentinelTopology:
    replicas: int = 1
    persistence: bool = True
    down_after_ms: int = 1000
    nodes: list[RedisProcess] = field(default_factory=list)
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def sentinel_addrs(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def env(self) -> dict[str, str]:
        return {"REDIS__SENTINELS": ",".join(self.sentinel_addrs), "REDIS__MASTER": MASTER_NAME}

    def _node_args(self) -> list[str]:
        args = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if self.persistence:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        return args

    def start(self) -> SentinelTopology:
        master = RedisProcess(port=free_port(), args=self._node_args()).start()
        self.nodes.append(master)
        for _ in range(self.replicas):
            r = RedisProcess(
                port=free_port(), args=[*self._node_args(), "--replicaof", "127.0.0.1", str(master.port)]
            ).start()
            self.nodes.append(r)
        for _ in range(3):
            s = RedisProcess(port=free_port(), sentinel=True)
            (s.workdir / "sentinel.conf").write_text(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(s.start())
        self.wait_replicated()
        return self

    def master_port(self) -> int:
        s = redis.Redis(port=self.sentinels[0].port, socket_timeout=2)
        _, port = s.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def master(self) -> RedisProcess:
        port = self.master_port()
        return next(n for n in self.nodes if n.port == port)

    def wait_replicated(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = self.master().client().info("replication")
                if int(info.get("connected_slaves", 0)) >= self.replicas:
                    return
            except (redis.RedisError, StopIteration):
                pass
            time.sleep(0.1)
        raise TimeoutError("replicas did not connect")

    def wait_new_master(self, old_port: int, timeout: float = 20) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                port = self.master_port()
                if port != old_port and self.master().client().info("replication")["role"] == "master":
                    return time.monotonic() - start
            except (redis.RedisError, StopIteration):
                pass
            time.sleep(0.05)
        raise TimeoutError("no failover")

    def shutdown(self) -> None:
        """SIGTERM every sentinel, then every node (Redis flushes its append-only file, as a pod's would)."""
        for p in [*self.sentinels, *self.nodes]:
            p.stop()

    def restart(self) -> None:
        """Start every node, then every sentinel, on the same ports and directories."""
        for p in [*self.nodes, *self.sentinels]:
            p.start()

    def stop(self) -> None:
        for p in [*self.sentinels, *self.nodes]:
            p.kill()
            shutil.rmtree(p.workdir, ignore_errors=True)
