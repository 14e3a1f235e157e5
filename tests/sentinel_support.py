"""A real Redis Sentinel deployment for tests: a master, a replica and three sentinels, each a
``redis-server`` process on a free port in a temporary directory."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from inferq.devstack import redis_server_binary, stop
from tests.conftest import free_port

MASTER_NAME = "inferq"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.3, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class SentinelCluster:
    folder: Path
    servers: dict[int, subprocess.Popen] = field(default_factory=dict)  # data nodes by port
    sentinels: dict[int, subprocess.Popen] = field(default_factory=dict)
    master_port: int = 0
    replica_port: int = 0

    def _server(self, port: int, *extra: str) -> subprocess.Popen:
        folder = self.folder / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
        args += ["--dir", str(folder), "--save", "", "--appendonly", "yes"]
        args += ["--appendfsync", "everysec", "--protected-mode", "no", *extra]
        log = open(folder / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(lambda: _pings(port), 10, f"redis on {port}")
        return proc

    def start(self) -> SentinelCluster:
        self.master_port, self.replica_port = free_port(), free_port()
        self.servers[self.master_port] = self._server(self.master_port)
        self.servers[self.replica_port] = self._server(
            self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port)
        )
        for _ in range(3):
            port = free_port()
            conf = self.folder / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.folder}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            log = open(self.folder / f"sentinel-{port}.log", "ab")  # noqa: SIM115
            self.sentinels[port] = subprocess.Popen(
                [redis_server_binary(), str(conf), "--sentinel"], stdout=log, stderr=log
            )
            log.close()
        _wait(self.ready, 60, "sentinels to know the replica and each other")
        return self

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1)

    def ready(self) -> bool:
        """Every sentinel sees the master, its replica (in sync) and the two other sentinels."""
        try:
            for port in self.sentinels:
                master = self.sentinel(port).sentinel_master(MASTER_NAME)
                if master["num-slaves"] < 1 or master["num-other-sentinels"] < 2:
                    return False
            info = redis.Redis(port=self.replica_port).info("replication")
            return info.get("master_link_status") == "up"
        except redis.RedisError:
            return False

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinels)

    def master(self) -> int:
        """The port the sentinels name as master now."""
        port = next(iter(self.sentinels))
        return int(self.sentinel(port).sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.master(), socket_connect_timeout=1)

    def kill_master(self) -> int:
        port = self.master()
        self.servers[port].kill()
        self.servers[port].wait(5)
        return port

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            stop(proc, timeout=5)
