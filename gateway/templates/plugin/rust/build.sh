#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component for Sluice, from src/lib.rs.
#
# With rustup: `rustup target add wasm32-wasip2` once, then plain `cargo build`. Without that target,
# Debian's rustc-web toolchain builds the standard library for the target itself:
#   apt-get install rustc-web cargo-web rust-web-src lld-22 wasi-libc
# Exit 69 when neither toolchain is there.
set -euo pipefail
cd "$(dirname "$0")"

if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  cargo build --release --target wasm32-wasip2
elif [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && [ -d /usr/lib/wasm32-wasi ]; then
  # Debian's cargo by full path: rustup's proxies usually come first in PATH.
  RUSTFLAGS="-L /usr/lib/wasm32-wasi" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
    /usr/bin/cargo build --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort
else
  echo "build.sh: no Rust toolchain for wasm32-wasip2: run 'rustup target add wasm32-wasip2', or on Debian" \
    "'apt-get install rustc-web cargo-web rust-web-src lld-22 wasi-libc'" >&2
  exit 69
fi
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" {{name}}.wasm
echo "built {{name}}.wasm; try it: sluice plugin test {{name}}.wasm --fixtures fixtures"
