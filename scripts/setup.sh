#!/usr/bin/env bash
# Set up Worldsmith in ./.venv: Python packages, the web client's npm packages, the default NPC model.
# Usage: scripts/setup.sh [--dev]   (--dev adds test tools: pytest, Chromium, transformers, ...)
# Idempotent: a second run with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
py=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
    log "creating virtual environment .venv"
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
pip=(.venv/bin/python -m pip install -q)

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        log "installing PyTorch (CUDA build: a GPU is present)"
        "${pip[@]}" 'torch>=2.5,<3'
    else
        # The project's requirement is a range; on CPU machines take the CPU build explicitly,
        # or pip would pull a multi-GB CUDA build.
        log "installing PyTorch (CPU build)"
        "${pip[@]}" 'torch==2.13.0' || "${pip[@]}" 'torch>=2.5,<3' --index-url https://download.pytorch.org/whl/cpu
    fi
fi

extra=""
[ $dev = 1 ] && extra="[dev]"
stamp=".venv/.worldsmith-installed$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing worldsmith$extra and its dependencies"
    "${pip[@]}" -e ".$extra"
    touch "$stamp"
fi

if [ -f clients/web/package.json ]; then
    if [ ! -d clients/web/node_modules ] || [ clients/web/package.json -nt clients/web/node_modules ]; then
        log "installing the web client's packages (npm)"
        (cd clients/web && npm install --no-audit --no-fund --loglevel=error)
        touch clients/web/node_modules
    fi
fi

if [ $dev = 1 ]; then
    need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing Debian packages: ${need[*]}"
        sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
        $sudo_ apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q "${need[@]}"
    fi
fi

if .venv/bin/python -c 'import npc.models' 2>/dev/null; then
    .venv/bin/python -m npc.models fetch
fi
log "ready"
