"""Build hook: compile the gettext catalogs (`.po` -> `.mo`) on every build and install.

Everything else about the package is in pyproject.toml.  The `.mo` files are not kept in git; this
hook writes them next to their `.po` sources before the package's files are collected, so a wheel,
an sdist install and an editable install (`pip install -e .`) all get them with no manual step.
Babel is a build requirement (pyproject.toml, [build-system]).
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

LOCALE = Path(__file__).resolve().parent / "src" / "tcpulse" / "i18n" / "locale"


def compile_catalogs(locale_dir: Path = LOCALE) -> list[Path]:
    """Compile every `<lang>/LC_MESSAGES/*.po` under `locale_dir`; return the `.mo` files written."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    for po in sorted(locale_dir.glob("*/LC_MESSAGES/*.po")):
        with po.open("rb") as f:
            catalog = read_po(f, locale=po.parent.parent.name)
        mo = po.with_suffix(".mo")
        with mo.open("wb") as f:
            write_mo(f, catalog, use_fuzzy=False)
        written.append(mo)
    return written


class BuildPyWithCatalogs(build_py):
    def run(self) -> None:
        compile_catalogs()
        # The list of package data may have been gathered before the .mo files existed.
        self.__dict__.pop("data_files", None)
        super().run()


setup(cmdclass={"build_py": BuildPyWithCatalogs})
