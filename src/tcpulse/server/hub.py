"""What the connections of one server share, and what happens across them.

The hub holds the settings, the store, the liveness `Tracker` of every client, the `Registry`
of ids and sessions, the `Guard` and the subscribers; and it does what involves more than one
connection or outlives one read: admitting a connection, answering a `HELLO` (authentication,
takeover, the session's `acked`), acknowledging what the store committed, and the one timer
for every deadline.  Each connection (`connection.ServerConnection`) calls into it; it knows a
connection only as a `Peer`.  `Server` (server.py) is the public face over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from tcpulse.errors import TcpulseError
from tcpulse.policy.liveness import Detector, PhiDetector, State, Tracker, Verdict, clamp_interval
from tcpulse.protocol.errors import ErrorCode
from tcpulse.protocol.events import Hello, Info, Msg, Ok
from tcpulse.server.cluster import ClusterBackend, cluster_row
from tcpulse.server.config import ServerConfig
from tcpulse.server.events import (
    Connected,
    Disconnected,
    HandshakeFailed,
    HeartbeatReceived,
    HelloReceived,
    MessageReceived,
    MessagesReceived,
    Recovered,
    ServerEvent,
    Suspect,
    TimedOut,
    Warning_,
)
from tcpulse.server.guard import Guard
from tcpulse.server.peer import Peer
from tcpulse.server.registry import Registry
from tcpulse.server.view import ClientView, DisconnectReason
from tcpulse.store.base import ConnectionRecord, SessionKey, Store, StoreUnavailable

__all__ = ["FINISH_WAIT", "MAX_LINGERING", "READ_BUDGET", "Hub"]

#: At most this many sockets linger at once; beyond, the server closes at once after the last
#: frame (it is in the kernel already, and reaches a client that sent nothing more).  Lingering
#: sockets are not clients, so without a cap a flood of bad or refused connections that the
#: attacker keeps open would spend the descriptors kept back for them (config.FD_RESERVE, 100).
MAX_LINGERING = 50
#: Seconds of reading and handling client bytes one loop iteration may spend.  Past it, what is
#: read is kept for the next iteration and the connection is not read meanwhile: the loop runs its
#: timers between, so a flood of 50 senders (libuv reads a ready socket up to 32 times in one go)
#: delays a deadline by about this much, not by the whole backlog (bench/flood_store.py).
READ_BUDGET = 0.01
#: Spending below this is not worth a new round of its own (a `call_soon` per loop iteration
#: cost more than the HEARTBEATs it measured, at 10,000 clients): the next round starts once this
#: much is spent, so an iteration's budget may begin a little used, never more than this.
ROUND_MIN = 0.001
#: Seconds of timeout bookkeeping (log, store, close) one loop iteration does; the BYEs themselves
#: all go out at once, the rest follows a slice at a time so that the next deadline is on time.
TIMEOUT_SLICE = 0.002
#: Failed TLS handshakes reported one by one per second; the rest are counted (a flood of bad
#: handshakes must not become a flood of log lines).
HANDSHAKE_REPORTS_PER_SEC = 5
#: The interval a client is held to while the cluster holds the answer to its HELLO (a deadline
#: far off: it is not judged meanwhile).
HELD_INTERVAL = 3600.0
#: Seconds a connection that said BYE (or sent a bad frame) waits for the store to commit what
#: came before, so that its ACK goes out before the close (PROTOCOL.md, "Errors").
FINISH_WAIT = 5.0


class Hub:
    """Shared state and cross-connection logic of one server (see the module docstring)."""

    def __init__(self, config: ServerConfig, store: Store, server_id: str) -> None:
        self.config = config
        self.server_id = server_id
        #: Whether any subscriber wants messages / heartbeats (read on the hot path).
        self.wants_messages = False
        self.wants_heartbeats = False
        self.store = store
        self.use_store(store)
        self.tracker: Tracker[Peer] = Tracker()
        self._phi = config.phi_settings()
        self.registry: Registry[Peer] = Registry()
        #: Connections whose socket lingers after their last frame (BYE/ERR), not clients any more.
        self.lingerers: set[Peer] = set()
        #: Sockets lingering after their last frame now (see MAX_LINGERING).
        self.lingering = 0
        # Subscribers: every one gets the rare events; messages and heartbeats (frequent) go only
        # to those that asked for them, and are not even built when nobody did.
        self._subscribers: list[Callable[[ServerEvent], None]] = []
        self._each_message: list[Callable[[ServerEvent], None]] = []
        self._message_batches: list[Callable[[ServerEvent], None]] = []
        self._heartbeats: list[Callable[[ServerEvent], None]] = []
        #: Subscribers that get a numbered message only once it is stored, and the messages
        #: waiting for that, by session (as many as the store's backlog: bounded by it).
        self._after_store: list[Callable[[ServerEvent], None]] = []
        self._unstored: dict[SessionKey, deque[tuple[ClientView, Msg]]] = {}
        self.closing = False
        self.guard = Guard(config, emit=self.emit, clients=lambda: self.registry, closing=lambda: self.closing)
        self.info: Info | None = None
        #: Counts of connections that have ended (and `connections`, `timeouts`: all so far); add
        #: the open clients' own counters for live figures (admin/metrics.py does).
        self.totals = {"connections": 0, "messages": 0, "timeouts": 0, "heartbeats": 0, "errors": 0,
                       "bytes_in": 0, "bytes_out": 0}
        #: Flow control from the store (PROTOCOL.md is silent; STYLE.md, "Flow control"): senders
        #: whose reading is paused because the store's backlog passed the high watermark.
        self.store_high = config.max_store_backlog
        self.store_low = config.max_store_backlog // 4
        self.paused: set[Peer] = set()
        #: How many times a sender was paused for the store (a figure for the admin and tests).
        self.pauses = 0
        #: TLS handshakes that failed (all of them; their events are rate-limited).
        self.handshake_failures = 0
        self._handshake_window = 0
        self._handshake_reported = 0
        self._handshake_quiet = 0
        # The read budget of this loop iteration (spend / over_budget / defer).
        self._spent = 0.0
        self._round_pending = False
        self._deferred: deque[Peer] = deque()
        self._timings: dict[float | None, tuple[float, float]] = {}
        #: Clients told `BYE heartbeat-timeout` whose bookkeeping is still to do (`_bury`).
        self._dying: deque[tuple[Verdict[Peer], float]] = deque()
        self._burying = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The cluster backend (None: a single server), and every served connection by its
        #: number, for the backend's requests (release, fenced_out: ClusterHost); kept only in a
        #: cluster (a single server spares the entry per client).
        self.cluster: ClusterBackend | None = None
        self.by_conn: dict[int, Peer] = {}

    # ---------------------------------------------------------------- basics

    @staticmethod
    def now() -> float:
        """The server's clock.  Deadlines are kept on the monotonic clock, not the loop's:
        uvloop's ticks in whole milliseconds, which would make every lateness and silence figure
        a whole millisecond."""
        return time.monotonic()

    def subscribe(self, callback: Callable[[ServerEvent], None], *, messages: bool, batch_messages: bool,
                  heartbeats: bool, after_store: bool = False) -> Callable[[], None]:
        """Add a subscriber (see `Server.subscribe`); returns the function that removes it."""
        lists = [self._subscribers]
        if messages:
            lists.append(self._message_batches if batch_messages else
                         self._after_store if after_store else self._each_message)
        if heartbeats:
            lists.append(self._heartbeats)
        for li in lists:
            li.append(callback)
        self._wants()

        def unsubscribe() -> None:
            for li in lists:
                if callback in li:
                    li.remove(callback)
            self._wants()
        return unsubscribe

    def _wants(self) -> None:
        self.wants_messages = bool(self._each_message or self._message_batches or self._after_store)
        self.keep_unnumbered = self.wants_messages or self.store.keeps_unnumbered
        if not self._after_store:
            self._unstored.clear()
        self.wants_heartbeats = bool(self._heartbeats)

    def emit(self, ev: ServerEvent) -> None:
        """Hand `ev` to every subscriber; a subscriber's exception is reported, never raised."""
        self._deliver(self._subscribers, ev)

    def heartbeat(self, view: ClientView) -> None:
        """A HEARTBEAT arrived (call only when `wants_heartbeats`)."""
        self._deliver(self._heartbeats, HeartbeatReceived(view))

    def messages(self, view: ClientView, msgs: list[Msg], duplicates: frozenset[int]) -> None:
        """The messages of one read (call only when `wants_messages`; `duplicates`: the places in
        `msgs` of those already stored): one event for the batch subscribers, one per message
        for the others, each once stored for those that wait for the store."""
        if self._message_batches:
            self._deliver(self._message_batches, MessagesReceived(view, msgs, duplicates))
        if self._each_message:
            each = self._each_message
            for i, m in enumerate(msgs):
                self._deliver(each, MessageReceived(view, m.payload, m.seq, i in duplicates))
        if self._after_store:
            self._messages_after_store(view, msgs, duplicates)

    def _messages_after_store(self, view: ClientView, msgs: list[Msg], duplicates: frozenset[int]) -> None:
        # Numbered messages wait for the commit that stores them (on_commit); a duplicate was
        # handed over when it was first stored, and is not again; unnumbered ones go now (they
        # are fire-and-forget: nothing to wait for, nothing acknowledged).
        after = self._after_store
        immediate = self.store.immediate
        key = None if view.id is None or view.session is None else (view.id, view.session)
        for i, m in enumerate(msgs):
            seq = m.seq
            if i in duplicates:
                continue
            if seq is None or immediate:
                self._deliver(after, MessageReceived(view, m.payload, seq, False))
            elif key is not None:
                q = self._unstored.get(key)
                if q is None:
                    q = self._unstored[key] = deque()
                q.append((view, m))

    def _stored(self, highs: dict[SessionKey, int]) -> None:
        # Hand the subscribers that wait for the store what it has committed now, in order.
        after = self._after_store
        for key, high in highs.items():
            q = self._unstored.get(key)
            while q and q[0][1].seq is not None and q[0][1].seq <= high:  # type: ignore[operator]
                view, m = q.popleft()
                self._deliver(after, MessageReceived(view, m.payload, m.seq, False))
            if q is not None and not q:
                del self._unstored[key]

    @staticmethod
    def _deliver(subscribers: list[Callable[[ServerEvent], None]], ev: ServerEvent) -> None:
        for cb in subscribers:
            try:
                cb(ev)
            except Exception as e:  # a subscriber's bug must not take the server down
                print(f"tcpulse: event subscriber failed: {e!r}", file=sys.stderr)

    def use_store(self, store: Store) -> None:
        self.store = store
        #: Whether anyone wants the payloads of unnumbered messages (a store that keeps them, a
        #: subscriber): when not, the core only checks and counts them (the --db none -q path).
        self.keep_unnumbered = store.keeps_unnumbered or self.wants_messages
        store.set_commit_listener(self.on_commit)
        store.set_state_listener(self.on_store_state)

    def linger_slot(self, c: Peer | None = None) -> bool:
        """Take one of the MAX_LINGERING slots for a socket that is not a client: one lingering
        after its last frame (`c`), or one in its TLS handshake (handshake.py)."""
        if self.lingering >= MAX_LINGERING:
            return False
        self.lingering += 1
        if c is not None:
            self.lingerers.add(c)
        return True

    def linger_done(self, c: Peer | None = None) -> None:
        self.lingering -= 1
        if c is not None:
            self.lingerers.discard(c)

    # ---------------------------------------------------------------- the read budget

    def over_budget(self) -> bool:
        """True when this loop iteration has spent its READ_BUDGET on client bytes."""
        return self._spent >= READ_BUDGET

    def spend(self, seconds: float) -> None:
        """A connection spent `seconds` handling what it read."""
        self._spent += seconds
        if not self._round_pending and self._spent >= ROUND_MIN:
            self._round_pending = True
            asyncio.get_running_loop().call_soon(self._new_round)

    def defer(self, c: Peer) -> None:
        """`c` read bytes past the budget: it runs them at the start of a later iteration."""
        self._deferred.append(c)
        if not self._round_pending:
            self._round_pending = True
            asyncio.get_running_loop().call_soon(self._new_round)

    def _new_round(self) -> None:
        # A new loop iteration (call_soon runs in the next one, after the due timers): a fresh
        # budget, first for the connections kept back, in the order they were.
        self._round_pending = False
        self._spent = 0.0
        q = self._deferred
        while q:  # at least one: every iteration makes progress, whatever the budget
            q.popleft().run_deferred()
            if self._spent >= READ_BUDGET:
                break
        if q and not self._round_pending:
            self._round_pending = True
            asyncio.get_running_loop().call_soon(self._new_round)

    def handshake_failed(self, addr: str, why: str) -> None:
        """A TLS handshake failed: count it; report it unless many already were this second."""
        self.handshake_failures += 1
        second = int(self.now())
        if second != self._handshake_window:
            self._handshake_window = second
            self._handshake_reported = 0
        if self._handshake_reported >= HANDSHAKE_REPORTS_PER_SEC:
            self._handshake_quiet += 1
            return
        self._handshake_reported += 1
        quiet, self._handshake_quiet = self._handshake_quiet, 0
        self.emit(HandshakeFailed(addr, why, quiet))

    def spawn(self, coro: Any) -> None:
        """Run `coro` as a task the server cancels when it closes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self.stop_timer()

    def stop_timer(self) -> None:
        """No more deadlines are judged (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------- connections

    def connection_made(self, c: Peer) -> None:
        """A socket was accepted: refuse it (ERR 503), or send INFO and start its deadline."""
        if self.closing:
            c.fail(ErrorCode.UNAVAILABLE, "server shutting down", DisconnectReason.SHUTDOWN)
            return
        if not self.guard.admit(c, len(self.registry)):
            return  # refused with ERR 503 (server full, or too many from this address)
        now = self.now()
        self.registry.add(c)
        if self.cluster is not None:
            self.by_conn[c.conn_id] = c
        self.totals["connections"] += 1
        assert self.info is not None
        c.send_frame(self.info)
        self.tracker.add(c, now, c.interval, c.timeout, self._detector(c.interval))
        self.arm()
        if not self.guard.auth_required:
            # With auth, nothing is stored for a connection until its HELLO is accepted.
            self.store.record_connection(ConnectionRecord(c.conn_id, None, c.addr, c.connected_at))
        self.emit(Connected(c.view))

    def connection_lost(self, c: Peer) -> None:
        """`c` ended (for whatever reason, once): forget it, record it, report it."""
        self.guard.lost(c)
        self.paused.discard(c)
        if not self.registry.remove(c):
            return
        self.by_conn.pop(c.conn_id, None)
        self.tracker.remove(c)
        reason = c.reason or DisconnectReason.EOF
        if c.id is not None or not self.guard.auth_required:
            self.store.record_connection(ConnectionRecord(
                c.conn_id, c.id, c.addr, c.connected_at, time.time(), reason.value, c.heartbeats,
                c.messages, c.rtt, c.detail))
        t = self.totals
        t["messages"] += c.messages
        t["heartbeats"] += c.heartbeats
        t["bytes_in"] += c.bytes_in
        t["bytes_out"] += c.bytes_out
        if reason is DisconnectReason.ERROR:
            t["errors"] += 1
        self.emit(Disconnected(c.view, reason, c.detail))

    # ---------------------------------------------------------------- store

    def store_messages(self, c: Peer, msgs: list[Msg]) -> None:
        """Queue what arrived together on `c`, in order (numbered ones are acknowledged on commit).
        Past the store's high watermark, `c` is not read from until the backlog is below the low
        one: TCP then pushes back on the client, and the server's memory stays bounded."""
        if msgs:
            store = self.store
            store.add_messages(c.id or c.addr, c.session, c.conn_id, time.time(), msgs)
            if store.backlog > self.store_high and c not in self.paused and not c.closed:
                self.paused.add(c)
                self.pauses += 1
                c.hold_reading(True)

    def on_commit(self, highs: dict[SessionKey, int]) -> None:
        """The store committed these sessions up to these seqs: send the ACKs owed, and read
        again from the senders paused for the store once its backlog is low."""
        if self._unstored:
            self._stored(highs)
        owner = self.registry.session_owner
        for key, seq in highs.items():
            c = owner(key)
            if c is not None:
                c.acknowledge(seq)
        if self.paused and self.store.backlog <= self.store_low:
            paused, self.paused = self.paused, set()
            for c in paused:
                c.hold_reading(False)

    def finish_after_store(self, c: Peer) -> None:
        """`c` ends (BYE, or a bad frame) behind messages not stored yet: it closes when their ACK
        is out (`Peer.acknowledge` calls `finish()`), or when the store gives up or takes longer
        than FINISH_WAIT; what is not acknowledged then, the client sends again."""
        self.spawn(self._finish_after_store(c))

    async def _finish_after_store(self, c: Peer) -> None:
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await asyncio.wait_for(self.store.flush(), FINISH_WAIT)
        c.finish()

    def on_store_state(self, failing: bool, text: str) -> None:
        # PROTOCOL.md, "Errors", 503: a numbered sender with unacknowledged messages is closed,
        # so that it keeps them and sends them again once the store can write.
        self.emit(Warning_(text, {"store": "failing" if failing else "ok"}))
        if failing:
            for c in list(self.registry):
                if c.session is not None and c.owes_acks:
                    c.fail(ErrorCode.UNAVAILABLE, "store unavailable: keep your messages and send "
                           "them again after reconnecting")

    # ---------------------------------------------------------------- HELLO

    def start_hello(self, c: Peer, hello: Hello) -> None:
        """A HELLO arrived on `c` (its later frames are held back): answer it in a task."""
        self.spawn(self._accept_hello(c, hello))

    async def _accept_hello(self, c: Peer, hello: Hello) -> None:
        interval, timeout = self._timing(hello.heartbeat_interval)
        replaced = False
        # Authentication comes before anything else, a takeover included (guard.py).
        if not await self.guard.check_hello(c, hello) or c.closed:
            return
        if hello.session is not None and self.store.failing:
            c.fail(ErrorCode.UNAVAILABLE, "store unavailable: try again later")
            return
        acked = 0
        claimed = self.cluster is None
        try:
            while True:
                old = self.registry.owner(hello.id)
                if old is not None and old is not c:
                    # PROTOCOL.md, "Identity and takeover": the old one gets BYE replaced and is
                    # closed, everything received from it is stored, and only then does the new
                    # one get OK.
                    replaced = True
                    old.say_bye("replaced", DisconnectReason.REPLACED)
                    await self.store.flush()
                if c.closed:
                    return
                if not claimed:
                    # The same across nodes (server/cluster.py): the owner elsewhere says BYE
                    # replaced and stores what it has before the claim returns.
                    claimed = True
                    if not await self._claim(c, hello.id):
                        return
                    if c.closed:
                        return
                if hello.session is not None:
                    acked = await self.store.acked(hello.id, hello.session)
                if c.closed:
                    return
                # Another connection may have signed in with this id while we waited on the
                # store: replace it too, so that one id never has two live connections.
                if self.registry.owner(hello.id) in (None, c):
                    break
        except StoreUnavailable as e:
            c.fail(ErrorCode.UNAVAILABLE, f"store unavailable: try again later ({e})")
            return
        if c.closed:
            return
        c.accept(hello.id, hello.session, interval, timeout, acked)
        self.registry.claim(c)
        self.store.record_connection(ConnectionRecord(c.conn_id, c.id, c.addr, c.connected_at))
        self.tracker.set_interval(c, self.now(), interval, timeout, self._detector(interval))
        self.arm()
        c.send_frame(Ok(id=hello.id, heartbeat_interval=interval, heartbeat_timeout=timeout, acked=acked))
        self.emit(HelloReceived(c.view, interval, timeout, hello.session, acked, replaced))
        # Measure the round trip once, right after the handshake.
        c.ping()
        c.resume()

    async def _claim(self, c: Peer, client_id: str) -> bool:
        assert self.cluster is not None
        # While the cluster holds the answer to its HELLO (a takeover waits for the other node,
        # up to its lease), the client is not judged: its silence is the server's doing.
        # (Its deadline is put far off, not removed: it stays "alive" to observers meanwhile.)
        self.tracker.set_interval(c, self.now(), HELD_INTERVAL, 2 * HELD_INTERVAL)
        try:
            won = await self.cluster.claim(client_id, c.conn_id)
        except TcpulseError as e:
            c.fail(ErrorCode.UNAVAILABLE, f"{e}: try again later")
            return False
        finally:
            if not c.closed:
                self.tracker.set_interval(c, self.now(), c.interval, c.timeout)
                self.arm()
        if not won:
            # A newer HELLO for this id claimed it meanwhile (on this node or another).
            c.say_bye("replaced", DisconnectReason.REPLACED)
        return won and not c.closed

    # ---------------------------------------------------------------- the cluster's host (ClusterHost)

    @property
    def node_id(self) -> str:
        return self.server_id

    def local_rows(self) -> list[dict[str, Any]]:
        now, wall = self.now(), time.time()
        return [cluster_row(c.view, self.server_id, now, wall) for c in self.registry]

    async def release(self, conn_id: int) -> None:
        c = self.by_conn.get(conn_id)
        if c is None or c.closed:
            return
        c.say_bye("replaced", DisconnectReason.REPLACED)
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await asyncio.wait_for(self.store.flush(), FINISH_WAIT)

    def fenced_out(self, conn_id: int) -> None:
        c = self.by_conn.get(conn_id)
        if c is not None and not c.closed:
            c.say_bye("replaced", DisconnectReason.REPLACED)

    def deliver(self, client_id: str, payload: bytes) -> bool:
        c = self.registry.find(client_id)
        if c is None or c.closed:
            return False
        c.send_frame(Msg(payload=payload))
        return True

    def deliver_all(self, payload: bytes) -> int:
        msg = Msg(payload=payload)
        n = 0
        for c in list(self.registry):
            if not c.closed:
                c.send_frame(msg)
                n += 1
        return n

    def warn(self, text: str, fields: dict[str, Any]) -> None:
        self.emit(Warning_(text, fields))

    def subscribe_rare(self, callback: Callable[[ServerEvent], None]) -> Callable[[], None]:
        return self.subscribe(callback, messages=False, batch_messages=False, heartbeats=False)

    # ---------------------------------------------------------------- deadlines

    def arm(self) -> None:
        """Make sure the one timer fires at the earliest deadline of all clients."""
        due = self.tracker.next_due()
        if due is None:
            return
        if self._timer is not None:
            if self._timer_when <= due:
                return
            self._timer.cancel()
        self._timer_when = due
        self._timer = asyncio.get_running_loop().call_later(max(0.0, due - self.now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.now()
        if now < self._timer_when:
            # The loop's timer woke a hair early (its clock is coarser than ours): never judge a
            # client before its due moment; wait out the rest.
            self._timer = asyncio.get_running_loop().call_later(self._timer_when - now, self._on_timer)
            return
        wall = time.time()
        dying = self._dying
        for v in self.tracker.poll(now, spoke=self._spoke):
            c = v.key
            if v.state is State.ALIVE:
                self.emit(Recovered(c.view, v.silent_for))
            elif v.state is State.SUSPECT:
                self.emit(Suspect(c.view, v.silent_for))
            elif v.state is State.DEAD and not c.closed:
                # Announce first: every BYE of this batch goes on the wire before any logging,
                # storing or closing, so that when many clients die at once the last one is not
                # told late by the bookkeeping of the others (PROTOCOL.md, "Liveness": promptly).
                c.announce_timeout()
                dying.append((v, wall))
        if dying and not self._burying:
            # The bookkeeping waits for the next iterations, a slice at a time: the next deadline
            # must not wait behind a thousand log lines and closes (TIMEOUT_SLICE).
            self._burying = True
            asyncio.get_running_loop().call_soon(self._bury)
        if not self.closing:
            self.arm()

    def _bury(self) -> None:
        # What follows a timeout (counted, stored, reported, closed), for those announced.
        self._burying = False
        q = self._dying
        t0 = perf_counter()
        while q:
            v, wall = q.popleft()
            c = v.key
            self.totals["timeouts"] += 1
            if c.id is not None or not self.guard.auth_required:
                # With auth, nothing is stored for a connection that never authenticated.
                self.store.record_timeout(c.conn_id, c.id, wall, v.silent_for, v.late_by, phi=v.phi)
            self.emit(TimedOut(c.view, v.silent_for, v.late_by, v.phi))
            c.end(DisconnectReason.TIMEOUT, "heartbeat-timeout", linger=True)
            if perf_counter() - t0 > TIMEOUT_SLICE:
                break
        if q and not self._burying:
            self._burying = True
            asyncio.get_running_loop().call_soon(self._bury)

    @staticmethod
    def _spoke(c: Peer) -> bool:
        # Before a client is declared dead: did it speak, and the server not read it (reading
        # paused for the store, or the loop ran late)?  Its bytes wait in the kernel then.
        return c.unread() > 0

    def _timing(self, asked: float | None) -> tuple[float, float]:
        # PROTOCOL.md, "Liveness": the interval asked for, clamped to the server's bounds, and a
        # timeout of that times the server's own ratio.  The pairs are shared (most clients ask
        # for the same few intervals): two float objects per client less (memory per idle client).
        pair = self._timings.get(asked)
        if pair is None:
            cfg = self.config
            interval = clamp_interval(asked, cfg.heartbeat_interval, cfg.min_heartbeat_interval,
                                      cfg.max_heartbeat_interval)
            pair = (interval, interval * (cfg.heartbeat_timeout / cfg.heartbeat_interval))
            if len(self._timings) < 64:  # bounded: a client may ask for any number at all
                self._timings[asked] = pair
        return pair

    def _detector(self, interval: float) -> Detector | None:
        # One per client, learning from its interval on (None: the fixed timeout, no state).
        return None if self._phi is None else PhiDetector(interval, self._phi)
