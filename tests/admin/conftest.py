"""What the admin tests share: `admin_for(server, **kw)` starts an `Admin` on a free loopback
port and closes every one it started at the end of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tcpulse.admin.app import Admin


@pytest.fixture
async def admin_for() -> AsyncIterator[Any]:
    admins: list[Admin] = []

    async def make(server: Any, **kw: Any) -> Admin:
        a = Admin(server, "127.0.0.1", 0, **kw)
        await a.start()
        admins.append(a)
        return a

    yield make
    for a in admins:
        await a.close()
