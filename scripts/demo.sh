#!/usr/bin/env bash
# `make demo` until the lab lands: a node namespace and a pod namespace joined
# by a veth, Palisade's real programs loaded and attached to the host-side
# veth, a little traffic, the counters read back from the pinned maps, and
# everything removed again (also on failure or Ctrl-C).
set -euo pipefail
bin=${1:-target/release/palisade}
id=$(( $$ % 100000 ))
node=pal-node-$id
pod=pal-pod-$id
host_if=vh$id
pins=/sys/fs/bpf/palisade-demo-$id

cleanup() {
  "$bin" --pin-base "$pins" unload --maps --tc "$host_if" --netns "/run/netns/$node" >/dev/null 2>&1 || true
  rmdir "$pins" 2>/dev/null || true
  ip netns del "$node" 2>/dev/null || true
  ip netns del "$pod" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== palisade status (feature probe, default pin directory)"
"$bin" status
echo

ip netns add "$node"
ip netns add "$pod"
ip -n "$node" link add "$host_if" type veth peer name eth0 netns "$pod"
ip -n "$node" addr add 10.199.0.1/24 dev "$host_if"
ip -n "$pod" addr add 10.199.0.2/24 dev eth0
ip -n "$node" link set "$host_if" up
ip -n "$pod" link set eth0 up

echo "== load: pins under $pins, XDP and both TC hooks on $host_if in netns $node"
PALISADE_LOG=warn "$bin" --pin-base "$pins" load --netns "/run/netns/$node" --xdp "$host_if" --tc "$host_if"
echo

echo "== traffic: 10 UDP datagrams from the pod to a closed port on the node"
ip netns exec "$pod" bash -c 'for _ in $(seq 10); do echo hello > /dev/udp/10.199.0.1/9; done' || true
echo

echo "== status: counters read from the pinned maps (the load command has exited)"
"$bin" --pin-base "$pins" status
echo
echo "No endpoint is registered, so every packet passes and is counted."
echo
echo "== explain: why x/b cannot reach x/a on TCP 80 under manifests/examples/x-a-from-y.yaml"
"$bin" explain manifests/examples/x-a-from-y.yaml --from x/b --to x/a --port 80
"$bin" explain manifests/examples/x-a-from-y.yaml --from y/b --to x/a --port serve-80-tcp
