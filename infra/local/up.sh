#!/usr/bin/env bash
# Start the loopback stack (Prefect server + UI, SeaweedFS S3, Ray head, process worker) and deploy
# every deployment in deployments/prefect.yaml. Idempotent: running services (pid files in .stack/) are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
exec "$PY" -m facelift.cli.localstack up
