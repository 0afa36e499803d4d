"""The command line in the chosen language: our `--help` texts and click's own words.

Click marks its own text (usage lines, "Invalid value for ...", "[default: ...]") for gettext,
through the functions `gettext.gettext` / `gettext.ngettext` that each of its modules imports;
`use_click_catalog()` points those at tcpulse's catalog, which carries their translations.  The
help texts of our commands and options are fixed when the commands are built, so `localize()`
keeps each one's English source and sets its text in the language in force, and does the same for
the `--help` option click builds once per command (through `Command.get_help_option()`, public);
`help_texts()` lists our sources for the catalog (scripts/i18n.sh).
"""

from __future__ import annotations

import gettext
import importlib
import inspect
from collections.abc import Iterator

import click

from tcpulse.i18n import _, ngettext

__all__ = ["CLICK_HELP_TEXT", "help_texts", "localize", "use_click_catalog"]

_CLICK_MODULES = ("core", "decorators", "exceptions", "formatting", "parser", "shell_completion",
                  "termui", "types", "utils", "_termui_impl")
_SOURCE = "_tcpulse_help_source"
#: The text click gives its --help option (click.decorators.help_option); its translations are
#: in the catalog with click's other strings.
CLICK_HELP_TEXT = "Show this message and exit."


def use_click_catalog() -> None:
    """Make click's own text go through tcpulse's catalog (idempotent)."""
    for name in _CLICK_MODULES:
        try:
            mod = importlib.import_module(f"click.{name}")
        except ImportError:
            continue
        if getattr(mod, "_", None) is gettext.gettext:
            mod._ = _  # type: ignore[attr-defined]
        if getattr(mod, "ngettext", None) is gettext.ngettext:
            mod.ngettext = ngettext  # type: ignore[attr-defined]


def _commands(root: click.Command) -> Iterator[click.Command]:
    yield root
    if isinstance(root, click.Group):
        for name in sorted(root.commands):
            yield from _commands(root.commands[name])


def _texts(root: click.Command) -> Iterator[tuple[object, str, str]]:
    """(object, attribute, English source) for every help text under `root`."""
    for cmd in _commands(root):
        for obj, attr in [(cmd, "help"), (cmd, "short_help"), (cmd, "epilog")] + [
                (p, "help") for p in cmd.params if isinstance(p, click.Option)]:
            sources = obj.__dict__.setdefault(_SOURCE, {})
            if attr not in sources:
                text = getattr(obj, attr, None)
                sources[attr] = inspect.cleandoc(text) if text else None
            if sources[attr]:
                yield obj, attr, sources[attr]


def help_texts(root: click.Command) -> list[str]:
    """The English help texts of `root` and every command and option under it."""
    return sorted({src for _obj, _attr, src in _texts(root)})


def _contexts(cmd: click.Command, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """Every command under `cmd` with a context like the one click makes for it when it runs
    (the parent's help option names, the command's own context settings)."""
    yield cmd, ctx
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            sub = cmd.commands[name]
            yield from _contexts(sub, click.Context(sub, parent=ctx, info_name=name, **sub.context_settings))


def localize(root: click.Command) -> None:
    """Set every help text under `root` in the language in force."""
    for obj, attr, src in _texts(root):
        setattr(obj, attr, _(src))
    # Click builds each command's --help option once, with its text in the language of that
    # moment, and keeps it; `get_help_option()` hands out that option, whose text is set here.
    top = click.Context(root, info_name=root.name, **root.context_settings)
    for cmd, ctx in _contexts(root, top):
        option = cmd.get_help_option(ctx)
        if option is not None:
            option.help = _(CLICK_HELP_TEXT)
