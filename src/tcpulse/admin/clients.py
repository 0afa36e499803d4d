"""The clients as the admin shows them: one page at a time, filtered and sorted on the server.

`Directory` keeps, from the server's events, the open connections in the order they arrived
(`Connected` ... `Disconnected`: one dict entry per client, nothing copied) and the clients that
ended in the last seconds (`GONE_KEEP`, at most `GONE_MAX`), so that a timed-out client stays in
view for a while.  `page()` answers `/api/clients` and the dashboard's table: a state filter, a
search by id or address, a sort key and one page; with the default order (arrival) and no filter
it costs the page only, otherwise one pass over the clients.  Rows are built for the page only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tcpulse.i18n.display import iso_ts
from tcpulse.policy.liveness import State
from tcpulse.server.events import Connected, Disconnected, DisconnectReason, ServerEvent, TimedOut
from tcpulse.server.view import ClientView

if TYPE_CHECKING:
    from tcpulse.server.server import Server

__all__ = ["GONE_KEEP", "GONE_MAX", "LIVE_STATES", "SORTS", "STATES", "Directory", "Gone", "client_row"]

#: Seconds a client that ended stays listed (state `gone` of `/api/clients`), by how it ended.
GONE_KEEP = {"timeout": 30.0, "closed": 10.0}
#: Clients that ended kept at most (the oldest go first): a mass timeout of 10,000 clients must
#: not grow the admin's memory by 10,000 rows.
GONE_MAX = 1000
LIVE_STATES = ("alive", "suspect", "dead")
_STATE_OF = {"alive": State.ALIVE, "suspect": State.SUSPECT, "dead": State.DEAD}
#: Clients looked at in one go by a pass over all of them (a filter, a sort, the counts): about
#: 2 ms of the loop at 10,000 clients, then the loop runs what is due before the next slice.
CHUNK = 2000
STATES = (*LIVE_STATES, "gone")
_STATE_ORDER = {"alive": 0, "suspect": 1, "dead": 2, "timeout": 3, "closed": 4}


class Gone:
    """A client that ended: its view (whose figures stay as they were at the end) and how it ended."""

    __slots__ = ("ended_at", "ended_mono", "gone_state", "idle", "reason", "view")

    def __init__(self, view: ClientView, gone_state: str, idle: float, reason: str, ended_at: float,
                 ended_mono: float) -> None:
        self.view = view
        self.gone_state = gone_state
        self.idle = idle
        self.reason = reason
        self.ended_at = ended_at
        self.ended_mono = ended_mono

    # What the sort keys read, as a ClientView has it.
    @property
    def conn_id(self) -> int:
        return self.view.conn_id

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def addr(self) -> str:
        return self.view.addr

    @property
    def connected_at(self) -> float:
        return self.view.connected_at

    @property
    def heartbeats(self) -> int:
        return self.view.heartbeats

    @property
    def messages(self) -> int:
        return self.view.messages

    @property
    def bytes_in(self) -> int:
        return self.view.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.view.bytes_out

    @property
    def rtt(self) -> float | None:
        return self.view.rtt


Entry = ClientView | Gone


def _state(c: Entry) -> str:
    return c.gone_state if type(c) is Gone else c.state.value  # type: ignore[union-attr]


def _idle(c: Entry, now: float) -> float:
    return c.idle if type(c) is Gone else c.last_heard_ago(now)  # type: ignore[union-attr]


#: Sort keys (read from the live connection: rows are built for one page only), and whether
#: they sort largest first by default (as NATS's /connz: counts and idle time descending, names
#: and ids ascending).
_SortKey = Callable[[Entry, float], Any]
SORTS: dict[str, tuple[_SortKey, bool]] = {
    "cid": (lambda c, now: c.conn_id, False),
    "id": (lambda c, now: c.name, False),
    "addr": (lambda c, now: c.addr, False),
    "connected": (lambda c, now: c.connected_at, False),
    "uptime": (lambda c, now: -c.connected_at, True),
    "idle": (_idle, True),
    "last": (_idle, False),
    "state": (lambda c, now: _STATE_ORDER.get(_state(c), 9), False),
    "heartbeats": (lambda c, now: c.heartbeats, True),
    "messages": (lambda c, now: c.messages, True),
    "bytes_in": (lambda c, now: c.bytes_in, True),
    "bytes_out": (lambda c, now: c.bytes_out, True),
    "rtt": (lambda c, now: c.rtt, True),
}


def client_row(c: ClientView, now_mono: float, now_wall: float) -> dict[str, Any]:
    """One open client as `/api/clients` and the dashboard show it (docs/admin-api.md lists the fields)."""
    s = c.snapshot(now_mono)
    idle = s["last_heard_ago"]
    rtt = s["rtt"]
    return {
        "cid": c.conn_id,
        "id": s["id"],
        "name": s["client"],
        "addr": s["addr"],
        "session": s["session"],
        "connected_at": iso_ts(s["connected_at"]),
        "uptime": round(max(0.0, now_wall - s["connected_at"]), 3),
        "last_heard": iso_ts(now_wall - idle),
        "idle": idle,
        "state": s["state"],
        "heartbeats": s["heartbeats"],
        "messages": s["messages"],
        "bytes_in": s["bytes_in"],
        "bytes_out": s["bytes_out"],
        "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
        "heartbeat_interval": s["heartbeat_interval"],
        "heartbeat_timeout": s["heartbeat_timeout"],
    }


def gone_row(g: Gone) -> dict[str, Any]:
    """A client that ended, as its last row: `state` is `timeout` or `closed`, `idle` how long it
    had been silent then, `ended_at` and `reason` (a `DisconnectReason`) say when and why."""
    v = g.view
    rtt = v.rtt
    return {
        "cid": v.conn_id,
        "id": v.id,
        "name": v.name,
        "addr": v.addr,
        "session": v.session,
        "connected_at": iso_ts(v.connected_at),
        "uptime": round(max(0.0, g.ended_at - v.connected_at), 3),
        "last_heard": iso_ts(g.ended_at - g.idle),
        "idle": round(g.idle, 3),
        "state": g.gone_state,
        "heartbeats": v.heartbeats,
        "messages": v.messages,
        "bytes_in": v.bytes_in,
        "bytes_out": v.bytes_out,
        "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
        "heartbeat_interval": v.interval,
        "heartbeat_timeout": v.timeout,
        "ended_at": iso_ts(g.ended_at),
        "reason": g.reason,
        **({"detail": v.detail} if v.detail else {}),
    }


class Directory:
    """The open clients in arrival order and the recently gone (see the module docstring).  Feed
    it every server event with `on_event`; it must exist before clients come or be made from
    `server.clients` (it is)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.live: dict[int, ClientView] = {c.conn_id: c for c in sorted(server.clients, key=lambda c: c.conn_id)}
        self.gone: OrderedDict[int, Gone] = OrderedDict()
        # TimedOut comes before its Disconnected: how long the client had been silent.
        self._silent: dict[int, float] = {}

    def on_event(self, ev: ServerEvent) -> None:
        t = type(ev)
        if t is Connected:
            c = ev.client  # type: ignore[union-attr]
            self.live[c.conn_id] = c
        elif t is TimedOut:
            assert isinstance(ev, TimedOut)
            self._silent[ev.client.conn_id] = ev.silent_for
        elif t is Disconnected:
            assert isinstance(ev, Disconnected)
            c = ev.client
            cid = c.conn_id
            self.live.pop(cid, None)
            silent = self._silent.pop(cid, None)
            timed_out = ev.reason is DisconnectReason.TIMEOUT
            self.gone[cid] = Gone(c, "timeout" if timed_out else "closed", silent or 0.0, ev.reason.value,
                                  time.time(), self.server.now())
            if len(self.gone) > GONE_MAX:
                self.gone.popitem(last=False)

    def prune(self, now_mono: float) -> None:
        """Forget the gone clients whose time is up (the feed calls this once a second)."""
        gone = self.gone
        for cid in [cid for cid, g in gone.items() if now_mono - g.ended_mono > GONE_KEEP[g.gone_state]]:
            del gone[cid]

    async def page(self, *, states: set[str] | None, search: str, sort: str, desc: bool, offset: int,
                   limit: int) -> tuple[int, list[dict[str, Any]]]:
        """`(total matching, rows of the page)`.  `states`: None for the open clients (any of
        LIVE_STATES); may include `gone`.  `search`: a case-insensitive part of the id or address.

        A filter or another order than arrival takes a pass over the clients, in slices of
        `CHUNK` with the loop free in between: the main port never waits for more than a slice."""
        now_mono, now_wall = self.server.now(), time.time()
        self.prune(now_mono)
        live_states = set(LIVE_STATES) if states is None else states - {"gone"}
        gone = list(self.gone.values()) if states is not None and "gone" in states else []
        gone.sort(key=_conn_id)
        chosen: list[Entry]
        if sort == "cid" and not search and live_states == set(LIVE_STATES):
            # Arrival order, no filter: the page is all it costs.
            total = len(self.live) + len(gone)
            if desc:
                merged: Iterable[Entry] = heapq.merge(reversed(self.live.values()), reversed(gone),
                                                      key=_conn_id, reverse=True)
            else:
                merged = heapq.merge(self.live.values(), gone, key=_conn_id)
            chosen = list(itertools.islice(merged, offset, offset + limit))
        else:
            # A snapshot of the open clients (views stay readable once their client has gone).
            everyone = list(self.live.values())
            cands: list[Entry] = []
            want = {_STATE_OF[s] for s in live_states}
            s = search.lower()
            for i in range(0, len(everyone), CHUNK):
                part: Iterable[ClientView] = everyone[i:i + CHUNK]
                if len(want) < len(LIVE_STATES):
                    part = [c for c in part if c.state in want]
                if s:
                    part = [c for c in part if s in c.name.lower() or s in c.addr.lower()]
                cands.extend(part)
                await _breathe(i)
            if s:
                gone = [g for g in gone if s in g.name.lower() or s in g.addr.lower()]
            # Both lists are in arrival order: the sorts below are stable, so equal keys stay so.
            cands = list(heapq.merge(cands, gone, key=_conn_id)) if gone else cands
            total = len(cands)
            if sort == "cid":
                chosen = (cands[::-1] if desc else cands)[offset:offset + limit]
            else:
                key, _default = SORTS[sort]
                keys: list[Any] = []
                for i in range(0, len(cands), CHUNK):
                    keys.extend([key(c, now_mono) for c in cands[i:i + CHUNK]])
                    await _breathe(i)
                pairs = list(zip(keys, cands, strict=True))
                # None (no RTT yet) sorts after every number, in either order.
                missing = [c for k, c in pairs if k is None]
                if missing:
                    pairs = [p for p in pairs if p[0] is not None]
                want_n = offset + limit
                if want_n < len(pairs) // 8:
                    top = (heapq.nlargest if desc else heapq.nsmallest)(want_n, pairs, key=_first)
                else:
                    top = sorted(pairs, key=_first, reverse=desc)
                chosen = list(itertools.islice(itertools.chain((c for _k, c in top), missing), offset, want_n))
        rows = [gone_row(c) if type(c) is Gone else client_row(c, now_mono, now_wall)  # type: ignore[arg-type]
                for c in chosen]
        return total, rows

    async def counts(self) -> tuple[dict[str, int], int]:
        """Open clients by state, and the messages they have sent: one pass (the feed's sample),
        in slices of `CHUNK`."""
        alive = suspect = dead = msgs = 0
        everyone = list(self.live.values())
        alive_st, suspect_st = State.ALIVE, State.SUSPECT
        for i in range(0, len(everyone), CHUNK):
            for c in everyone[i:i + CHUNK]:
                st = c.state
                if st is alive_st:
                    alive += 1
                elif st is suspect_st:
                    suspect += 1
                else:
                    dead += 1
                msgs += c.messages
            await _breathe(i)
        return {"alive": alive, "suspect": suspect, "dead": dead}, msgs


async def _breathe(done: int) -> None:
    # Between two slices of a pass, let the loop run what is due (timeouts first of all).
    if done:
        await asyncio.sleep(0)


def _conn_id(c: Entry) -> int:
    return c.conn_id


def _first(p: tuple[Any, Entry]) -> Any:
    return p[0]
