#!/usr/bin/env bash
# Runs scenario files (docs/SCENARIOS.md) with `palisade lab run` inside the
# QEMU guest (Debian 6.1: clsact instead of TCX, BPF LSM active, SCTP), with
# the same output and exit status as natively. Files may live anywhere.
#
#   tests/vm/guest-scenarios.sh FILE... [-- LAB-ARGS...]
set -euo pipefail
files=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do files+=("$(realpath "$1")"); shift; done
[ "${1:-}" = -- ] && shift
[ ${#files[@]} -gt 0 ] || { echo "guest-scenarios: no scenario files given" >&2; exit 2; }
cd "$(dirname "$0")/../.."
. scripts/versions.env

# A static binary needs nothing from the guest's (absent) libc.
cargo build -q -p palisade-cli --target "$GUEST_TARGET"
# Without its debug information: the guest holds it in RAM, and so do the
# copies that process and file checks make of it (executable fixtures). A
# copy of this run's own: another guest may be starting beside this one.
own=$(mktemp -d)
trap 'rm -rf "$own"' EXIT
bin=$own/palisade
strip -o "$bin" "target/$GUEST_TARGET/debug/palisade"

adds=(--add "$bin")
names=()
for f in "${files[@]}"; do
  name=$(basename "$f")
  for n in "${names[@]}"; do
    [ "$n" != "$name" ] || { echo "guest-scenarios: two files named $name" >&2; exit 2; }
  done
  names+=("$name")
  adds+=(--add "$f")
done
tests/vm/run-guest.sh --timeout 1800 "${adds[@]}" -- ./palisade lab run "$@" "${names[@]}"
