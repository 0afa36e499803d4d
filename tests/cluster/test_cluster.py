"""Three nodes in one process on one real Redis: the view converges (every node sees every
client, with its node), takeover across nodes (the old owner says BYE replaced before the new
one says OK; racing HELLOs leave one owner), sending to a client of another node and
broadcasting, a node leaving, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tcpulse.cluster.redis import RedisCluster
from tcpulse.server.cluster import ClusterChange
from tcpulse.server.config import ServerConfig
from tcpulse.server.events import ServerEvent, Warning_
from tcpulse.server.server import Server
from tests.cluster.parts import Redis
from tests.conftest import RawClient

pytestmark = pytest.mark.slow

TTL = 1.0


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(redis: Redis) -> AsyncIterator[Callable[..., Any]]:
    started: list[Server] = []

    async def start(name: str, **cfg: Any) -> Server:
        srv = Server(ServerConfig(**{"port": 0, "status_every": 0, "server_id": name, **cfg}))
        srv.use_cluster(RedisCluster(redis.url, lease_ttl=TTL))
        await srv.start()
        started.append(srv)
        return srv

    yield start
    for s in started:
        await s.close(grace=1)


def ids(srv: Server, node: str | None = None) -> dict[str, str]:
    return {r["id"] or r["name"]: r["node"] for r in srv.cluster.clients(node)}


async def test_the_view_converges_on_every_node(nodes: Any) -> None:
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    clients = []
    for i, srv in enumerate((a, b, c, a, b, c)):
        rc = await RawClient.open(srv.port)
        await rc.hello(f"dev{i}")
        clients.append(rc)
    want = {"dev0": "a", "dev1": "b", "dev2": "c", "dev3": "a", "dev4": "b", "dev5": "c"}
    for srv in (a, b, c):
        await until(lambda srv=srv: ids(srv) == want, what=f"{srv.node_id}'s view")
        assert srv.cluster.nodes()[0].node == srv.node_id
        assert sorted(n.node for n in srv.cluster.nodes()) == ["a", "b", "c"]
    # A filter for one node; states are published (suspect, alive) but not beats.
    assert ids(a, "b") == {"dev1": "b", "dev4": "b"}
    clients[1].close()
    await until(lambda: "dev1" not in ids(a) and "dev1" not in ids(c), what="dev1 gone everywhere")
    for rc in clients:
        rc.close()


async def test_takeover_across_nodes_bye_before_ok(nodes: Any) -> None:
    a, b = await nodes("a"), await nodes("b")
    old = await RawClient.open(a.port)
    await old.hello("sensor", session="s1")
    await until(lambda: ids(b).get("sensor") == "a")
    new = await RawClient.open(b.port)
    await new.info()
    await new.send(b'HELLO {"id":"sensor","session":"s1"}\n')
    # The old connection is told first; the new one is answered after.
    bye = await old.expect(b"BYE", 10)
    t_bye = time.monotonic()
    assert bye == b"BYE replaced"
    ok = await new.expect(b"OK", 10)
    assert time.monotonic() >= t_bye and ok.startswith(b"OK ")
    await until(lambda: ids(a).get("sensor") == "b" and ids(b).get("sensor") == "b", what="sensor on b")
    assert a.client("sensor") is None and b.client("sensor") is not None
    old.close()
    new.close()


async def test_racing_hellos_leave_one_owner(nodes: Any) -> None:
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    conns = []
    for srv in (a, b, c):
        rc = await RawClient.open(srv.port)
        await rc.info()
        conns.append(rc)
    await asyncio.gather(*(rc.send(b'HELLO {"id":"twin"}\n') for rc in conns))

    async def outcome(rc: RawClient) -> list[bytes]:
        lines = []
        with_timeout = 8.0
        try:
            while True:
                ln = await rc.line(with_timeout)
                if not ln:
                    break
                lines.append(ln)
                if ln.startswith(b"OK"):
                    with_timeout = 1.5  # an owner that stays keeps the connection: stop reading
        except TimeoutError:
            pass
        return lines

    results = await asyncio.gather(*(outcome(rc) for rc in conns))
    holding = [r for r in results if any(x.startswith(b"OK") for x in r) and not any(x.startswith(b"BYE") for x in r)]
    assert len(holding) == 1, results
    owners = [srv for srv in (a, b, c) if srv.client("twin") is not None]
    assert len(owners) == 1
    for rc in conns:
        rc.close()


async def test_send_and_broadcast_reach_other_nodes(nodes: Any) -> None:
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    x = await RawClient.open(b.port)
    await x.hello("x")
    y = await RawClient.open(c.port)
    await y.hello("y")
    await until(lambda: ids(a).get("x") == "b" and ids(a).get("y") == "c")
    assert a.send("x", b"for x")
    assert await x.expect(b"MSG", 10) == b"MSG 5"
    assert await x.line() == b"for x"
    assert not a.send("nobody", b"?")
    assert a.broadcast("all") == 2
    for rc in (x, y):
        assert await rc.expect(b"MSG", 10) == b"MSG 3"
        assert await rc.line() == b"all"
    x.close()
    y.close()


async def test_a_node_that_leaves_takes_its_clients_out_of_the_view(nodes: Any) -> None:
    a, b = await nodes("a"), await nodes("b")
    seen: list[ClusterChange] = []
    a.cluster.subscribe(seen.append)
    rc = await RawClient.open(b.port)
    await rc.hello("leaver")
    await until(lambda: ids(a).get("leaver") == "b")
    assert any(ch.op == "hello" and ch.row["id"] == "leaver" for ch in seen)
    await b.close(grace=0.5)
    await until(lambda: "leaver" not in ids(a) and [n.node for n in a.cluster.nodes()] == ["a"], 5)
    rc.close()


async def test_redis_away_and_back(nodes: Any, redis: Redis) -> None:
    a, b = await nodes("a"), await nodes("b")
    warnings: list[Warning_] = []

    def on(ev: ServerEvent) -> None:
        if isinstance(ev, Warning_) and "cluster" in ev.fields:
            warnings.append(ev)
    a.subscribe(on, messages=False)
    ca = await RawClient.open(a.port)
    await ca.hello("on-a", heartbeat_interval=0.5)
    cb = await RawClient.open(b.port)
    await cb.hello("on-b", heartbeat_interval=0.5)

    alive = [ca, cb]

    async def beat() -> None:  # the clients stay alive through the outage
        while True:
            await asyncio.sleep(0.25)
            for rc in alive:
                rc.writer.write(b"HEARTBEAT\n")
    beating = asyncio.ensure_future(beat())
    await until(lambda: ids(a).get("on-b") == "b" and ids(b).get("on-a") == "a")
    redis.stop()
    # Every node keeps serving: a new client is taken, the local view is whole, the rest stale.
    await until(lambda: a.cluster.stale and b.cluster.stale, 10, "stale")
    assert [w.fields["cluster"] for w in warnings] == ["stale"]
    late = await RawClient.open(a.port)
    await late.hello("late-on-a", heartbeat_interval=0.5)
    alive.append(late)
    assert {"on-a", "late-on-a"} <= set(ids(a, "a"))
    assert ids(a).get("on-b") == "b"  # last known
    redis.start()
    await until(lambda: not a.cluster.stale and not b.cluster.stale, 15, "current again")
    assert [w.fields["cluster"] for w in warnings] == ["stale", "ok"]
    # Republished: the empty Redis learns every node's clients again.
    await until(lambda: ids(b).get("late-on-a") == "a" and ids(b).get("on-a") == "a"
                and ids(a).get("on-b") == "b", 10, f"republished {ids(a)} {ids(b)}")
    # And takeover works again across nodes.
    again = await RawClient.open(b.port)
    await again.info()
    await again.send(b'HELLO {"id":"late-on-a"}\n')
    assert await late.expect(b"BYE", 10) == b"BYE replaced"
    assert (await again.expect(b"OK", 10)).startswith(b"OK")
    beating.cancel()
    for rc in (ca, cb, late, again):
        rc.close()
