#!/usr/bin/env bash
# System packages the tests need, from Debian: chromium (tests/test_ui.py and tests/test_serve.py drive it through
# playwright; never `playwright install`) and postgresql (tests/test_postgres.py, `STACK_DATABASE=postgres make
# stack`). Idempotent: apt-get runs only for what is missing.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages present: chromium, postgresql"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
