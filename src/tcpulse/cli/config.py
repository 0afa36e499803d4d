"""Settings from a file and from the environment, for any command (`serve` and `connect`).

`configurable(command, section)` gives a click command, without touching its own code:

- `--config FILE` (or `TCPULSE_CONFIG`): a TOML file (read with `tomllib`) whose keys are the
  command's long flags without the dashes (`heartbeat_interval` or `heartbeat-interval`), at the
  top level or under a table named after the command (`[serve]`, `[connect]`), so that one file
  can hold both;
- `TCPULSE_<FLAG>` for every option (`TCPULSE_PORT`, `TCPULSE_HEARTBEAT_INTERVAL`, ...);
- `--print-config`: print the settings in force, each with where it came from, as TOML that can be
  used as the file.

Precedence is click's own: a flag beats the environment, which beats the file (click's
`default_map`), which beats the default; `Context.get_parameter_source()` says which one won.
A bad value from the file or the environment is one line naming the file or the variable, the
key, the value and what is allowed (`bad_setting_line`, called by the group for the errors click
raises, and by the file reader for the types it checks itself).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import tomllib
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from tcpulse.cli.common import fail
from tcpulse.i18n import _

__all__ = ["CONFIG_ENV", "SECRET_KEYS", "bad_setting_line", "configurable", "env_name", "key_of", "where"]

#: The environment variable that names the config file (as --config does).
CONFIG_ENV = "TCPULSE_CONFIG"
#: Settings --print-config never shows: tokens and secrets.
SECRET_KEYS = frozenset({"admin_token", "token", "webhook_secret"})
#: Parameters that are not settings.
_NOT_SETTINGS = frozenset({"help", "config", "print_config", "version"})
_META_FILE = "tcpulse.config.file"
_META_PRINT = "tcpulse.config.print"


def key_of(param: click.Parameter) -> str:
    """The setting's key: the first long flag without its dashes, `-` as `_` (`--loop` -> `loop`,
    `--id` -> `id`); an argument's name."""
    if isinstance(param, click.Option):
        longs = [o for o in param.opts if o.startswith("--")]
        if longs:
            return longs[0][2:].replace("-", "_")
    return str(param.name)


def env_name(param: click.Parameter) -> str:
    """`TCPULSE_<KEY>`: the environment variable of a setting (an option's own `envvar` if it has one)."""
    if isinstance(param.envvar, str):
        return param.envvar
    return "TCPULSE_" + key_of(param).upper()


def _settings(cmd: click.Command) -> list[click.Parameter]:
    # A hidden option is internal (serve --worker, given by the workers' supervisor): no setting.
    return [p for p in cmd.params if p.name not in _NOT_SETTINGS and p.expose_value
            and not getattr(p, "hidden", False)]


def describe(param: click.Parameter) -> str:
    """What a setting accepts, for people: `an integer from 0 to 65535`, `true or false`, ..."""
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        one = _("true or false")
    elif isinstance(t, click.Choice):
        one = _("one of {choices}").format(choices=", ".join(map(str, t.choices)))
    elif isinstance(t, (click.IntRange, click.FloatRange)):
        integer = isinstance(t, click.IntRange)
        if t.min is not None and t.max is not None and not (t.min_open or t.max_open):
            one = (_("an integer from {lo} to {hi}") if integer else _("a number from {lo} to {hi}")).format(
                lo=f"{t.min:g}", hi=f"{t.max:g}")
        else:
            kind = _("an integer") if integer else _("a number")
            lo = "" if t.min is None else ("> " if t.min_open else ">= ") + f"{t.min:g}"
            hi = "" if t.max is None else ("< " if t.max_open else "<= ") + f"{t.max:g}"
            one = " ".join(x for x in (kind, lo, hi) if x)
    elif t is click.INT:
        one = _("an integer")
    elif t is click.FLOAT:
        one = _("a number")
    else:
        one = _("a string")
    return _("a list of {one}").format(one=one) if param.multiple else one


def _toml_type_ok(param: click.Parameter, value: Any) -> bool:
    """Whether a value read from TOML has the type the setting wants (click converts it later,
    and checks ranges and choices)."""
    if param.multiple:
        return isinstance(value, list) and all(_toml_type_ok_one(param, v) for v in value)
    return _toml_type_ok_one(param, value)


def _toml_type_ok_one(param: click.Parameter, value: Any) -> bool:
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return isinstance(value, bool)
    if isinstance(t, click.IntRange) or t is click.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(t, click.FloatRange) or t is click.FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _show(value: Any) -> str:
    """A value as TOML writes it (strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def where(ctx: click.Context, param: click.Parameter) -> str | None:
    """Where the value of `param` came from, for an error line: `tcpulse.toml: port = 70000`,
    `TCPULSE_PORT=70000`; None when it came from the command line or the default."""
    source = ctx.get_parameter_source(str(param.name))
    if source is ParameterSource.ENVIRONMENT:
        var = env_name(param)
        return f"{var}={os.environ.get(var, '')}"
    if source is ParameterSource.DEFAULT_MAP:
        file = ctx.meta.get(_META_FILE, "?")
        raw = (ctx.default_map or {}).get(str(param.name))
        return f"{file}: {key_of(param)} = {_show(raw)}"
    return None


def bad_setting_line(e: click.BadParameter) -> str | None:
    """One line for a bad value that came from the config file or the environment (None for a
    value from the command line: click's usage error says it there)."""
    ctx, param = e.ctx, e.param
    if ctx is None or param is None:
        return None
    place = where(ctx, param)
    if place is None:
        return None
    problem = e.message.split("\n")[0].split(". ")[0].rstrip(".")
    if param.type is click.STRING:  # a free string: the problem says what is wanted
        return f"{place}: {problem}"
    return _("{where}: {problem} (allowed: {allowed})").format(where=place, problem=problem, allowed=describe(param))


# ------------------------------------------------------------------------------ the file


def read_config(path: str, section: str, cmd: click.Command) -> dict[str, Any]:
    """The settings of `path` for the command `section`, as click's `default_map` (parameter
    name -> value).  Every problem ends the program with one line."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        fail(_("--config {path}: no such file").format(path=path), 2)
    except IsADirectoryError:
        fail(_("--config {path}: is a directory, not a TOML file").format(path=path), 2)
    except OSError as e:
        fail(_("--config {path}: cannot read it: {error}").format(path=path, error=e.strerror or e), 2)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        fail(_("{path} is not valid TOML: {error}").format(path=path, error=e), 2)
    by_key: dict[str, click.Parameter] = {key_of(p): p for p in _settings(cmd)}
    items = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    own = data.get(section)
    if isinstance(own, dict):
        items += list(own.items())
    out: dict[str, Any] = {}
    for raw_key, value in items:
        k = raw_key.replace("-", "_")
        param = by_key.get(k)
        if param is None:
            near = difflib.get_close_matches(k, list(by_key), n=1)
            hint = _(" (did you mean {key}?)").format(key=near[0]) if near else ""
            fail(_("{path}: unknown key {key} for tcpulse {command}{hint}; the keys are the long flags of "
                   "'tcpulse {command} --help' without the dashes").format(
                path=path, key=raw_key, command=section, hint=hint), 2)
        if not _toml_type_ok(param, value):
            fail(_("{path}: {key} = {value}: expected {allowed}").format(
                path=path, key=raw_key, value=_show(value), allowed=describe(param)), 2)
        out[str(param.name)] = tuple(value) if param.multiple else value
    return out


def _config_callback(section: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    def load(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            assert ctx.command is not None
            ctx.default_map = {**(ctx.default_map or {}), **read_config(value, section, ctx.command)}
            ctx.meta[_META_FILE] = value
        return value
    return load


def _print_callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[_META_PRINT] = bool(value)
    return value


# ------------------------------------------------------------------------------ --print-config


def print_config(ctx: click.Context, section: str) -> None:
    """Print every setting in force as TOML, each with where it came from."""
    lines = [_("# tcpulse {command}: the settings in force, and where each comes from").format(command=section),
             _("# (a flag beats the environment, which beats the config file, which beats the default)"),
             f"[{section}]"]
    rows: list[tuple[str, str]] = []
    for p in _settings(ctx.command):
        name = str(p.name)
        value = ctx.params.get(name)
        source = ctx.get_parameter_source(name)
        if source is ParameterSource.COMMANDLINE:
            origin = _("flag")
        elif source is ParameterSource.ENVIRONMENT:
            origin = _("environment {var}").format(var=env_name(p))
        elif source is ParameterSource.DEFAULT_MAP:
            origin = _("file {path}").format(path=ctx.meta.get(_META_FILE, "?"))
        else:
            origin = _("default")
        k = key_of(p)
        if k in SECRET_KEYS and value:
            setting = "# " + _("{key} = (hidden)").format(key=k)
        elif value is None or (p.multiple and not value):
            setting = "# " + _("{key} = (not set)").format(key=k)
        else:
            setting = f"{k} = {_show(value)}"
        rows.append((setting, origin))
    width = max(len(s) for s, _o in rows)
    lines += [f"{s:<{width}}  # {o}" for s, o in rows]
    click.echo("\n".join(lines))


# ------------------------------------------------------------------------------ the decorator


def configurable(cmd: click.Command, section: str | None = None) -> click.Command:
    """Give `cmd` a config file, `TCPULSE_<FLAG>` variables and `--print-config` (module docstring).
    `section`: the file's table for this command (default: its name).  Returns `cmd`."""
    section = section or str(cmd.name)
    for p in _settings(cmd):
        if not p.envvar:
            p.envvar = env_name(p)
    cmd.params.insert(0, click.Option(
        ["--config"], metavar="FILE", envvar=CONFIG_ENV, is_eager=True, expose_value=False,
        callback=_config_callback(section),
        help=f"TOML file of settings: the long flags without the dashes, at the top or under [{section}] "
             "(env TCPULSE_CONFIG). Every flag also reads TCPULSE_<FLAG>; a flag beats the environment, "
             "which beats the file."))
    cmd.params.append(click.Option(
        ["--print-config"], is_flag=True, expose_value=False, callback=_print_callback,
        help="Print the settings in force, and where each came from (flag, environment, file, default), "
             "as TOML; then exit."))
    run = cmd.callback
    if run is not None:
        @functools.wraps(run)
        def callback(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            if ctx.meta.get(_META_PRINT):
                print_config(ctx, section)
                return None
            return run(*args, **kwargs)
        cmd.callback = callback
    return cmd
