#!/usr/bin/env bash
# Builds the node image offline and checks that it runs:
#   1. the static binary: cargo build --release --target musl -p palisade-cli
#      --no-default-features (no lab, no standard model);
#   2. the image from Containerfile, FROM scratch, with podman;
#   3. `podman run --rm IMAGE --version`.
# A machine that cannot run the container gets podman's own error and a
# non-zero exit, never a pass, with the cause where it is a known one.
# IMAGE overrides the name (default palisade:<workspace version>);
# PODMAN_RUN_FLAGS adds flags to `podman run`, e.g. on a machine whose root
# lacks CAP_SYS_RESOURCE and whose cgroups are hybrid v1/v2:
#   PODMAN_RUN_FLAGS='--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096'
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/versions.env
. "$here/scripts/versions.env"
cache=${PALISADE_CACHE:-$HOME/.cache/palisade}
# The daemon's build script builds the eBPF objects with bpf-linker.
export PATH="$cache/bpf-linker-$BPF_LINKER_VERSION-$EBPF_TOOLCHAIN/bin:$HOME/.cargo/bin:$PATH"
log() { printf '[image] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$here/Cargo.toml")
image=${IMAGE:-palisade:$version}
target=$GUEST_TARGET   # x86_64-unknown-linux-musl
bin="$here/target/$target/release/palisade"

# ring compiles C and assembly for the target: it needs musl's C compiler
# (musl-tools); the image needs podman. Both from Debian, installed if missing.
need=()
command -v x86_64-linux-musl-gcc >/dev/null || need+=(musl-tools)
command -v podman >/dev/null || need+=(podman)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

log "building $bin"
start=$(date +%s)
cargo "+$USER_TOOLCHAIN" build --release --target "$target" -p palisade-cli --no-default-features \
  --manifest-path "$here/Cargo.toml"
log "binary built in $(( $(date +%s) - start ))s: $(du -h "$bin" | cut -f1)"
if command -v readelf >/dev/null && readelf -l "$bin" | grep -q 'program interpreter'; then
  die "$bin is dynamically linked; a FROM scratch image needs a static binary"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$bin" "$context/palisade"
# Symbols and debug info are of no use in the image (the eBPF objects are
# data inside the binary and keep their BTF).
if command -v strip >/dev/null; then
  strip "$context/palisade"
  log "stripped: $(du -h "$context/palisade" | cut -f1)"
fi
log "building image $image"
podman build --pull=never --network=none -f "$here/Containerfile" -t "$image" "$context"
size=$(podman image inspect --format '{{.Size}}' "$image")
log "image $image: $size bytes ($(( size / 1024 / 1024 )) MiB)"

# PODMAN_RUN_FLAGS adds flags to `podman run` (see the diagnosis below).
read -r -a run_flags <<< "${PODMAN_RUN_FLAGS:-}"
log "running: podman run --rm --network=none ${run_flags[*]} $image --version"
if ! out=$(podman run --rm --network=none "${run_flags[@]}" "$image" --version 2>&1); then
  log "podman run failed on this machine: the image is built but not proven to run. podman said:"
  printf '%s\n' "$out" >&2
  # The causes met so far, each with what to try.
  capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
  if [[ $out == *rlimit* ]] && (( ((16#$capeff) >> 24 & 1) == 0 )); then
    log "why: this root lacks CAP_SYS_RESOURCE (CapEff $capeff), so the runtime cannot raise"
    log "  RLIMIT_NOFILE and RLIMIT_NPROC to podman's defaults (hard limits here: nofile $(ulimit -Hn), nproc $(ulimit -Hu))."
    log "  try: PODMAN_RUN_FLAGS='--ulimit nofile=$(ulimit -Hn):$(ulimit -Hn) --ulimit nproc=4096:4096' $0"
  fi
  if [[ $out == *"hybrid mode not supported"* ]]; then
    log "why: cgroups are mounted in hybrid v1/v2 mode, which crun refuses."
    log "  try: apt-get install runc, then add '--runtime runc' to PODMAN_RUN_FLAGS"
  fi
  exit 1
fi
printf '%s\n' "$out"
case $out in
  "palisade $version") log "ok: the image runs and reports $version" ;;
  *) die "expected \"palisade $version\" from --version, got: $out" ;;
esac
