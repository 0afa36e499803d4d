"""Output that never blocks the event loop: log lines go to a bounded buffer that a thread writes.

A terminal paused with Ctrl-S, a slow `| grep` or a stuck log shipper stops reading the server's
stdout; a `write()` on the loop would then block the loop, and with it every PONG and every
deadline (STYLE.md, "Flow control").  `LineSink` keeps the loop out of it:

- the loop appends lines to a list; the first line of a loop iteration schedules one hand-over
  at the end of that iteration, so lines go out in batches (one write per iteration, not one
  write and flush per line), and a terminal still sees each line at once;
- a thread of its own writes each batch to the file descriptor with blocking writes;
- the bytes handed over and not yet written are bounded (`max_bytes`): past the bound, lines
  are dropped and counted, never queued.  Once the thread has caught up, the next batch starts
  with a notice of how many lines were dropped and for how long the output was not read
  (`notice`), and `dropped` keeps the total for metrics.

Overflow policy: drop the newest lines (what the reader has not taken yet stays in order).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

__all__ = ["DEFAULT_MAX_BYTES", "HANDOVER_BYTES", "LineSink"]

#: Bytes of log lines held for a reader that does not keep up: a tenth of a second of the
#: fastest message log, a few seconds of a busy one, and nothing a server would miss in memory.
DEFAULT_MAX_BYTES = 16 << 20
#: The most text one loop iteration gathers before it is handed to the writer: a flood of
#: messages must not build one huge string per iteration.
HANDOVER_BYTES = 256 << 10


class LineSink:
    """Write text lines to `stream` without blocking the event loop (see the module docstring).

    `stream` with a real file descriptor (stdout, a file, a pipe) is written by the thread; any
    other stream (a `StringIO` in a test) is written at once.  `notice(lines, seconds)` makes the
    line that reports a drop.  Call `close()` before the process exits: it waits (up to a
    timeout) for what is queued to be written.
    """

    def __init__(self, stream: IO[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 notice: Callable[[int, float], str] | None = None) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self._notice = notice
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        else:
            stream.flush()  # what was printed before goes out before our lines
        #: Lines dropped so far (the total, for metrics) and not yet reported in the output.
        self.dropped = 0
        self._unreported = 0
        self._dropped_since = 0.0
        # Lines of the current loop iteration; a hand-over is scheduled when this is non-empty.
        self._lines: list[str | bytes] = []
        self._gathered = 0  # characters in _lines
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Hand-over to the writer thread: bytes handed over and written, each counted by one
        # side only, so that neither needs a lock to read the other's progress.
        self._chunks: deque[bytes] = deque()
        self._handed = 0
        self._written = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: OSError | None = None

    @property
    def pending(self) -> int:
        """Bytes handed to the writer and not written yet."""
        return self._handed - self._written

    def would_drop(self, size: int) -> bool:
        """True when `size` more bytes would not fit now: the caller may skip making the text
        and count the lines with `drop()` instead (a flood of messages costs nothing then)."""
        return self._fd is not None and self.pending + self._gathered + size > self.max_bytes

    def drop(self, lines: int) -> None:
        """Count `lines` as dropped (reported once output flows again)."""
        if not self._unreported:
            self._dropped_since = time.monotonic()
        self._unreported += lines
        self.dropped += lines

    def write(self, text: str | bytes, lines: int = 0) -> None:
        """Queue `text` (one or more whole lines; bytes are taken as already encoded, `lines` of
        them if given).  Never blocks; past the bound it is dropped and its lines counted (see
        the module docstring)."""
        if self._fd is None:
            self.stream.write(text if isinstance(text, str) else text.decode(self.encoding, "replace"))
            self.stream.flush()
            return
        n = len(text)
        if self.pending + self._gathered + n > self.max_bytes:
            self.drop(lines or (text.count("\n") if isinstance(text, str) else text.count(b"\n")) or 1)
            return
        self._lines.append(text)
        self._gathered += n
        if self._gathered >= HANDOVER_BYTES:
            self._hand_over()  # a big iteration: do not build one huge string of it
            return
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                try:
                    loop = self._loop = asyncio.get_running_loop()
                except RuntimeError:  # outside a loop (start-up, shutdown): hand over now
                    self._hand_over()
                    return
            loop.call_soon(self._hand_over)

    def flush(self) -> None:
        """Hand over what is queued now (the loop does it by itself once per iteration)."""
        if self._lines:
            self._hand_over()

    def _hand_over(self) -> None:
        self._scheduled = False
        lines = self._lines
        if not lines:
            return
        self._lines = []
        self._gathered = 0
        if self._unreported and self._notice is not None and self.pending == 0:
            # The reader has caught up with everything before the drop: say what was lost.
            lines.insert(0, self._notice(self._unreported, time.monotonic() - self._dropped_since))
            self._unreported = 0
        enc = self.encoding
        self._push(b"".join(x if isinstance(x, bytes) else x.encode(enc, "replace") for x in lines))

    def _push(self, data: bytes) -> None:
        self._chunks.append(data)
        self._handed += len(data)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tcpulse-output", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        # Everything queued goes out in one writev() where it can: each time this thread takes
        # the GIL back costs it up to the interpreter's switch interval beside a busy loop, so
        # the fewer calls, the more a second this thread writes.
        fd = self._fd
        assert fd is not None
        chunks = self._chunks
        while True:
            self._wake.wait()
            self._wake.clear()
            while chunks:
                batch: list[bytes] = []
                size = 0
                while chunks and len(batch) < 64:
                    data = chunks.popleft()
                    batch.append(data)
                    size += len(data)
                views = [memoryview(b) for b in batch]
                while views:
                    try:
                        n = os.writev(fd, views)
                    except BlockingIOError:  # a non-blocking descriptor someone else set up
                        time.sleep(0.01)
                        continue
                    except OSError as e:  # the reader is gone (EPIPE): nothing more can be shown
                        self.error = e
                        break
                    while views and n >= len(views[0]):
                        n -= len(views[0])
                        views.pop(0)
                    if views and n:
                        views[0] = views[0][n:]
                self._written += size

    def close(self, timeout: float = 2.0) -> bool:
        """Hand over the last lines and wait up to `timeout` seconds for them to be written;
        False if the reader did not take them in time (they are then lost)."""
        self.flush()
        if self._unreported and self._notice is not None:
            # Say it now, even if the reader has not caught up: this is the last chance.
            line = self._notice(self._unreported, time.monotonic() - self._dropped_since)
            self._unreported = 0
            if self._fd is None:
                self.stream.write(line)
            else:
                self._push(line.encode(self.encoding, "replace"))
        end = time.monotonic() + timeout
        while self.pending and time.monotonic() < end:
            time.sleep(0.005)
        return not self.pending
