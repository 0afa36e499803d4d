"""How the tcpulse library fails: a stable `kind` for programs, English text for people and logs,
and what an edge needs to say the same in another language.

    try:
        await store.open()
    except TcpulseError as e:
        e.kind       # "in-use": stable, the same in every language
        str(e)       # "tcpulse.db is in use by another tcpulse server: stop it or choose another --db"
        e.template   # "{path} is in use by another tcpulse server: ..." (English, the catalog's msgid)
        e.params     # {"path": "tcpulse.db"}

The library never translates.  An edge that speaks another language (the command line) looks
`template` up in its catalog and formats it with `params`, translating a param that is itself a
`TcpulseError` the same way (`tcpulse.cli.common.error_text`).  `N_()` marks each template for the
catalog where it is written.

Imports nothing of tcpulse: every layer above the sans-I/O core may import it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["N_", "ConfigError", "TcpulseError"]


def N_(message: str) -> str:
    """Mark `message` for the translation catalog and return it unchanged (gettext's deferred
    translation): scripts/i18n_pot.py extracts it, the edge translates it when it shows it."""
    return message


class TcpulseError(Exception):
    """A failure of the tcpulse library.

    `kind`: what failed, a short stable string for programs ("refused", "in-use", ...; each
    subclass lists its own).  `template`: the English text with `{named}` fields, marked with
    `N_()`.  `params`: the values of those fields.  `str(e)` is the English text.
    """

    kind: str
    template: str
    params: dict[str, Any]

    def __init__(self, kind: str, template: str, /, **params: Any) -> None:
        self.kind = kind
        self.template = template
        self.params = params
        super().__init__(template.format(**params))

    def __str__(self) -> str:
        return self.template.format(**self.params)


class ConfigError(TcpulseError, ValueError):
    """A setting that cannot work (a `ServerConfig` field, say), named in the text as a setting.

    `names` maps the placeholders of `template` that stand for a setting to that setting's name:
    in English (`str(e)`) each reads as the name (`heartbeat_timeout must be longer than
    heartbeat_interval`); an edge shows it its own way (the command line: `--heartbeat-timeout`).
    `field` is the setting to change; `fields` every setting the text names, in the order given.
    """

    def __init__(self, kind: str, template: str, /, names: dict[str, str], **params: Any) -> None:
        if not names:
            raise TypeError("a ConfigError names at least one setting")
        self.names = dict(names)
        self.fields = tuple(names.values())
        self.field = self.fields[0]
        super().__init__(kind, template, **names, **params)
