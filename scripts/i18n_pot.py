"""Write the template of every string tcpulse shows, for scripts/i18n.sh: what the code passes to
`_()`, the library's error templates (marked `N_()`, translated by the command line when it shows
them), the help texts of the command line, and click's own words (usage lines, errors)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import click
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from tcpulse.cli.click_i18n import help_texts
from tcpulse.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
#: Words click translates through a variable (click 8.2+: `_(extra["required"])`), out of the
#: extractor's sight: without this, an update of the catalog would drop their translations.
CLICK_UNSEEN = ("required",)


def extract(source: Path, *keywords: str) -> Catalog:
    with tempfile.NamedTemporaryFile(suffix=".pot") as pot:
        args = [sys.executable, "-m", "babel.messages.frontend", "extract", "--no-location", "-w", "100",
                "-o", pot.name]
        for k in keywords:
            args += ["-k", k]
        subprocess.run([*args, str(source)], check=True, capture_output=True)
        with open(pot.name, "rb") as f:
            return read_po(f)


def main_() -> None:
    out = extract(ROOT / "src" / "tcpulse", "_", "N_", "ngettext:1,2")
    for text in help_texts(main):
        out.add(text, auto_comments=["command-line help"])
    for m in extract(Path(click.__file__).parent, "_", "ngettext:1,2"):
        if m.id and m.id not in out:
            out.add(m.id, auto_comments=["click (usage lines and errors)"])
    for word in CLICK_UNSEEN:
        if word not in out:
            out.add(word, auto_comments=["click (usage lines and errors)"])
    with open(sys.argv[1], "wb") as f:
        write_po(f, out, width=100, omit_header=False)


if __name__ == "__main__":
    main_()
