#!/usr/bin/env bash
# `make demo`: the lab on the standard model with the example policies of
# manifests/examples/policies: the real daemon as its own process on a
# simulated node (namespaces as pods beside a bridge), reachability before
# and after the policies, and why one denied flow is denied. The lab removes
# everything it made, also on failure or Ctrl-C.
set -euo pipefail
bin=${1:-target/release/palisade}

echo "== palisade status: what this kernel offers"
"$bin" status | sed -n '1,/^pinned/p' | sed '$d'
echo
echo "== palisade lab demo --policies manifests/examples/policies"
"$bin" lab demo --policies manifests/examples/policies --save "${TMPDIR:-/tmp}/palisade-demo.yaml"
echo
echo "The scenario above is saved as ${TMPDIR:-/tmp}/palisade-demo.yaml: run it again with"
echo "  $bin lab run ${TMPDIR:-/tmp}/palisade-demo.yaml"
