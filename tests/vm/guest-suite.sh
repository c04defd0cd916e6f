#!/usr/bin/env bash
# The guest half of `make test`: six jobs, each in a QEMU guest of its own,
# two guests at a time, taken in this order by whichever worker is free:
#   the LSM scenarios with the file source and through the Kubernetes
#   source (--via kube); the privileged test binaries in two halves
#   (tests/vm/guest-tests.sh); the SCTP scenarios both ways.
# A guest's work is mostly one busy vCPU (the verifier under TCG, tests
# run one at a time), so one guest left the machine's second core idle.
# The two LSM scenario runs are the longest jobs (a daemon start per
# scenario, the verifier under TCG each time: 641 and 664 s in the
# .ci/run of 4e54d11, 2026-12-05), so they go first, one per worker, and
# the shorter jobs fill in behind them (the test halves took 228 and
# 329 s, the SCTP runs 49 and 50 s). With the lab's wait on inotify the
# LSM runs shrank (661 and 723 s on a slow day, 2026-12-07) and the
# datapath half became the longest job (744 s, sync's 189 s in it), so
# sync moved to the other half. Since the tests verify only the programs
# they run, the halves take 229 and 252 s (2026-12-07).
#
# A job's output is kept in a log and shown whole when the job ends, so
# that two guests' output never interleaves; a line says when each job
# starts. Every job runs even when one fails; the suite exits with the
# first failed job's status, in the order above.
set -uo pipefail
cd "$(dirname "$0")/../.."

sctp=(tests/scenarios/sctp/*.yaml)
lsm=(tests/scenarios/lsm/*.yaml)
names=(
  "the LSM scenarios (files)"
  "the LSM scenarios (--via kube)"
  "the privileged tests: process and file rules, loader, sync"
  "the privileged tests: datapath, enforcement"
  "the SCTP scenarios (files)"
  "the SCTP scenarios (--via kube)"
)
job() {
  case $1 in
    0) tests/vm/guest-scenarios.sh "${lsm[@]}" ;;
    1) tests/vm/guest-scenarios.sh "${lsm[@]}" -- --via kube ;;
    2) tests/vm/guest-tests.sh lsm_rules lsm loader attach capabilities sync ;;
    3) tests/vm/guest-tests.sh datapath enforce discover frames ;;
    4) tests/vm/guest-scenarios.sh "${sctp[@]}" ;;
    5) tests/vm/guest-scenarios.sh "${sctp[@]}" -- --via kube ;;
  esac
}

work=$(mktemp -d /tmp/palisade-guest-suite.XXXXXX)
echo 0 > "$work/next"
workers=()
# Stopped (a cancelled job, a timeout), the suite stops both workers and
# their guests: each runs in a process group of its own, QEMU included.
stop_workers() {
  for w in "${workers[@]}"; do
    kill -- "-$w" 2>/dev/null
    wait "$w" 2>/dev/null
  done
  rm -rf "$work"
}
trap stop_workers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The next job's number, or nothing when none is left.
claim() {
  (
    flock 9
    n=$(cat "$work/next")
    [ "$n" -lt ${#names[@]} ] || exit 1
    echo $((n + 1)) > "$work/next"
    echo "$n"
  ) 9>"$work/lock"
}

worker() {
  local n start status
  while n=$(claim); do
    start=$SECONDS
    ( flock 9; echo "=== worker $1 starts: ${names[$n]}" ) 9>"$work/print"
    job "$n" > "$work/$n.log" 2>&1
    status=$?
    echo "$status" > "$work/$n.status"
    (
      flock 9
      echo "=== ${names[$n]}: exit $status after $((SECONDS - start)) s (worker $1)"
      cat "$work/$n.log"
      echo "=== end of ${names[$n]}"
    ) 9>"$work/print"
  done
}

set -m
for w in 1 2; do
  worker "$w" &
  workers+=($!)
done
set +m
for w in "${workers[@]}"; do wait "$w"; done
workers=()

first=0
for n in "${!names[@]}"; do
  status=$(cat "$work/$n.status" 2>/dev/null || echo 1)
  echo "${names[$n]}: exit $status"
  [ "$first" -ne 0 ] || first=$status
done
exit "$first"
