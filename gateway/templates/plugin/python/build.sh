#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component for Sluice, from app.py with componentize-py
# (PyPI), installed once into .venv here. Exit 69 when python3 with venv is missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "build.sh: needs python3 with venv (on Debian: 'apt-get install python3-venv')" >&2
  exit 69
fi
if [ ! -x .venv/bin/componentize-py ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet componentize-py==0.25.1
fi
.venv/bin/componentize-py -d wit -w plugin componentize app -o {{name}}.wasm
echo "built {{name}}.wasm; try it: sluice plugin test {{name}}.wasm --fixtures fixtures"
