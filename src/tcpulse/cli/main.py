"""The `tcpulse` command group: every sub-command lives in a module of its own and is added here.

Every failure a user can cause (a port in use, a refused connection, a bad flag) ends in one line
naming the problem and the fix, and a non-zero exit; never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from tcpulse.cli.bench import bench
from tcpulse.cli.common import lang_option, use_language
from tcpulse.cli.connect import connect
from tcpulse.cli.history import history, messages
from tcpulse.cli.serve import serve
from tcpulse.cli.status import status
from tcpulse.cli.token import token
from tcpulse.version import __version__

__all__ = ["main"]


class _Main(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        use_language(None, self)  # from the locale, before any help or error is printed
        return super().main(*args, **kwargs)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tcpulse")
@lang_option
def main(lang: str | None) -> None:
    """tcpulse: TCP messaging with heartbeat-based liveness detection."""


for _command in (serve, connect, token, history, messages, status, bench):
    main.add_command(_command)
