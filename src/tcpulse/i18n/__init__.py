"""Translations of user-facing text (gettext).  English is the source language and the default.

`set_language("zh")` (or a `zh_*` locale in LANG / LC_ALL / LC_MESSAGES) switches every string
that goes through `_()` to the catalog compiled into the package (`locale/<lang>/LC_MESSAGES`);
`display` formats timestamps and escapes what clients sent, for people to read.

Used only by the edges (`cli`, `admin`, `bench`): the library below them speaks English and codes
(`tcpulse.errors`), and the command line translates its errors when it shows them.
May import nothing of tcpulse.
"""

from __future__ import annotations

import gettext
import os
from pathlib import Path

__all__ = ["_", "current_language", "ngettext", "set_language"]

_LOCALE_DIR = Path(__file__).with_name("locale")
_translation: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def _from_env() -> str | None:
    for var in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE"):
        v = os.environ.get(var)
        if v:
            return v
    return None


def set_language(lang: str | None) -> str:
    """Use `lang` ("en", "zh", "zh_CN.UTF-8", ...; None: from the environment).  Returns the
    language in force; an unknown language falls back to English."""
    global _translation, _language
    if lang is None or lang == "auto":
        lang = _from_env() or "en"
    code = lang.split(".")[0].split("_")[0].lower()
    if code == "zh":
        _translation = gettext.translation("tcpulse", localedir=_LOCALE_DIR, languages=["zh"], fallback=True)
        _language = "zh" if type(_translation) is not gettext.NullTranslations else "en"
    else:
        _translation = gettext.NullTranslations()
        _language = "en"
    return _language


def current_language() -> str:
    return _language


def _(message: str) -> str:
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translation.ngettext(singular, plural, n)
