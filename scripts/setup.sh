#!/usr/bin/env bash
# Set up everything tcpulse needs on a fresh Debian machine (as root) or any Linux with Python 3.11+:
# a virtual environment in .venv with tcpulse, every documented server feature (the admin endpoint
# and dashboard, alerts, uvloop, the cluster on Redis and PostgreSQL) and its test tools, and the
# system packages the tests drive (Chromium for the dashboard test, with a CJK font so that the
# Chinese dashboard is legible; redis-server and PostgreSQL, which the cluster tests start).
# Safe to run again: it only adds what is missing.
#   TCPULSE_SETUP=minimal   only the venv (no apt packages but python3-venv): scripts/demo.sh
#   TCPULSE_EXTRAS=...      the pip extras (default dev,fast,admin,cluster; the demo: fast,admin)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
APT_PKGS=()
need_apt() { dpkg -s "$1" >/dev/null 2>&1 || APT_PKGS+=("$1"); }

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  "$PY" -m venv --help >/dev/null 2>&1 && "$PY" -c 'import ensurepip' 2>/dev/null || need_apt python3-venv
  if [ "${TCPULSE_SETUP:-full}" = full ]; then
    need_apt chromium
    need_apt fonts-noto-cjk  # the zh dashboard in Chromium (the CSS falls back to other CJK fonts)
    need_apt openssl
    need_apt netcat-openbsd
    need_apt sqlite3  # the sqlite3 shell, for reading the store by hand (docs/store.md)
    need_apt redis-server  # the cluster's presence (serve --cluster); tests start their own instances
    need_apt postgresql  # the shared store (--db postgresql://); tests run their own with initdb
  fi
  if [ ${#APT_PKGS[@]} -gt 0 ]; then
    echo "setup: installing ${APT_PKGS[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${APT_PKGS[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras=${TCPULSE_EXTRAS:-dev,fast,admin,cluster}
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
