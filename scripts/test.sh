#!/usr/bin/env bash
# Set up (first time only) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export WORLDSMITH_TEST_PG_URL="${WORLDSMITH_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
exec .venv/bin/python -m pytest "$@"
