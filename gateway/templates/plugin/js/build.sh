#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component for Sluice, from plugin.js with jco's QuickJS
# backend (npm; versions pinned in package.json). Exit 69 when npm is missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null; then
  echo "build.sh: needs node and npm (on Debian: 'apt-get install nodejs npm')" >&2
  exit 69
fi
npm install --no-audit --no-fund --loglevel=error
npm run --silent build
echo "built {{name}}.wasm; try it: sluice plugin test {{name}}.wasm --fixtures fixtures"
