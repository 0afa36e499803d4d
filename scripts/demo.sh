#!/usr/bin/env bash
# One command: set up, then run the server demo (Ctrl-C stops it).  Extra arguments go to
# `tcpulse serve`, e.g. scripts/demo.sh --port 0 --log-format json
set -euo pipefail
cd "$(dirname "$0")/.."
TCPULSE_SETUP=${TCPULSE_SETUP:-minimal} TCPULSE_EXTRAS=${TCPULSE_EXTRAS:-fast} bash scripts/setup.sh
exec .venv/bin/tcpulse serve "$@"
