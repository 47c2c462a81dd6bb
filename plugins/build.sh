#!/usr/bin/env bash
# Builds every example plugin from source into plugins/dist/<name>.wasm.
#
#   Rust        wasm32-wasip2 with rustup's target when installed, else Debian's rustc-web toolchain
#               (apt: rustc-web cargo-web rust-web-src lld-22 wasi-libc), which builds std itself.
#   JavaScript  jco's QuickJS backend, from npm (js-*/package.json pins the versions); --bundle pulls in
#               js-prelude/prelude.js (console, TextEncoder/TextDecoder).
#   AssemblyScript  asc from npm; a core module speaking the core-module ABI (../wit/core-abi.md).
#   Python      componentize-py from PyPI, in a venv inside the plugin's folder.
#   C           clang-14 with wasi-libc (apt: clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32), then
#               `jco new` (npm) adapts the core module into a component; bindings are in c-*/gen.
#
# A language whose toolchain is missing is skipped with a line saying so; a build that fails with its
# toolchain present fails this script. Outputs newer than their sources are not rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
mkdir -p dist
wit=../wit/plugin.wit

# Whether dist/$1.wasm is missing or older than any of the other arguments.
stale() {
  local out="dist/$1.wasm"
  shift
  [ -f "$out" ] || return 0
  [ -n "$(find "$@" -newer "$out" -type f -not -path '*/node_modules/*' -not -path '*/.venv/*' -not -path '*/target/*' 2>/dev/null | head -1)" ]
}

rust_guests=(rust-filter rust-transform rust-router rust-chaos)
build_rust() {
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    cargo build --release --target wasm32-wasip2
  elif [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ]; then
    RUSTFLAGS="-L /usr/lib/wasm32-wasi" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
      /usr/bin/cargo build --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort
  else
    echo "build.sh: SKIPPED Rust plugins: no wasm32-wasip2 target (rustup) and no Debian rustc-web" >&2
    return 0
  fi
  # Cargo builds where CARGO_TARGET_DIR says when it is set (CI keeps a shared cache there).
  local out=${CARGO_TARGET_DIR:-target}
  for guest in "${rust_guests[@]}"; do
    cp "$out/wasm32-wasip2/release/${guest//-/_}.wasm" "dist/$guest.wasm"
  done
}

build_js() {
  local name=$1
  if ! command -v npm >/dev/null; then
    echo "build.sh: SKIPPED $name: npm is not installed" >&2
    return 0
  fi
  stale "$name" "$name" js-prelude "$wit" || return 0
  (cd "$name" && npm install --no-audit --no-fund --loglevel=error && npm run --silent build)
}

build_python() {
  local name=$1
  if ! python3 -c 'import venv' 2>/dev/null; then
    echo "build.sh: SKIPPED $name: python3 with venv is not installed" >&2
    return 0
  fi
  stale "$name" "$name" "$wit" || return 0
  (
    cd "$name"
    [ -x .venv/bin/componentize-py ] || { python3 -m venv .venv && .venv/bin/pip install -q componentize-py==0.25.1; }
    .venv/bin/componentize-py -d ../../wit -w plugin componentize app -o "../dist/$name.wasm"
  )
}

build_c() {
  local name=$1
  if ! command -v clang-14 >/dev/null || ! command -v npm >/dev/null; then
    echo "build.sh: SKIPPED $name: needs clang-14 (apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32) and npm" >&2
    return 0
  fi
  stale "$name" "$name" "$wit" || return 0
  (cd "$name" && npm install --no-audit --no-fund --loglevel=error && npm run --silent build)
}

build_rust
build_c c-prefix
build_js js-filter
build_js js-transform
build_js as-tagger
build_python python-router
ls -l dist/*.wasm
