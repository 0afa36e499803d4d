"""One owner check for an outbox (`Outbox.check_owner`), used by `Client` and `tcpulse connect`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpulse.client.client import Client
from tcpulse.client.outbox import MemoryOutbox, OutboxError, OutboxOwnerError, SQLiteOutbox


def test_an_outbox_refuses_another_id() -> None:
    box = MemoryOutbox()
    box.check_owner("anyone")  # no owner yet
    box.check_owner(None)
    box.bind("sensor-7")
    box.check_owner("sensor-7")
    box.check_owner(None)  # no id chosen: the owner's will be used
    with pytest.raises(OutboxOwnerError) as info:
        box.check_owner("sensor-8")
    assert (info.value.owner, info.value.wanted) == ("sensor-7", "sensor-8")
    assert isinstance(info.value, OutboxError) and isinstance(info.value, ValueError)


def test_the_owner_is_kept_in_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "c.outbox")
    box = SQLiteOutbox(path)
    box.bind("boxed")
    box.close()
    box = SQLiteOutbox(path)
    try:
        with pytest.raises(OutboxOwnerError, match="belongs to client id 'boxed', not 'other'"):
            box.check_owner("other")
        box.check_owner("boxed")
    finally:
        box.close()


async def test_client_refuses_an_outbox_of_another_id() -> None:
    box = MemoryOutbox()
    box.bind("boxed")
    # A ValueError, as before the check moved into the outbox.
    with pytest.raises(ValueError, match="the outbox belongs to client id 'boxed', not 'other': "
                                         "its session is numbered for that id"):
        Client(id="other", outbox=box)
    assert Client(outbox=box).id == "boxed"
    assert Client(id="boxed", outbox=box).id == "boxed"


def test_an_outbox_is_private_and_never_opened_through_a_link(tmp_path: Path) -> None:
    """The outbox holds what the program sends: its files are 0600 whatever the umask, and a
    symbolic link planted where it goes is refused, not followed."""
    import os
    path = tmp_path / "c.outbox"
    old = os.umask(0o022)
    try:
        box = SQLiteOutbox(str(path))
        box.bind("private")
        box.close()
    finally:
        os.umask(old)
    made = [p for p in tmp_path.iterdir() if p.name.startswith("c.outbox")]
    assert path in made and tmp_path / "c.outbox.lock" in made
    for p in made:
        assert p.stat().st_mode & 0o777 == 0o600, (p.name, oct(p.stat().st_mode))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "link.outbox").symlink_to(target)
    with pytest.raises(OutboxError, match="cannot open outbox"):
        SQLiteOutbox(str(tmp_path / "link.outbox"))
    assert target.read_bytes() == b""
