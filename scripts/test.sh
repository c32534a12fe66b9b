#!/usr/bin/env bash
# Set up .venv with the test dependencies and run the whole test suite (CPU only).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k codec`.
source "$(dirname "$0")/env.sh" test
cd "$ROOT"
# pytest exits 5 when it collects no tests: that fails this script like any other non-zero exit
exec python -m pytest "$@"
