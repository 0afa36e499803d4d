#!/usr/bin/env bash
# Coverage-guided fuzzing of the protocol core (fuzz/fuzz_connection.py) with atheris.
# Separate from the test suite: it runs for as long as you ask.  Usage:
#   bash scripts/fuzz.sh                  # 1,000,000 inputs
#   bash scripts/fuzz.sh -runs=100000     # any libFuzzer flag (-max_total_time=600, -jobs=2, ...)
# Crashes are written to fuzz/artifacts/ (crash-<sha1>); replay one with
#   .venv/bin/python fuzz/fuzz_connection.py fuzz/artifacts/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
# atheris 3.0.0 is the version that installs (a prebuilt wheel) on Python 3.11 here.
.venv/bin/python -c 'import atheris' 2>/dev/null \
  || .venv/bin/python -m pip install -q --disable-pip-version-check 'atheris==3.0.0'
mkdir -p fuzz/corpus fuzz/artifacts
args=("$@")
have_runs=0
for a in "${args[@]}"; do case "$a" in -runs=*|-max_total_time=*) have_runs=1;; esac; done
[ "$have_runs" = 1 ] || args+=("-runs=1000000")
exec .venv/bin/python fuzz/fuzz_connection.py -artifact_prefix=fuzz/artifacts/ -print_final_stats=1 \
  "${args[@]}" fuzz/corpus fuzz/seeds
