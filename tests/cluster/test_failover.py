"""Three `tcpulse serve` processes on one Redis and one PostgreSQL, and clients with all three in
their server list sending numbered messages: `kill -9` of the node most of them are on, under
load.  Its clients reconnect to the others and resume their sessions there (`acked` from the
shared store); its clients leave every view within the lease TTL plus a renewal, without its
help; and every message sent through the failover is stored exactly once (counted in
PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tcpulse.client.client import Client
from tcpulse.cluster.redis import RedisCluster
from tcpulse.policy.backoff import Backoff
from tcpulse.server.config import ServerConfig
from tcpulse.server.server import Server
from tests.cluster.parts import Postgres, Redis
from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

TTL = 1.0
CLIENTS = 12
MESSAGES = 300  # per client


def node(name: str, redis: Redis, postgres: Postgres) -> ServerProcess:
    return ServerProcess("--cluster", redis.url, "--node-id", name, "--lease-ttl", str(TTL), "--db", postgres.url,
                         "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5", "--min-heartbeat-interval",
                         "0.1")


def on_node(view_rows: list[dict[str, Any]], name: str) -> int:
    return sum(1 for r in view_rows if r["node"] == name)


async def test_kill_9_of_a_node_under_load(redis: Redis, postgres: Postgres) -> None:
    procs: list[ServerProcess] = []
    observer: Server | None = None
    clients: list[Client] = []
    try:
        procs = [node(n, redis, postgres) for n in ("a", "b", "c")]
        a, b, c = procs
        # An in-process node of the same cluster: the test reads its view.
        observer = Server(ServerConfig(port=0, status_every=0, server_id="watch"))
        observer.use_cluster(RedisCluster(redis.url, lease_ttl=TTL))
        await observer.start()
        view = observer.cluster
        # Most clients start on `a` (first in their list); the rest on b and c.
        for i in range(CLIENTS):
            first = [a, a, b, c][i % 4]
            order = [first] + [p for p in procs if p is not first]
            cl = Client(servers=[("127.0.0.1", p.port) for p in order], id=f"dev{i}", heartbeat_interval=0.3,
                        backoff=Backoff(base=0.05, cap=0.5), max_outbox=None, max_outbox_bytes=None)
            await cl.start()
            clients.append(cl)
        end = time.monotonic() + 15
        while len([r for r in view.clients() if r["id"]]) < CLIENTS and time.monotonic() < end:
            await asyncio.sleep(0.05)
        assert on_node(view.clients(), "a") == CLIENTS // 2

        async def produce(cl: Client) -> None:
            for n in range(MESSAGES):
                await cl.send(f"{cl.id} #{n + 1}")
                if n % 20 == 0:
                    await asyncio.sleep(0.01)

        producing = [asyncio.ensure_future(produce(cl)) for cl in clients]
        await asyncio.sleep(0.4)  # under load
        a.kill()
        killed_at = time.monotonic()
        # Without a's help, its clients leave every view within the lease TTL plus a renewal.
        while on_node(view.clients(), "a") and time.monotonic() - killed_at < 10:
            await asyncio.sleep(0.02)
        gone_after = time.monotonic() - killed_at
        assert on_node(view.clients(), "a") == 0
        assert "a" not in [n.node for n in view.nodes()]
        assert gone_after < 3 * TTL, gone_after  # TTL + one renewal (TTL/3), with room for a busy box
        await asyncio.gather(*producing)
        for cl in clients:
            assert await cl.drain(30), f"{cl.id} still holds {len(cl.unacked())} unacknowledged"
        # Every client is on b or c now, each once.
        end = time.monotonic() + 10
        while time.monotonic() < end:
            rows = [r for r in view.clients() if r["id"]]
            if sorted(r["id"] for r in rows) == sorted(cl.id for cl in clients):
                break
            await asyncio.sleep(0.05)
        assert sorted(r["id"] for r in rows) == sorted(cl.id for cl in clients)
        assert {r["node"] for r in rows} <= {"b", "c"}
        # Exactly once: every (id, session, seq) stored, none twice.
        got = postgres.psql("SELECT count(*), count(DISTINCT (m.session_id, m.seq)), min(m.seq), max(m.seq) "
                            "FROM messages m JOIN sessions s ON s.id = m.session_id")
        assert got == f"{CLIENTS * MESSAGES}|{CLIENTS * MESSAGES}|1|{MESSAGES}", got
        per = postgres.psql("SELECT s.client_id, count(*) FROM messages m JOIN sessions s ON s.id = m.session_id "
                            "GROUP BY s.client_id HAVING count(*) <> " + str(MESSAGES))
        assert per == ""
    finally:
        for cl in clients:
            await cl.close(drain_timeout=0)
        if observer is not None:
            await observer.close(grace=0.5)
        for p in procs:
            p.kill()
