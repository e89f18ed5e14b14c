#!/usr/bin/env bash
# Set up everything on a fresh machine (Python 3.11 + pip) and run the whole test suite.
# torch first, pinned to the CPU wheel: any other torch request pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --disable-pip-version-check -q torch==2.13.0
"$PY" -m pip install --disable-pip-version-check -q -e ".[test]"
exec "$PY" -m pytest -ra "$@"
