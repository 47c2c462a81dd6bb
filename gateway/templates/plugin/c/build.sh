#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component for Sluice, from plugin.c.
#
# clang compiles plugin.c and the bindings in gen/ into a core module with wasi-libc; jco (npm)
# wraps it into a component with the WASI preview1 adapter. On Debian:
#   apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 nodejs npm
# Exit 69 when a tool is missing.
set -euo pipefail
cd "$(dirname "$0")"

clang=$(command -v clang-14 || command -v clang || true)
if [ -z "$clang" ] || ! command -v npm >/dev/null; then
  echo "build.sh: needs clang with wasi-libc and npm: on Debian" \
    "'apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 nodejs npm'" >&2
  exit 69
fi
"$clang" --target=wasm32-wasi -O2 -mexec-model=reactor -Wl,--strip-debug \
  -o {{name}}.core.wasm plugin.c gen/plugin.c gen/plugin_component_type.o
npm install --no-audit --no-fund --loglevel=error
npx --no-install jco new {{name}}.core.wasm --wasi-reactor -o {{name}}.wasm
echo "built {{name}}.wasm; try it: sluice plugin test {{name}}.wasm --fixtures fixtures"
