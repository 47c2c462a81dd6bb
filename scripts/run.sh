#!/usr/bin/env bash
# Runs the gateway with the shipped quickstart config (embedded queue: no other service needed).
# SLUICE_CONFIG=config/sluice-redis.toml runs it on Redis instead, starting a local redis-server
# (AOF on) first when none answers. Extra arguments go to `sluice run` (e.g. --log-format json).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${SLUICE_CONFIG:-config/sluice.toml}
if grep -q '^\[redis\]' "$config" && [ "${SLUICE_QUEUE__BACKEND:-redis}" = redis ]; then
  url=${SLUICE_REDIS__URL:-redis://127.0.0.1:6379/}
  if ! command -v redis-cli >/dev/null; then
    echo "run.sh: $config uses Redis; install it first: apt-get install -y redis-server" >&2
    exit 1
  fi
  if ! redis-cli -u "$url" ping >/dev/null 2>&1; then
    echo "run.sh: starting redis-server on 127.0.0.1:6379 (AOF on)"
    redis-server --bind 127.0.0.1 --port 6379 --appendonly yes --dir "${TMPDIR:-/tmp}" --daemonize yes >/dev/null
  fi
fi
exec ./target/release/sluice run --config "$config" "$@"
