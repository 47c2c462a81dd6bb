#!/usr/bin/env bash
# Runs the gateway with the shipped config, starting a local redis-server first if none answers.
# Extra arguments go to `sluice run` (e.g. --log-format json).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${SLUICE_CONFIG:-config/sluice.toml}
if ! redis-cli -u "${SLUICE_REDIS__URL:-redis://127.0.0.1:6379/}" ping >/dev/null 2>&1; then
  echo "run.sh: starting redis-server on 127.0.0.1:6379 (AOF on)"
  redis-server --bind 127.0.0.1 --port 6379 --appendonly yes --dir "${TMPDIR:-/tmp}" --daemonize yes >/dev/null
fi
exec ./target/release/sluice run --config "$config" "$@"
