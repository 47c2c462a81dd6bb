#!/usr/bin/env bash
# Builds {{name}}.wasm, a core WebAssembly module speaking Sluice's core-module ABI
# (wit/core-abi.md), from assembly/index.ts with the AssemblyScript compiler (npm; the version is
# pinned in package.json). Exit 69 when npm is missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null; then
  echo "build.sh: needs node and npm (on Debian: 'apt-get install nodejs npm')" >&2
  exit 69
fi
npm install --no-audit --no-fund --loglevel=error
npm run --silent build
echo "built {{name}}.wasm; try it: sluice plugin test {{name}}.wasm --fixtures fixtures"
