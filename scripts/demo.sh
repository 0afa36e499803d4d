#!/usr/bin/env bash
# One command: set up, then run the server demo (Ctrl-C stops it).  Extra arguments go to
# `tcpulse serve`, e.g. scripts/demo.sh --port 0 --log-format json, or --admin 127.0.0.1:8222
# (the set-up installs what every server feature needs: the admin extra, uvloop).
set -euo pipefail
cd "$(dirname "$0")/.."
TCPULSE_SETUP=${TCPULSE_SETUP:-minimal} TCPULSE_EXTRAS=${TCPULSE_EXTRAS:-fast,admin} bash scripts/setup.sh
exec .venv/bin/tcpulse serve "$@"
