#!/bin/sh
# Installs the system packages the project's tests and examples use, from Debian's archive:
#  - rustc, cargo, libstd-rust-dev-wasm32, librust-wasm-bindgen-dev, librust-serde-json-dev,
#    librust-serde-derive-dev: build the
#    spec's Rust example offline (examples/rust/README.md);
#  - clang, lld: build the C example for wasm32;
#  - iptables, nftables: network partitions in the testbed;
#  - serf: the baseline bench/bench_scale.py measures beside our nodes (shared/peers/serf_bench.py).
# Needs root (CI runs as root). Without root it says what to run and carries on: the tests that need
# the toolchain then skip with the same instruction.
set -u
PACKAGES="rustc cargo libstd-rust-dev-wasm32 librust-wasm-bindgen-dev librust-serde-json-dev librust-serde-derive-dev clang lld iptables nftables serf"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-toolchain: no apt-get here; install the equivalents of: $PACKAGES" >&2
    exit 0
fi
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-toolchain: missing:$missing; run: sudo apt-get install -y$missing" >&2
    exit 0
fi
echo "install-toolchain: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends $missing >/dev/null
