#!/usr/bin/env bash
# Set up a virtual environment (if needed), then run the service in embedded mode: the HTTP API
# on http://127.0.0.1:8000 plus one worker, with the job store, queue and artifacts in the per-user
# state folder ($XDG_STATE_HOME/synflow, else ~/.local/state/synflow; SYNFLOW_DATA_DIR overrides),
# never in the checkout, whose files other than the code a job must not be able to read.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
setup_venv
exec .venv/bin/synflow serve "$@"
