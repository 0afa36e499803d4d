"""Fixed timeout against phi accrual, on generated heartbeat traces with a simulated clock.

Pure: the real `Tracker` and detectors, driven by arrival times from a seeded generator; no
sockets, no sleeping.  Run `python tests/policy/test_detection.py` to print the table in
docs/detection.md.

The population (interval 1 s, every client jittered by +-0.2 s): most clients are steady, one in
five pauses now and then for 3 s (a GC, a flaky link).  Live clients beat for an hour; dead ones
beat like them, then stop at a random moment in the second half.  Like the server, a false
timeout ends the connection: the client reconnects at its next beat with a fresh history.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tcpulse.policy.liveness import SUSPECT_RATIO, Detector, PhiDetector, PhiSettings, State, Tracker

INTERVAL = 1.0
JITTER = 0.2
PAUSE = 3.0
P_PAUSE = 0.05  # per beat, for the clients that pause
PAUSERS = 0.2  # share of clients that pause
#: The fixed timeout phi runs under (its backstop): phi may act earlier, never later.
PHI_BACKSTOP = 5.0
PHI = PhiSettings(threshold=8.0, min_std=0.1, acceptable_pause=1.0)


def _beats(rng: random.Random, end: float, p_pause: float) -> list[float]:
    t, out = 0.0, []
    while True:
        t += (PAUSE if rng.random() < p_pause else INTERVAL) + rng.uniform(-JITTER, JITTER)
        if t > end:
            return out
        out.append(t)


@dataclass
class Population:
    live: list[list[float]]
    dead: list[list[float]]
    end: float

    @property
    def client_hours(self) -> float:
        # Live clients for the whole run, dead ones until they die.
        return (len(self.live) * self.end + sum(ts[-1] for ts in self.dead)) / 3600


def population(seed: int = 7, n_live: int = 60, n_dead: int = 60, hours: float = 1.0,
               pausers: float = PAUSERS) -> Population:
    rng = random.Random(seed)
    end = hours * 3600
    live = [_beats(rng, end, P_PAUSE if i < n_live * pausers else 0.0) for i in range(n_live)]
    dead = [_beats(rng, rng.uniform(end / 2, end), P_PAUSE if i < n_dead * pausers else 0.0)
            for i in range(n_dead)]
    return Population(live, dead, end)


@dataclass
class Outcome:
    false_timeouts: int
    per_hour: float  # false timeouts per client-hour
    detection: list[float]  # seconds from a dead client's last beat to its timeout, sorted
    min_silence: float  # the shortest silence any timeout (true or false) came after

    @property
    def mean_detection(self) -> float:
        return sum(self.detection) / len(self.detection)

    def pct(self, q: float) -> float:
        d = self.detection
        return d[min(len(d) - 1, int(q / 100 * len(d)))]


def simulate(pop: Population, timeout: float, make: Callable[[], Detector | None]) -> Outcome:
    """Feed every arrival to one `Tracker`, polling it at each moment it says is due."""
    traces = pop.live + pop.dead
    n_live = len(pop.live)
    tracker: Tracker[int] = Tracker()
    arrivals: list[tuple[float, int]] = []
    for k, ts in enumerate(traces):
        tracker.add(k, 0.0, INTERVAL, timeout, make())
        arrivals.extend((t, k) for t in ts)
    arrivals.sort()
    false = 0
    found: dict[int, float] = {}
    down: set[int] = set()
    min_silence = float("inf")

    def poll_until(t: float) -> None:
        nonlocal false, min_silence
        while (due := tracker.next_due()) is not None and due <= t:
            for v in tracker.poll(due):
                if v.state is not State.DEAD:
                    continue
                min_silence = min(min_silence, v.silent_for)
                k = v.key
                if k < n_live:
                    if v.due < pop.end:  # a live client still beating: a false timeout
                        false += 1
                        down.add(k)
                elif v.due < traces[k][-1]:  # a dying client, timed out before it died
                    false += 1
                    down.add(k)
                else:
                    found[k] = v.due

    for t, k in arrivals:
        poll_until(t)
        if k in down:  # it reconnects: a new connection, a new history
            down.discard(k)
            tracker.add(k, t, INTERVAL, timeout, make())
        else:
            tracker.touch(k, t)
    poll_until(pop.end + 10 * timeout)
    detection = sorted(found[n_live + j] - ts[-1] for j, ts in enumerate(pop.dead))
    assert len(detection) == len(pop.dead), "every dead client must be found"
    return Outcome(false, false / pop.client_hours, detection, min_silence)


def fixed() -> Detector | None:
    return None


def phi() -> Detector:
    return PhiDetector(INTERVAL, PHI)


def test_phi_has_fewer_false_timeouts_at_comparable_detection_time() -> None:
    pop = population()
    p = simulate(pop, PHI_BACKSTOP, phi)
    # The fixed timeout that detects the dead exactly as fast as phi does on average.
    f = simulate(pop, p.mean_detection, fixed)
    assert abs(f.mean_detection - p.mean_detection) < 1e-6
    assert f.false_timeouts > 0, "the trace must challenge a fixed timeout"
    assert p.false_timeouts * 4 < f.false_timeouts, (p.false_timeouts, f.false_timeouts)
    # Neither ever acts before 1.5 intervals of silence (PROTOCOL.md, "Liveness").
    assert p.min_silence >= SUSPECT_RATIO * INTERVAL - 1e-9
    assert f.min_silence >= SUSPECT_RATIO * INTERVAL - 1e-9


def test_phi_detects_steady_clients_faster_than_pausing_ones() -> None:
    # What makes phi pay off: it learns each client, so steady ones are found sooner.
    pop = population(n_live=0, n_dead=40, pausers=0.5)  # the first 20 pause, the rest do not
    pausing = simulate(Population([], pop.dead[:20], pop.end), PHI_BACKSTOP, phi)
    steady = simulate(Population([], pop.dead[20:], pop.end), PHI_BACKSTOP, phi)
    assert steady.detection[-1] < PHI_BACKSTOP
    assert steady.mean_detection < pausing.mean_detection
    # The fixed timeout treats them all alike.
    assert len(set(simulate(pop, 3.0, fixed).detection)) == 1


def table() -> str:
    pop = population(n_live=200, n_dead=200)
    rows = [("fixed", t, simulate(pop, t, fixed)) for t in (2.0, 2.5, 3.0, 3.5, 4.0)]
    for ap in (0.0, 0.5, 1.0, 1.5):
        settings = PhiSettings(threshold=8.0, min_std=0.1, acceptable_pause=ap)
        rows.append((f"phi, threshold 8, acceptable pause {ap:g}", PHI_BACKSTOP,
                     simulate(pop, PHI_BACKSTOP, lambda s=settings: PhiDetector(INTERVAL, s))))  # type: ignore[misc]
    out = [f"{len(pop.live)} live + {len(pop.dead)} dying clients, {pop.client_hours:.0f} client-hours; "
           f"interval {INTERVAL:g} s, jitter +-{JITTER:g} s, {PAUSERS:.0%} of clients pause {PAUSE:g} s "
           f"with probability {P_PAUSE:g} per beat",
           "",
           "| detector | timeout (s) | false timeouts | per client-hour | detection mean (s) | p50 | p99 | max |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, t, o in rows:
        out.append(f"| {name} | {t:g} | {o.false_timeouts} | {o.per_hour:.3f} | {o.mean_detection:.2f} | "
                   f"{o.pct(50):.2f} | {o.pct(99):.2f} | {o.detection[-1]:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table())


def test_phi_is_not_taught_by_message_bursts() -> None:
    # A client that sends 200 messages a millisecond apart, then goes quiet and beats: its burst
    # says nothing about how long it stays silent, and must not shrink its phi deadline.
    from tcpulse.policy.liveness import PhiDetector
    det = PhiDetector(1.0)
    before = det.dead_after(1.0, 10.0)
    for _ in range(200):
        det.on_heartbeat(0.001)
    assert det.dead_after(1.0, 10.0) == before
    det.on_heartbeat(1.0)
    assert det.dead_after(1.0, 10.0) > 1.5
