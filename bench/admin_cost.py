"""What the admin endpoint costs: ingest with `--admin` (watched) vs without, request times, and
open dashboards beside many beating clients.

    .venv/bin/python bench/admin_cost.py                     # 3 rounds of 50 x 20,000 x 64 B; 5,000 idle clients
    .venv/bin/python bench/admin_cost.py --rounds 1 --idle 1000
    .venv/bin/python bench/admin_cost.py --rounds 0 --idle 0 --scale 10000 --dashboards 3   # issue 13, point 8

Part 1 starts a fresh `tcpulse serve` per round, alternately without and with `--admin`; with it,
a dashboard's event stream is open and `/metrics` is scraped every 0.5 s during the run (the
worst realistic case).  It prints messages per second (the shared load generator, unnumbered).
Part 2 holds `--idle` signed-in clients on one server and times `/metrics`, `/api/server`,
`/api/clients?limit=100` and the whole `/api/clients` (median of 20 requests each).
Part 3 (`--scale N`) holds N clients beating every second (`tcpulse.bench.load.hold`) on a fresh
`tcpulse serve --admin` per run, alternately with no dashboard and with `--dashboards` real ones
(headless Chromium, one browser context each, opened at once when the clients are in); it
reports how long each page took to be usable (rows shown, counts in, stream live), the server's
CPU and memory while every client beats and the dashboards stay open, and the lateness of the
timeouts of `--silent` clients silenced at once at the end (client-side, and the server's own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from tcpulse.bench.load import HoldResult, SpawnedServer, hold, ingest

CHROMIUM = os.environ.get("TCPULSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def admin_url(srv: SpawnedServer, timeout: float = 20.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(srv.log.name, encoding="utf-8") as f:
            for line in f:
                ev = json.loads(line)
                if ev.get("event") == "admin":
                    return str(ev["url"]).rstrip("/")
        time.sleep(0.05)
    raise RuntimeError("no admin URL in the server's log")


def watch(url: str, stop: threading.Event, scrapes: list[float]) -> None:
    """A dashboard (the event stream, read to the end) and a Prometheus scraper every 0.5 s."""
    def stream() -> None:
        with urllib.request.urlopen(url + "/api/events/stream", timeout=60) as r:
            while not stop.is_set() and r.readline():
                pass
    threading.Thread(target=stream, daemon=True).start()
    while not stop.wait(0.5):
        t = time.perf_counter()
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            r.read()
        scrapes.append(time.perf_counter() - t)


def one(admin: bool, clients: int, messages: int, size: int) -> tuple[float, list[float]]:
    srv = SpawnedServer(["--status-every", "0", *(["--admin", "127.0.0.1:0"] if admin else [])])
    stop = threading.Event()
    scrapes: list[float] = []
    try:
        port = srv.wait_listening()
        if admin:
            threading.Thread(target=watch, args=(admin_url(srv), stop, scrapes), daemon=True).start()
            time.sleep(0.3)
        res = asyncio.run(ingest("127.0.0.1", port, clients, messages, size, server_pid=srv.pid))
    finally:
        stop.set()
        srv.stop()
    if res.connected != clients:
        sys.exit(f"only {res.connected} of {clients} clients connected")
    return float(res.rate), scrapes


async def hold_idle(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await r.readline()
        w.write(b'HELLO {"id":"idle-%d","heartbeat_interval":60}\n' % i)
        writers.append(w)
    await asyncio.gather(*(w.drain() for w in writers))
    return writers


def timed(url: str, n: int = 20) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            size = len(r.read())
        times.append(time.perf_counter() - t)
    return statistics.median(times), size


def requests_with_idle(idle: int) -> None:
    srv = SpawnedServer(["--status-every", "0", "--admin", "127.0.0.1:0", "--max-heartbeat-interval", "60"])
    try:
        port = srv.wait_listening()
        url = admin_url(srv)

        async def run() -> None:
            writers = await hold_idle(port, idle)
            await asyncio.sleep(1.0)
            loop = asyncio.get_running_loop()
            n = json.loads(await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                url + "/api/server").read()))["clients"]["total"]
            print(f"\n{n} idle clients held; median of 20 requests:")
            for path in ("/metrics", "/api/server", "/api/clients?limit=100", f"/api/clients?limit={idle}"):
                med, size = await loop.run_in_executor(None, timed, url + path)
                print(f"  GET {path:<28} {med * 1000:8.1f} ms  {size:>10,} bytes", flush=True)
            for w in writers:
                w.close()
        asyncio.run(run())
    finally:
        srv.stop()


# --------------------------------------------------------------------------- part 3: dashboards at scale

def idle_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def browser(url: str, pages: int, expect: int) -> None:
    """`--browser URL`: open `pages` dashboards at once in headless Chromium (a context each, as
    separate browsers would be), print one JSON line with the seconds each took to be usable, keep
    them open (and visible: they ask for their rows every second) until stdin closes."""
    from playwright.sync_api import sync_playwright

    # Dashboards run on operators' machines, not beside the server: on the bench's shared two
    # cores the browser only takes what the server and the load generator leave (SCHED_IDLE,
    # inherited by Chromium's processes; nice 19 where that is not available).
    idle_priority()

    # Each page notes when it first is usable (rows shown, the stream live, the count in), in its
    # own time since its navigation began (performance.now()): the three are timed in parallel.
    probe = """(() => { const n = N_EXPECTED; const t = setInterval(() => {
        const link = document.getElementById('link'), count = document.getElementById('n-clients');
        if (!link || !count) return;
        const rows = document.querySelectorAll('#clients tbody tr[data-cid]').length;
        if (rows > 0 && link.textContent === 'live' && Number(count.textContent.replace(/,/g, '')) >= n) {
            const nav = performance.getEntriesByType('navigation')[0] || {};
            const api = performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/clients'));
            window.__usableAt = performance.now();
            window.__marks = {response: nav.responseEnd, dom: nav.domContentLoadedEventEnd,
                              first_rows: api.length ? api[0].responseEnd : null};
            clearInterval(t); } }, 10); })();""".replace(
        "N_EXPECTED", str(int(expect)))
    with sync_playwright() as pw:
        # A fresh profile (Playwright's own temporary one), as tests/admin/test_dashboard.py does.
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        contexts = [chromium.new_context(viewport={"width": 1280, "height": 900}) for _ in range(pages)]
        for c in contexts:
            c.add_init_script(probe)
        tabs = [c.new_page() for c in contexts]
        for tab in tabs:  # all at once: each navigation is started before any is waited for
            tab.evaluate(f"location.href = {json.dumps(url + '/')}")
        usable, marks = [], []
        for tab in tabs:
            tab.wait_for_function("() => window.__usableAt !== undefined", timeout=120_000, polling=50)
            usable.append(round(tab.evaluate("window.__usableAt") / 1000, 3))
            got = tab.evaluate("window.__marks")
            marks.append({k: None if v is None else round(v / 1000, 3) for k, v in got.items()})
        rows = [tab.locator("#clients tbody tr[data-cid]").count() for tab in tabs]
        print(json.dumps({"usable_s": usable, "rows_in_page": rows, "marks_s": marks}), flush=True)
        sys.stdin.read()  # until the bench is done with us
        chromium.close()


#: Probes: clients that sign in one after another during the measurement and fall silent at once,
#: so that their timeouts sample the server's lateness all along, with the dashboards at work.
PROBES = 100


async def probe(port: int, n: int, every: float, tag: str, writers: list[asyncio.StreamWriter]) -> None:
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await r.readline()  # INFO
        w.write(b'HELLO {"id":"probe-%s-%d","heartbeat_interval":1.0}\n' % (tag.encode(), i))
        writers.append(w)  # and then silence: timed out 2 s later
        await asyncio.sleep(every)


def emulate(url: str, pages: int) -> None:
    """`--browser URL --emulate`: what `pages` dashboards ask of the server, without a browser (a
    control: on the bench's two shared cores a browser also takes CPU from the server): each opens
    the event stream and asks for its first 46 rows at once and then every second, as the page
    does at 1280x900."""
    idle_priority()
    window = url + "/api/clients?state=alive,suspect,dead,gone&sort=cid&order=asc&offset=0&limit=46"
    usable: list[float] = []
    lock = threading.Lock()

    def page() -> None:
        t0 = time.perf_counter()
        stream = urllib.request.urlopen(url + "/api/events/stream", timeout=60)
        while not stream.readline().startswith(b"data: "):
            pass
        threading.Thread(target=lambda: [None for _ in iter(stream.readline, b"")], daemon=True).start()
        with urllib.request.urlopen(window, timeout=30) as r:
            r.read()
        with lock:
            usable.append(round(time.perf_counter() - t0, 3))
        while True:
            time.sleep(1.0)
            with urllib.request.urlopen(window, timeout=30) as r:
                r.read()

    for _ in range(pages):
        threading.Thread(target=page, daemon=True).start()
    while len(usable) < pages:
        time.sleep(0.01)
    print(json.dumps({"usable_s": usable, "rows_in_page": [46] * pages, "emulated": True}), flush=True)
    sys.stdin.read()


def scale_run(n: int, dashboards: int, silent: int, settle: float, measure: float,
              emulated: bool = False) -> dict[str, Any]:
    """One fresh server with `n` clients beating every second and `dashboards` open."""
    srv = SpawnedServer(["--status-every", "0", "--admin", "127.0.0.1:0", "--heartbeat-interval", "1.0",
                         "--heartbeat-timeout", "2.0", "--min-heartbeat-interval", "0.1"])
    pages: subprocess.Popen[str] | None = None
    opened: dict[str, Any] = {}
    try:
        port = srv.wait_listening()
        url = admin_url(srv)

        def open_dashboards() -> None:
            nonlocal pages
            pages = subprocess.Popen([sys.executable, __file__, "--browser", url, "--pages", str(dashboards),
                                      "--expect", str(int(n * 0.99)), *(["--emulate"] if emulated else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert pages.stdout is not None
            line = pages.stdout.readline()
            opened.update(json.loads(line) if line else {"error": "the browser said nothing"})

        tag = f"{os.getpid()}-{dashboards}"
        probes: list[asyncio.StreamWriter] = []
        probe_events: list[dict[str, Any]] = []
        phases: set[str] = set()
        tasks: list[asyncio.Future[None]] = []

        def read_probes() -> None:
            with urllib.request.urlopen(url + "/api/events?limit=1000", timeout=30) as r:
                probe_events.extend(e for e in json.loads(r.read())["events"]
                                    if e["kind"] == "timeout" and e["name"].startswith(f"probe-{tag}-"))

        def progress(phase: str, done: int, total: int) -> None:
            first = phase not in phases
            phases.add(phase)
            # The clients are in: open the dashboards (in a thread: this is the generator's loop).
            if phase == "settling" and first and dashboards:
                threading.Thread(target=open_dashboards, daemon=True).start()
            # Probes fall silent one by one over the first 70 % of the measurement.
            if phase == "measuring" and first:
                tasks.append(asyncio.ensure_future(probe(port, PROBES, 0.7 * measure / PROBES, tag, probes)))
            # The measurement is over (the last probes have timed out): read their lateness
            # before the mass timeout of `silent` clients fills the ring of events.
            if phase == "waiting for timeouts" and first:
                threading.Thread(target=read_probes, daemon=True).start()

        res: HoldResult = asyncio.run(hold("127.0.0.1", port, n, 1.0, silent, server_pid=srv.pid, settle=settle,
                                           measure=measure + 3.0, progress=progress))
        with urllib.request.urlopen(url + "/api/server", timeout=30) as r:
            info = json.loads(r.read())
        probe_late = sorted(e["late_ms"] for e in probe_events)
    finally:
        if pages is not None:
            if pages.stdin is not None:
                pages.stdin.close()
            try:
                pages.wait(30)
            except subprocess.TimeoutExpired:
                pages.kill()
        srv.stop()
    def pct(xs: list[float], q: float) -> float | None:
        return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs)) - 1))] if xs else None

    return {"dashboards": dashboards, "held": res.connected, "cpu": res.server_cpu, "rss": res.server_rss,
            "rss_per_client": res.rss_per_client, "late": res.lateness_ms, "timed_out": res.timed_out,
            "false_timeouts": res.false_timeouts, "server_late": info["timeout_lateness"],
            "probes": {"count": len(probe_late), "p50_ms": pct(probe_late, 50), "p99_ms": pct(probe_late, 99),
                       "max_ms": probe_late[-1] if probe_late else None},
            "ticker_late_ms": res.ticker_late_ms, **opened}


def dashboards_at_scale(n: int, dashboards: int, rounds: int, silent: int, settle: float, measure: float,
                        emulated: bool = False) -> None:
    what = "emulated (their requests, no browser)" if emulated else "headless Chromium, 1280x900, SCHED_IDLE"
    print(f"\n{n:,} clients beating every 1 s, {PROBES} probes silent one by one while measuring, {silent} "
          f"silenced at once at the end; no dashboard vs {dashboards} open ({what}); {rounds} round(s), "
          "alternating\n")
    print("| round | dashboards | usable within (s) | rows in page | server CPU | RSS MiB | KiB/client "
          f"| probes' lateness p50 / p99 / max ms | {silent} at once: timed out | false "
          "| client-side p50 / p99 / max ms | server p50 / p99 / max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results: dict[int, list[dict[str, Any]]] = {0: [], dashboards: []}
    for r in range(rounds):
        for d in (0, dashboards):
            res = scale_run(n, d, silent, settle, measure, emulated)
            results[d].append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
            late, sl, pr = res["late"] or {}, res["server_late"] or {}, res["probes"]
            print(f"| {r + 1} | {d} | {', '.join(f'{u:.2f}' for u in res.get('usable_s', [])) or '-'} "
                  f"| {', '.join(map(str, res.get('rows_in_page', []))) or '-'} | {res['cpu']:.1%} "
                  f"| {res['rss'] / (1 << 20):.0f} | {res['rss_per_client'] / 1024:.2f} "
                  f"| {pr['p50_ms'] or 0:.1f} / {pr['p99_ms'] or 0:.1f} / {pr['max_ms'] or 0:.1f} ({pr['count']}) "
                  f"| {res['timed_out']} "
                  f"| {res['false_timeouts']} | {late.get('p50', 0):.1f} / {late.get('p99', 0):.1f} / "
                  f"{late.get('max', 0):.1f} | {sl.get('p50_ms') or 0:.1f} / {sl.get('p99_ms') or 0:.1f} / "
                  f"{sl.get('max_ms') or 0:.1f} |", flush=True)
    off, on = results[0], results[dashboards]
    # Paired by round (the two runs of a round are back to back): the machine's load drifts.
    cpu_diff = [b["cpu"] - a["cpu"] for a, b in zip(off, on, strict=True)]
    p99 = [(a["probes"]["p99_ms"] or 0, b["probes"]["p99_ms"] or 0) for a, b in zip(off, on, strict=True)]
    usable = [u for x in on for u in x.get("usable_s", [])]
    print(f"\nserver CPU with {dashboards} dashboards minus without, by round: "
          f"{', '.join(f'{d * 100:+.1f}' for d in cpu_diff)} points of a core (median "
          f"{statistics.median(cpu_diff) * 100:+.1f}); slowest page usable in "
          f"{max(usable) if usable else float('nan'):.2f} s; probes' timeout lateness p99 without / with, by round: "
          f"{', '.join(f'{a:.1f} / {b:.1f}' for a, b in p99)} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20000, help="messages per client")
    ap.add_argument("--size", type=int, default=64, help="payload bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=5000, help="idle clients for the request timings")
    ap.add_argument("--scale", type=int, default=0, help="part 3: clients beating every second (0: skip)")
    ap.add_argument("--dashboards", type=int, default=3, help="part 3: dashboards open")
    ap.add_argument("--scale-rounds", type=int, default=2)
    ap.add_argument("--silent", type=int, default=500, help="part 3: clients silenced at once at the end")
    ap.add_argument("--settle", type=float, default=15.0, help="part 3: seconds for the dashboards to open")
    ap.add_argument("--measure", type=float, default=10.0, help="part 3: seconds of CPU measured")
    ap.add_argument("--emulate", action="store_true",
                    help="part 3: emulate the dashboards' requests instead of running Chromium (a control)")
    ap.add_argument("--browser", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--pages", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.browser:
        if a.emulate:
            emulate(a.browser, a.pages)
        else:
            browser(a.browser, a.pages, a.expect)
        return
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(a.rounds):
        for mode in ("off", "on"):
            rate, scrapes = one(mode == "on", a.clients, a.messages, a.size)
            rates[mode].append(rate)
            extra = f"  ({len(scrapes)} scrapes of /metrics during the run)" if mode == "on" else ""
            print(f"round {r + 1}  admin {mode:<3}  {rate:>10,.0f} msg/s{extra}", flush=True)
    if a.rounds:
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        print(f"median: admin off {off:,.0f} msg/s, admin on and watched {on:,.0f} msg/s ({on / off:.0%})")
    if a.idle:
        requests_with_idle(a.idle)
    if a.scale:
        dashboards_at_scale(a.scale, a.dashboards, a.scale_rounds, a.silent, a.settle, a.measure, a.emulate)


if __name__ == "__main__":
    main()
