#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine to build and run Sluice: system packages (the toolchain that
# builds the example Wasm plugins), then the plugins and the gateway itself. Running needs no other
# service: the quickstart queue is an embedded file. `--with-redis` also installs redis-server and redis-cli (for
# config/sluice-redis.toml), promtool and PostgreSQL, which the test suite uses.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(rustc-web cargo-web rust-web-src lld-22 wasi-libc clang-14 lld-14 libclang-rt-14-dev-wasm32)
[ "${1:-}" = "--with-redis" ] && packages+=(redis-server redis-tools prometheus postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

./plugins/build.sh
cargo build --release --bin sluice
echo "Set up. Run the gateway with: ./scripts/run.sh"
