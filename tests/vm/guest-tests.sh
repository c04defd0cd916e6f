#!/usr/bin/env bash
# Runs the privileged tests (loader, attach, lsm, datapath, frames, enforce) in the
# QEMU guest: a second kernel (Debian 6.1: clsact instead of TCX) on which BPF LSM
# is active. Exits with the guest's status.
#
#   tests/vm/guest-tests.sh [TEST...]   (the named test targets only; all by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/versions.env

# Static binaries need nothing from the guest's (absent) libc.
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(loader attach lsm lsm_rules datapath enforce sync discover capabilities frames)
tests=()
for n in "${names[@]}"; do tests+=(--test "$n"); done
# cargo's own messages go to a log that is shown when the build fails: a
# failed build must say why, never end the run with a bare status.
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
if ! cargo test -p palisade-tests --target "$GUEST_TARGET" --no-run --message-format=json "${tests[@]}" \
       2>"$build_log" >"$build_log.json"; then
  echo "guest-tests: building the test binaries for $GUEST_TARGET failed:" >&2
  tail -n 60 "$build_log" >&2
  rm -f "$build_log.json"
  exit 1
fi
bins=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])
' "$build_log.json")
rm -f "$build_log.json"
[ -n "$bins" ] || { echo "guest-tests: cargo built no test binaries" >&2; tail -n 60 "$build_log" >&2; exit 1; }

# The daemon, for the tests that run it (capabilities), stripped: the guest
# holds it in RAM. A copy of this run's own: another guest may be starting
# beside this one (tests/vm/guest-suite.sh).
cargo build -q -p palisade-cli --target "$GUEST_TARGET"
own=$(mktemp -d)
trap 'rm -f "$build_log"; rm -rf "$own"' EXIT
daemon=$own/palisade
strip -o "$daemon" "target/$GUEST_TARGET/debug/palisade"

adds=(--add "$daemon")
for b in $bins; do adds+=(--add "$b"); done
# A test that loads the objects waits for the verifier, about 10 s under
# TCG on 6.1; the timeout only catches a hang.
rm -f "$build_log"
tests/vm/run-guest.sh --timeout 3000 "${adds[@]}" -- sh -c '
  failed=0
  for t in ./*; do
    [ "$t" != ./palisade ] || continue
    echo "== $t"
    "$t" --test-threads=1 || failed=1
  done
  exit $failed'
