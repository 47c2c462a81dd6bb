#!/usr/bin/env bash
# Builds every example plugin from source into plugins/dist/<name>.wasm.
#
# Rust guests target wasm32-wasip2. Where rustup has that target installed, plain `cargo` is used;
# otherwise Debian's rustc-web toolchain (apt: rustc-web cargo-web rust-web-src lld-22 wasi-libc)
# builds the standard library for the target itself (-Zbuild-std). See ../shared recipes in README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
mkdir -p dist

rust_guests=(rust-filter rust-transform rust-router rust-chaos)

build_rust() {
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    cargo build --release --target wasm32-wasip2
  elif [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ]; then
    RUSTFLAGS="-L /usr/lib/wasm32-wasi" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
      /usr/bin/cargo build --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort
  else
    echo "build.sh: no Rust toolchain for wasm32-wasip2 (rustup target or Debian rustc-web)" >&2
    return 1
  fi
  for guest in "${rust_guests[@]}"; do
    cp "target/wasm32-wasip2/release/${guest//-/_}.wasm" "dist/$guest.wasm"
  done
}

build_rust
ls -l dist/*.wasm
