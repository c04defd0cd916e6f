#!/usr/bin/env bash
# The guest half of `make test`, in two QEMU guests at once:
#   one: the privileged test binaries (tests/vm/guest-tests.sh), then the
#        SCTP scenarios with the file source and through the Kubernetes
#        source (--via kube);
#   two: the LSM scenarios, the same two ways.
# A guest's work is one busy vCPU at a time (the verifier under TCG, tests
# run one at a time), so one guest left the machine's second core idle for
# most of half an hour. Two guests share the cores, each a little slower
# than alone (2026-12-05: 23m46s for both, where one guest took 36 min).
#
# The first guest's output is shown as it comes; the second's is kept in a
# log and shown when both are done, so that neither interleaves the other.
# Exits 0 only when both guests did; otherwise with the first failure.
set -uo pipefail
cd "$(dirname "$0")/../.."

sctp=(tests/scenarios/sctp/*.yaml)
lsm=(tests/scenarios/lsm/*.yaml)
log=$(mktemp /tmp/palisade-guest-suite.XXXXXX)
two=
# Stopped (a cancelled job, a timeout), the suite stops the second guest
# too: it runs in a process group of its own, QEMU included.
stop_second() {
  if [ -n "$two" ]; then
    kill -- "-$two" 2>/dev/null
    wait "$two" 2>/dev/null
  fi
  rm -f "$log"
}
trap stop_second EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

second() {
  echo "=== guest two: the LSM scenarios (files)"
  tests/vm/guest-scenarios.sh "${lsm[@]}" || return
  echo "=== guest two: the LSM scenarios (--via kube)"
  tests/vm/guest-scenarios.sh "${lsm[@]}" -- --via kube
}
set -m
second > "$log" 2>&1 &
two=$!
set +m

one=0
echo "=== guest one: the privileged tests"
tests/vm/guest-tests.sh || one=$?
if [ "$one" -eq 0 ]; then
  echo "=== guest one: the SCTP scenarios (files)"
  tests/vm/guest-scenarios.sh "${sctp[@]}" || one=$?
fi
if [ "$one" -eq 0 ]; then
  echo "=== guest one: the SCTP scenarios (--via kube)"
  tests/vm/guest-scenarios.sh "${sctp[@]}" -- --via kube || one=$?
fi

wait "$two"; two_status=$?
two=
echo "=== guest two's output:"
cat "$log"
echo "guest one: exit $one; guest two: exit $two_status"
if [ "$one" -ne 0 ]; then exit "$one"; fi
exit "$two_status"
