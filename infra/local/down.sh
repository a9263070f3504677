#!/usr/bin/env bash
# Stop exactly the processes `infra/local/up.sh` started (by the pids recorded in .stack/*.pid).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
exec "$PY" -m facelift.cli.localstack down
