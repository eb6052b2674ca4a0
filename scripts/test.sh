#!/usr/bin/env bash
# Set up everything the tests need and run the linter and the whole test suite:
# Redis at 127.0.0.1:6379 (installed with apt and started if missing; tests use their own key
# prefixes and leave nothing behind), a virtual environment with the project and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
    apt-get update -q && apt-get install -y -q redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
source scripts/venv.sh
setup_venv test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
