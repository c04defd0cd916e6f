#!/usr/bin/env bash
# The LSM benchmark (palisade-bench --lsm) in the QEMU guest, where BPF LSM
# is active: a static release build of palisade-bench, run once. Prints the
# guest's figures; exits with its status.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/versions.env

cargo build --release -p palisade-bench --target "$GUEST_TARGET"
bin=target/$GUEST_TARGET/release/palisade-bench
exec tests/vm/run-guest.sh --timeout 900 --add "$bin" -- ./palisade-bench --lsm
