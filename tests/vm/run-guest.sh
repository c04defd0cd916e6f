#!/usr/bin/env bash
# Boots Debian's stock kernel (see scripts/setup.sh) under QEMU/TCG with bpf
# in lsm=, runs one command inside, and exits with that command's status.
#
#   tests/vm/run-guest.sh [--timeout SECS] [--add FILE]... -- COMMAND [ARG]...
#
# Files given with --add land in /work, the command's working directory.
# Binaries must be static (musl) or their libraries must be in the guest.
# The guest has busybox, iproute2's `ip`, bpffs, securityfs and cgroup2
# mounted, and the veth/sch_ingress/cls_bpf modules loaded. PALISADE_IN_GUEST=1
# is set so tests can demand what the guest must provide (BPF LSM).
#
# A kernel panic, a hang past the timeout or a guest that never reports an
# exit status is a failure (125), never a pass.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../scripts/versions.env
. "$here/../../scripts/versions.env"
cache=${PALISADE_CACHE:-$HOME/.cache/palisade}
kernel_dir=$cache/guest-kernel
timeout=300
adds=()
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) timeout=$2; shift 2 ;;
    --add) adds+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "run-guest: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "run-guest: no command given" >&2; exit 2; }
[ -s "$kernel_dir/vmlinux" ] || { echo "run-guest: no guest kernel in $kernel_dir; run scripts/setup.sh" >&2; exit 2; }

work=$(mktemp -d /tmp/palisade-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,var,work,root,lib/modules/palisade}
cp /bin/busybox "$root/bin/busybox"
for ko in $GUEST_MODULES; do
  cp "$kernel_dir/modules/$ko.ko" "$root/lib/modules/palisade/"
  echo "$ko" >> "$root/lib/modules/palisade/order"
done

# iproute2's ip (busybox's cannot name a veth peer or manage netns), with
# the libraries it links.
ip_bin=$(command -v ip)
cp "$ip_bin" "$root/usr/sbin/ip"
for lib in $(ldd "$ip_bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

for f in "${adds[@]}"; do
  cp -L "$f" "$root/work/"
  # Debug info makes test binaries ~100 MB each; the initramfs unpacks into
  # guest RAM, so only what runs goes in.
  # (strip refuses non-ELF files, which are kept as they are.)
  strip --strip-debug "$root/work/$(basename "$f")" 2>/dev/null || true
done

# The command, quoted for the guest's sh.
{
  for arg in "$@"; do
    printf "'%s' " "${arg//\'/\'\\\'\'}"
  done
  echo
} > "$root/cmd"

cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -s /run /var/run
for m in $(cat /lib/modules/palisade/order); do
  insmod "/lib/modules/palisade/$m.ko" || echo "palisade-guest: insmod $m failed"
done
ip link set lo up
echo "palisade-guest: kernel $(uname -r), lsm=$(cat /sys/kernel/security/lsm)"
cd /work
PALISADE_IN_GUEST=1 sh /cmd
echo "PALISADE-GUEST-EXIT=$?"
poweroff -f
INIT
chmod +x "$root/init"

(cd "$root" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) > "$work/initrd"

# Warnings and stack dumps reach the console (`quiet` kept only errors):
# a lockup or a kernel warning met while Palisade runs must be seen with
# where it happened, and a soft lockup's report then shows every CPU.
console_level="loglevel=5 softlockup_all_cpu_backtrace=1"

# One host thread runs both vCPUs in turn (`thread=single`), so that one
# never runs kernel text while the other's kernel patches it. With a
# thread each, a guest locked up twice (in CI and in a fresh-clone
# .ci/run, both 2026-12-06), both times in the LSM scenarios run
# --via kube. The second time the stacks showed one vCPU on the first
# instruction of `bpf_lsm_bpf` for 25 minutes, interrupts on, the other
# vCPU idle. That function is the `bpf` syscall's LSM hook, one of the
# stubs whose entries the kernel patches as LSM programs are attached
# and detached. The likely cause is the emulator's threaded translation
# meeting the kernel's live patching; not proven. A guest's work is
# mostly one busy vCPU, so the turns cost little.
log=$work/console.log
set +e
timeout --foreground -k 5 "$timeout" qemu-system-x86_64 \
  -accel tcg,thread=single -cpu max -m 1024 -smp 2 \
  -nodefaults -nographic -serial stdio -no-reboot \
  -bios /usr/share/qemu/qboot.rom \
  -kernel "$kernel_dir/vmlinux" -initrd "$work/initrd" \
  -append "console=ttyS0 panic=-1 $console_level lsm=lockdown,capability,landlock,yama,apparmor,bpf" \
  </dev/null 2>&1 | tee "$log" | tr -d '\r'
qemu_status=${PIPESTATUS[0]}
set -e

# What the guest's kernel reported of itself, repeated after the output
# so that it is not lost in it.
# (The kernel's lines are the console's with a timestamp, which may follow
# a test's name on the same line: a test prints it before it runs.)
trouble=$(tr -d '\r' < "$log" |
  grep -aE '\[ *[0-9]+\.[0-9]+\] .*(BUG:|kernel BUG|WARNING:|Oops|general protection|invalid opcode|Kernel panic|soft lockup|rcu.*stall|blocked for more than)' |
  head -n 20 || true)
if [ -n "$trouble" ]; then
  echo "run-guest: the guest kernel reported:" >&2
  sed 's/^/  /' <<<"$trouble" >&2
fi

status=$(tr -d '\r' < "$log" | sed -n 's/^PALISADE-GUEST-EXIT=\([0-9]*\)$/\1/p' | tail -n1)
if [ -z "$status" ]; then
  if [ "$qemu_status" -eq 124 ]; then
    echo "run-guest: guest timed out after ${timeout}s" >&2
  else
    echo "run-guest: guest ended (qemu status $qemu_status) without reporting an exit status" >&2
  fi
  exit 125
fi
exit "$status"
