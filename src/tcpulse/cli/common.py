"""What every sub-command shares: one-line errors (a library error in the user's language), the
event loop runner, the language option."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import click

from tcpulse.cli.click_i18n import localize, use_click_catalog
from tcpulse.errors import ConfigError, TcpulseError
from tcpulse.i18n import _, set_language

__all__ = ["DEFAULT_PORT", "LANGUAGES", "error_text", "fail", "flag", "known_language", "lang_option", "loop_runner",
           "run_loop", "use_language"]

DEFAULT_PORT = 12345


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr, then exit.  For an exception, pass `error_text(e)`."""
    click.echo(f"tcpulse: error: {message}", err=True)
    sys.exit(code)


def error_text(e: BaseException) -> str:
    """What `e` says, in the language in force.  The library speaks English (`str(e)`); for a
    `TcpulseError` this translates its template and fills it with its params, a param that is
    itself an exception shown the same way, and a setting a `ConfigError` names shown as its flag
    (`heartbeat_timeout` -> `--heartbeat-timeout`).  Any other exception: `str(e)`."""
    if not isinstance(e, TcpulseError):
        return str(e)
    params = {k: error_text(v) if isinstance(v, BaseException) else v for k, v in e.params.items()}
    if isinstance(e, ConfigError):
        params.update({k: flag(field) for k, field in e.names.items()})
    return _(e.template).format(**params)


def flag(field: str) -> str:
    """The command-line flag of a setting: `ServerConfig.max_write_buffer` -> `--max-write-buffer`."""
    return "--" + field.replace("_", "-")


def loop_runner(loop_kind: str = "auto") -> tuple[Callable[[Coroutine[Any, Any, Any]], Any], str]:
    """The function that runs a coroutine on the chosen event loop, and the loop's name:
    uvloop when it is installed (and `loop_kind` allows), asyncio otherwise."""
    if loop_kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop_kind == "uvloop":
                fail(_("--loop uvloop: uvloop is not installed; pip install 'tcpulse[fast]' or use --loop asyncio"))
        else:
            return uvloop.run, "uvloop"
    return asyncio.run, "asyncio"


def run_loop(coro: Callable[[], Coroutine[Any, Any, int]], loop_kind: str = "auto") -> int:
    """Run `coro()` on asyncio, or on uvloop when it is installed (and `loop_kind` allows)."""
    runner, _name = loop_runner(loop_kind)
    return int(runner(coro()))


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise click.BadParameter(f"must be greater than 0 (got {value})")
    return value


def use_language(lang: str | None, root: click.Command) -> str:
    """Choose the language of everything the command line prints (None: from the locale)."""
    code = set_language(lang)
    use_click_catalog()
    localize(root)
    return code


#: The languages of the output: English (the source) and the catalogs under i18n/locale.
LANGUAGES = ("en", "zh")


def known_language(lang: str) -> bool:
    """`en`, `zh`, `zh_CN.UTF-8`, `auto` (from the locale), ...: whether --lang may be `lang`."""
    return lang == "auto" or lang.split(".")[0].split("_")[0].lower() in LANGUAGES


def _lang_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        if not known_language(value):
            problem = _("unknown language; choose one of: {known}").format(known=", ".join(LANGUAGES))
            if ctx.get_parameter_source(str(param.name)) is click.core.ParameterSource.COMMANDLINE:
                fail(f"--lang {value}: {problem}", 2)
            # From TCPULSE_LANG or a config file: the group's handler names which (cli/config.py).
            raise click.BadParameter(problem, ctx=ctx, param=param)
        use_language(value, ctx.find_root().command)
    return value


# Eager, so that it is in force before --help and before any other option's error: `tcpulse serve
# --lang zh --help` and `tcpulse serve --lang zh --port x` answer in Chinese.
lang_option = click.option("--lang", default=None, metavar="en|zh", is_eager=True, callback=_lang_callback,
                           help="Language of the output (default: from LANG; English otherwise).")
