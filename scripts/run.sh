#!/usr/bin/env bash
# Set up (first time only) and run a shard on embedded defaults. Extra arguments go to `python -m server`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m server "$@"
