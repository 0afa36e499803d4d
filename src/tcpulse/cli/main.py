"""The `tcpulse` command group: every sub-command lives in a module of its own and is added here.

Every failure a user can cause (a port in use, a refused connection, a bad flag) ends in one line
naming the problem and the fix, and a non-zero exit; never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from tcpulse.cli.bench import bench
from tcpulse.cli.common import fail, lang_option, use_language
from tcpulse.cli.config import bad_setting_line, configurable
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

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.BadParameter as e:
            # A bad value from a config file or TCPULSE_* is one line naming where it came from;
            # one from the command line gets click's usage error, as before.
            line = bad_setting_line(e)
            if line is None:
                raise
            fail(line, 2)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tcpulse")
@lang_option
def main(lang: str | None) -> None:
    """tcpulse: TCP messaging with heartbeat-based liveness detection."""


# serve and connect read settings from --config FILE and TCPULSE_<FLAG> too (cli/config.py).
for _command in (configurable(serve), configurable(connect), token, history, messages, status, bench):
    main.add_command(_command)
