#!/usr/bin/env bash
# Builds {{name}}.wasm for Sluice from {{source}} with `npm run build` (package.json pins the
# compiler's version; README.md says what it makes). Exit 69 when npm is missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null; then
  echo "build.sh: needs node and npm (on Debian: 'apt-get install nodejs npm')" >&2
  exit 69
fi
npm install --no-audit --no-fund --loglevel=error
npm run --silent build
echo "built {{name}}.wasm; try it: sluice plugin test {{name}}.wasm --fixtures fixtures"
