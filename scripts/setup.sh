#!/usr/bin/env bash
# Idempotent, cached set-up for a fresh Debian bookworm machine of this kind.
# Both README commands run it first. Every step checks before it acts, so a
# second run costs seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/versions.env
. "$here/scripts/versions.env"

cache=${PALISADE_CACHE:-$HOME/.cache/palisade}
mkdir -p "$cache"
log() { printf '[setup] %s\n' "$*" >&2; }

ensure_toolchains() {
  if ! rustup run "$USER_TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
     ! rustup run "$USER_TOOLCHAIN" cargo clippy --version >/dev/null 2>&1 ||
     ! rustup target list --installed --toolchain "$USER_TOOLCHAIN" | grep -qx "$GUEST_TARGET"; then
    log "installing user-space toolchain $USER_TOOLCHAIN"
    rustup toolchain install "$USER_TOOLCHAIN" --no-self-update --profile minimal --component rustfmt,clippy
    rustup target add "$GUEST_TARGET" --toolchain "$USER_TOOLCHAIN"
  fi
  if ! rustup run "$EBPF_TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
     ! rustup component list --installed --toolchain "$EBPF_TOOLCHAIN" | grep -q '^rust-src' ||
     ! rustup run "$EBPF_TOOLCHAIN" cargo clippy --version >/dev/null 2>&1; then
    log "installing eBPF toolchain $EBPF_TOOLCHAIN"
    rustup toolchain install "$EBPF_TOOLCHAIN" --no-self-update --profile minimal --component rust-src,clippy,rustfmt
  fi
}

# bpf-linker's LLVM must be the eBPF rustc's LLVM, so it is linked against the
# libLLVM that ships inside that toolchain rather than against a system LLVM.
ensure_bpf_linker() {
  local root="$cache/bpf-linker-$BPF_LINKER_VERSION-$EBPF_TOOLCHAIN"
  if [ -x "$root/bin/bpf-linker" ] && "$root/bin/bpf-linker" --version >/dev/null 2>&1; then
    return
  fi
  local sysroot llvm_so major prefix
  sysroot=$(rustc "+$EBPF_TOOLCHAIN" --print sysroot)
  llvm_so=$(cd "$sysroot/lib" && ls libLLVM.so.* | head -n1)
  major=$(rustc "+$EBPF_TOOLCHAIN" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  log "building bpf-linker $BPF_LINKER_VERSION against $llvm_so (LLVM $major)"
  prefix=$(mktemp -d)
  mkdir -p "$prefix/lib"
  ln -s "$sysroot/lib/$llvm_so" "$prefix/lib/libLLVM.so"
  ln -s "$sysroot/lib/$llvm_so" "$prefix/lib/$llvm_so"
  LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib" \
    cargo "+$EBPF_TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked \
      --no-default-features --features "llvm-$major" --root "$root.tmp"
  rm -rf "$prefix" "$root"
  mv "$root.tmp" "$root"
}

ensure_debs() {
  local missing=()
  for pkg in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# kubectl, for `kubectl kustomize manifests/` in the install test. Debian's
# package is installed only where no kubectl is on PATH: a kubectl from
# Kubernetes' own packages serves as well, and the two would collide on
# /usr/bin/kubectl.
ensure_kubectl() {
  command -v kubectl >/dev/null && return
  log "installing kubectl ($KUBECTL_PACKAGE)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$KUBECTL_PACKAGE"
}

# The guest kernel is Debian's stock 6.1 image, unpacked into the cache and
# never installed into /boot. The current ABI number is resolved from the
# archive because superseded builds leave the mirror.
ensure_guest_kernel() {
  local dir="$cache/guest-kernel" ko complete=1
  for ko in $GUEST_MODULES; do
    [ -s "$dir/modules/$ko.ko" ] || complete=0
  done
  if [ -s "$dir/vmlinux" ] && [ "$complete" = 1 ]; then
    return
  fi
  log "fetching the guest kernel"
  local pkg work deb
  apt-get update -qq
  pkg=$(apt-cache depends "$GUEST_KERNEL_META" | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
  [ -n "$pkg" ] || { log "cannot resolve $GUEST_KERNEL_META"; exit 1; }
  work=$(mktemp -d)
  (cd "$work" && apt-get download -qq "$pkg")
  deb=$(ls "$work"/*.deb)
  dpkg -x "$deb" "$work/root"
  mkdir -p "$dir.tmp/modules"
  cp "$work"/root/boot/vmlinuz-* "$dir.tmp/bzImage"
  for ko in $GUEST_MODULES; do
    find "$work/root/lib/modules" -name "$ko.ko" -exec cp {} "$dir.tmp/modules/" \;
    [ -s "$dir.tmp/modules/$ko.ko" ] || { log "module $ko not in $pkg"; exit 1; }
  done
  python3 "$here/tests/vm/extract_vmlinux.py" "$dir.tmp/bzImage" "$dir.tmp/vmlinux"
  echo "$pkg" > "$dir.tmp/package"
  rm -rf "$work" "$dir"
  mv "$dir.tmp" "$dir"
}

ensure_bpffs() {
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

ensure_toolchains
ensure_debs
ensure_kubectl
ensure_bpf_linker
ensure_guest_kernel
ensure_bpffs
log "ready (cache: $cache)"
