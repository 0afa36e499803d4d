"""Three `tcpulse serve` processes on one Redis and one PostgreSQL, and clients with all three in
their server list sending numbered messages: `kill -9` of the node most of them are on, under
load.  Its clients reconnect to the others and resume their sessions there (`acked` from the
shared store); its clients leave every view within the lease TTL plus a renewal, without its
help; and every message sent through the failover is stored exactly once (counted in
PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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


async def test_postgres_and_redis_restarted_mid_run(redis: Redis, postgres: Postgres) -> None:
    # Two nodes under load; PostgreSQL is stopped and started again, then Redis.  Numbered
    # messages meanwhile get ERR 503 (never an ACK for what is not stored); the clients reconnect
    # and send again; in the end every message is stored exactly once.
    procs: list[ServerProcess] = []
    clients: list[Client] = []
    try:
        procs = [node(n, redis, postgres) for n in ("a", "b")]
        for i in range(6):
            order = procs if i % 2 == 0 else procs[::-1]
            cl = Client(servers=[("127.0.0.1", p.port) for p in order], id=f"pg{i}", heartbeat_interval=0.3,
                        backoff=Backoff(base=0.05, cap=0.5), max_outbox=None, max_outbox_bytes=None)
            await cl.start()
            clients.append(cl)

        async def produce(cl: Client) -> None:
            for n in range(MESSAGES):
                await cl.send(f"{cl.id} #{n + 1}")
                if n % 10 == 0:
                    await asyncio.sleep(0.01)

        producing = [asyncio.ensure_future(produce(cl)) for cl in clients]
        await asyncio.sleep(0.2)
        postgres.stop()
        await asyncio.sleep(1.0)
        postgres.start()
        await asyncio.sleep(0.5)
        redis.stop()
        await asyncio.sleep(1.0)
        redis.start()
        await asyncio.gather(*producing)
        for cl in clients:
            assert await cl.drain(60), f"{cl.id} still holds {len(cl.unacked())} unacknowledged"
        got = postgres.psql("SELECT count(*), count(DISTINCT (m.session_id, m.seq)) FROM messages m")
        assert got == f"{6 * MESSAGES}|{6 * MESSAGES}", got
        # Both nodes said the store failed and recovered, and that the cluster went stale and back.
        for p in procs:
            end = time.monotonic() + 20
            while not any("cluster reachable again" in e.get("text", "") for e in p.events):
                p.next_event(max(0.1, end - time.monotonic()))
            p.terminate()
            texts = [e.get("text", "") for e in p.rest_of_stdout() + p.events if e.get("event") == "warning"]
            assert any("cannot write" in t for t in texts), texts
            assert any("can be written again" in t for t in texts), texts
            assert any("cluster unreachable" in t for t in texts), texts
            assert any("cluster reachable again" in t for t in texts), texts
    finally:
        for cl in clients:
            await cl.close(drain_timeout=0)
        for p in procs:
            p.kill()


async def test_a_frozen_node_loses_the_id_it_held_and_says_so_when_it_wakes(redis: Redis, postgres: Postgres) -> None:
    # docs/cluster.md, "A node cut off from Redis": node a is frozen (SIGSTOP: it can neither
    # renew its lease nor answer a takeover).  A HELLO for its client's id on node b waits until
    # a's lease has run out, then gets OK; when a wakes up, it finds its lease gone, republishes
    # fenced, loses the id to b and tells its stale connection BYE replaced.
    from tests.conftest import RawClient
    procs: list[ServerProcess] = []
    try:
        procs = [node(n, redis, postgres) for n in ("a", "b")]
        a, b = procs
        old = await RawClient.open(a.port)
        await old.hello("frozen-id", heartbeat_interval=10)  # a long timeout: only the cluster ends it
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            new = await RawClient.open(b.port)
            await new.info()
            t0 = time.monotonic()
            await new.send(b'HELLO {"id":"frozen-id","heartbeat_interval":10}\n')
            ok = await new.expect(b"OK", 15)
            waited = time.monotonic() - t0
            assert ok.startswith(b"OK "), ok
            assert waited > 0.3, waited  # it waited for a's lease; a never answered
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        assert await old.expect(b"BYE", 15) == b"BYE replaced"
        # b keeps it: a's republish did not take it back.
        await asyncio.sleep(2 * TTL)
        await new.send(b"PING still\n")
        assert await new.expect(b"PONG", 5) == b"PONG still"
        old.close()
        new.close()
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                os.kill(p.proc.pid, signal.SIGCONT)
            p.kill()
