#!/usr/bin/env bash
# Keep the Chinese catalog in step with the code (docs/admin-api.md, "Languages").
#   scripts/i18n.sh update   extract every string shown (scripts/i18n_pot.py) and merge the new ones into
#                            src/tcpulse/i18n/locale/zh/LC_MESSAGES/tcpulse.po (with an empty msgstr to fill in)
#   scripts/i18n.sh check    list the strings that have no translation yet (exit 1 if any)
#   scripts/i18n.sh compile  write the .mo next to the .po (every build and install does this by itself)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PO=src/tcpulse/i18n/locale/zh/LC_MESSAGES/tcpulse.po
POT=$(mktemp --suffix=.pot)
trap 'rm -f "$POT"' EXIT
# Every string shown: the code's _(), N_() and ngettext(), the command line's help texts, click's own words.
extract() { "$PY" scripts/i18n_pot.py "$POT"; }
case "${1:-check}" in
  update)
    extract
    .venv/bin/pybabel update -i "$POT" -o "$PO" -l zh -D tcpulse -w 100 --no-fuzzy-matching --ignore-obsolete \
      --ignore-pot-creation-date
    ;;
  check)
    extract
    "$PY" - "$POT" "$PO" <<'PYEOF'
import sys
from babel.messages.pofile import read_po
pot = read_po(open(sys.argv[1], "rb"))
po = {m.id: m.string for m in read_po(open(sys.argv[2], "rb"))}
missing = [m.id for m in pot if m.id and not po.get(m.id)]
for mid in missing:
    print(f"untranslated: {mid!r}")
print(f"{len(missing)} untranslated of {sum(1 for m in pot if m.id)}")
sys.exit(1 if missing else 0)
PYEOF
    ;;
  compile)
    .venv/bin/pybabel compile -d src/tcpulse/i18n/locale -D tcpulse
    ;;
  *) echo "usage: scripts/i18n.sh update|check|compile" >&2; exit 2 ;;
esac
