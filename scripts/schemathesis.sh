#!/usr/bin/env bash
# Runs schemathesis (property-based API testing from the OpenAPI document) against a real gateway:
# `sluice run` on a free loopback port, with its own redis-server, or with BACKEND=embedded on a
# scratch embedded store; with HISTORY=1 (redis backend) also with `[history]` on a PostgreSQL of its
# own (initdb in the scratch directory, as the postgres user when run as root), so the history
# search and lookups are fuzzed too.
# Usage: [BACKEND=redis|embedded] [HISTORY=1] scripts/schemathesis.sh [SECONDS]
# Needs python3 (and redis-server for the redis backend, PostgreSQL for HISTORY=1); installs
# schemathesis into target/schemathesis-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-60}
venv=target/schemathesis-venv
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis
fi
cargo build --release -p sluice --bin sluice
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
work=$(mktemp -d)
redis_pid=
if [ "${BACKEND:-redis}" = embedded ]; then
  store=$'[queue]\nbackend = "embedded"\npath = "'"$work"'/queue.redb"'
else
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
  redis_pid=$!
  store=$'[redis]\nurl = "redis://127.0.0.1:'"$redis_port"'/"'
fi
pg_pid=
history=
if [ -n "${HISTORY:-}" ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  pg_port=$(free_port)
  as_pg=()
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$work"
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  "${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U postgres -A trust --no-sync >/dev/null
  "${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg" -p "$pg_port" -k "$work" -c listen_addresses=127.0.0.1 \
    -c fsync=off >/dev/null 2>&1 &
  pg_pid=$!
  history=$'[history]\npostgres_url = "postgres://postgres@127.0.0.1:'"$pg_port"'/postgres"'
fi
token=schemathesis-token-0123456789
cat > "$work/sluice.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
$store
$history
[admin]
token = "$token"
[security]
allow_private_destinations = true
[[sources]]
name = "shop"
token = "$token"
[[endpoints]]
name = "orders"
url = "http://127.0.0.1:9/discard"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
timeout = "1s"
[[routes]]
source = "shop"
endpoints = ["orders"]
TOML
./target/release/sluice run --config "$work/sluice.toml" 2>"$work/sluice.log" &
sluice_pid=$!
trap 'kill $sluice_pid $redis_pid $pg_pid 2>/dev/null; sleep 0.5; rm -rf "$work"' EXIT
status=0
"$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" --wait-for-schema 20 \
  -H "Authorization: Bearer $token" --checks all --max-time "$budget" || status=$?
echo "gateway log: $(grep -c ERROR "$work/sluice.log" || true) ERROR lines"
exit $status
