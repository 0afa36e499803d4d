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
