#!/usr/bin/env bash
# Run the shipped unit (systemd/pcpu-bpf.service) under a real systemd as PID 1: a Debian
# bookworm guest (stock kernel linux-image-amd64 6.1, its exactly matching headers) booted
# under qemu TCG. A manual, slow check (10-20 minutes), not part of the test suite.
#
#  1. Guest tree: `debootstrap --variant=minbase --include=systemd-sysv,udev,iproute2
#     bookworm`, then python3-bpfcc python3-venv bpftool curl ca-certificates
#     linux-image-amd64 linux-headers-amd64 (cached as a tarball, see --cache).
#  2. The repository (`git archive` of --commit) to /opt/pcpu-bpf, then `bash setup.sh` in a
#     chroot of the tree (private mount namespace), which installs the rest of its packages,
#     makes /opt/pcpu-bpf/.venv and installs the package. The chroot runs on the HOST
#     kernel, so setup.sh's header link is made for the host's `uname -r`: it is removed
#     again; the guest kernel's /lib/modules/<ver>/build comes from its headers package.
#  3. The unit installed exactly as systemd/README.md says (/etc/systemd/system/
#     pcpu-bpf.service, /etc/default/pcpu-bpf from pcpu-bpf.env), `systemctl enable
#     pcpu-bpf`; no drop-in unless --start-timeout is given (the drop-in then lives only in
#     the guest, and the log says so).
#  4. A oneshot pcpu-guest-check.service in the guest waits for pcpu-bpf to be active,
#     records status, properties, start-up time, the process's uid and capabilities,
#     /metrics (after some percpu work: `unshare -n true`), the zombie memory cgroups
#     (--zombies cgroups made under /sys/fs/cgroup/pcpu-zombies with +memory, page cache
#     charged in each, removed: dying counts, memory.stat percpu and the live bytes at the
#     memory-cgroup call sites, before and after, from /metrics), the journal, the online
#     `systemd-analyze security`, outlives one watchdog period, stops the unit and checks
#     that it stopped cleanly and that `bpftool prog show` lists none of its programs,
#     prints `PCPU-GUEST-CHECK: PASS` or `PCPU-GUEST-CHECK: FAIL (...)`, and powers off.
#     When call sites come out as hex addresses it also diagnoses why, in the guest only:
#     /proc/kallsyms as root, under the unit's exact sandbox, under that sandbox minus one
#     setting at a time, and the real daemon with candidate fixes as runtime drop-ins
#     (under /run, gone at power-off; the shipped unit is never changed).
#  5. The image (ext4, `mke2fs -d`) boots with qemu-system-x86_64 -accel tcg, serial console
#     captured to WORKDIR/logs/<stamp>/console.log; the verdict is grepped from there.
#
# Usage (as root):  scripts/systemd-guest-check.sh [options]
#   -c, --commit REF        commit to put in the guest (default: HEAD)
#   -w, --workdir DIR       tree, image, kernel and logs (default: /var/tmp/pcpu-guest)
#       --cache FILE        tarball of the guest tree before the repository goes in
#                           (default: /var/tmp/pcpu-guest-cache/bookworm-guest-amd64.tar)
#       --refresh-cache     build the cached tree again
#       --mirror URL        Debian mirror (default: http://deb.debian.org/debian)
#       --start-timeout S   add a GUEST-ONLY drop-in TimeoutStartSec=S (default: none, the
#                           shipped unit's 120 s applies)
#       --wait S            how long the guest waits for pcpu-bpf to become active
#                           (default: 900)
#       --boot-timeout S    kill qemu after S seconds (default: 2400)
#       --memory MB         guest memory (default: 2048)
#       --smp N             guest CPUs (default: 2)
#       --zombies N         memory cgroups made, charged and removed in the guest (default: 20)
#       --reuse-image       boot the existing WORKDIR/guest.img again, without rebuilding
#   -h, --help
#
# Exit status: 0 PASS, 1 FAIL (guest verdict FAIL or no verdict), 2 usage/infrastructure.
set -euo pipefail

SELF=$(readlink -f "$0")
PROG=systemd-guest-check
SUITE=bookworm
ARCH=amd64
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# What the guest needs beyond minbase + systemd-sysv,udev,iproute2 (setup.sh adds its own).
GUEST_PACKAGES=(python3-bpfcc python3-venv bpftool curl ca-certificates
                linux-image-amd64 linux-headers-amd64)

# shellcheck source=scripts/lib/tree.sh
. "$(dirname "$SELF")/lib/tree.sh"

COMMIT=HEAD
REPO=$(git -C "$(dirname "$SELF")" rev-parse --show-toplevel 2>/dev/null || true)
WORKDIR=/var/tmp/pcpu-guest
CACHE=/var/tmp/pcpu-guest-cache/$SUITE-guest-$ARCH.tar
REFRESH=0
MIRROR=http://deb.debian.org/debian
START_TIMEOUT=
WAIT=900
BOOT_TIMEOUT=2400
MEMORY=2048
SMP=2
ZOMBIES=20
REUSE_IMAGE=0
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    -c|--commit) COMMIT=${2:?}; shift 2 ;;
    -w|--workdir) WORKDIR=${2:?}; shift 2 ;;
    --cache) CACHE=${2:?}; shift 2 ;;
    --refresh-cache) REFRESH=1; shift ;;
    --mirror) MIRROR=${2:?}; shift 2 ;;
    --start-timeout) START_TIMEOUT=${2:?}; shift 2 ;;
    --wait) WAIT=${2:?}; shift 2 ;;
    --boot-timeout) BOOT_TIMEOUT=${2:?}; shift 2 ;;
    --memory) MEMORY=${2:?}; shift 2 ;;
    --smp) SMP=${2:?}; shift 2 ;;
    --zombies) ZOMBIES=${2:?}; shift 2 ;;
    --reuse-image) REUSE_IMAGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[ -n "$REPO" ] || die "not inside a git repository"
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, mounts)"
SHA=$(git -C "$REPO" rev-parse --verify "$COMMIT^{commit}" 2>/dev/null) || die "no commit $COMMIT"
WORKDIR=$(readlink -m "$WORKDIR")
CACHE=$(readlink -m "$CACHE")
case "$WORKDIR/" in "$REPO"/*) die "keep the work dir outside the repository" ;; esac
case "$CACHE/" in "$REPO"/*) die "keep the cache outside the repository" ;; esac
case "$WORKDIR" in /|/var|/var/tmp|/tmp|/root|/home) die "work dir $WORKDIR is too broad" ;; esac
for n in "$WAIT" "$BOOT_TIMEOUT" "$MEMORY" "$SMP" "$ZOMBIES" ${START_TIMEOUT:+"$START_TIMEOUT"}; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: $n"
done
TREE=$WORKDIR/tree
IMAGE=$WORKDIR/guest.img

# ---------------------------------------------------------------- helpers
mount_tree() {  # root
  mount --bind "$1" "$1"
  mount -t proc proc "$1/proc"
  mount --bind /sys "$1/sys"
  mount --bind /dev "$1/dev"
  mountpoint -q /dev/pts && mount --bind /dev/pts "$1/dev/pts"
  rm -f "$1/etc/resolv.conf"; : >"$1/etc/resolv.conf"
  mount --bind "$(readlink -f /etc/resolv.conf)" "$1/etc/resolv.conf"
}
release_tree() {  # root
  stop_procs_in_root "$1"
  unmount_under "$1"
  rm -f "$1/etc/resolv.conf"
}
in_tree() {  # root cmd... (clean environment, no stdin)
  local root=$1; shift
  chroot "$root" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 "$@" </dev/null
}

# ---------------------------------------------------------------- outer: host, namespace, qemu
if [ -z "${PCPU_GUEST_INNER:-}" ]; then
  need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v mke2fs >/dev/null || need+=(e2fsprogs)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing on the host: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
      >/dev/null || die "apt-get install ${need[*]}"
  fi
  mkdir -p "$WORKDIR/logs" "$(dirname "$CACHE")"
  STAMP=$(date +%Y%m%d-%H%M%S)
  LOGDIR=$WORKDIR/logs/$STAMP
  mkdir -p "$LOGDIR"
  export PCPU_GUEST_LOGDIR=$LOGDIR
  say "commit $SHA ($(git -C "$REPO" log -1 --format=%s "$SHA")); logs in $LOGDIR"
  QEMU_PID=
  # shellcheck disable=SC2317
  outer_cleanup() {
    [ -z "$QEMU_PID" ] || kill -TERM "$QEMU_PID" 2>/dev/null || true
    [ -d "$TREE" ] && stop_procs_in_root "$TREE"
    local left; left=$(mounts_under "$WORKDIR")
    [ -z "$left" ] || say "WARNING: mounts left under $WORKDIR: $left"
  }
  trap outer_cleanup EXIT
  trap 'exit 130' INT TERM

  if [ "$REUSE_IMAGE" -eq 1 ] && [ -s "$IMAGE" ] && [ -s "$WORKDIR/vmlinuz" ]; then
    say "reusing $IMAGE as it is (--reuse-image)"
  else
    PCPU_GUEST_INNER=1 unshare --mount --propagation private -- bash "$SELF" "${ARGS[@]}" \
      || die "building the guest image failed (log: $LOGDIR)"
  fi

  # Boot. The guest's check powers it off; -no-reboot turns a panic (panic=10) into an exit.
  CONSOLE=$LOGDIR/console.log
  say "booting under TCG (-m $MEMORY -smp $SMP), console -> $CONSOLE (timeout ${BOOT_TIMEOUT}s)"
  t0=$(now)
  timeout -k 10 "$BOOT_TIMEOUT" qemu-system-x86_64 -accel tcg -m "$MEMORY" -smp "$SMP" \
    -nographic -no-reboot -nic none \
    -kernel "$WORKDIR/vmlinuz" -initrd "$WORKDIR/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=10 loglevel=4 systemd.show_status=1" \
    -drive "file=$IMAGE,format=raw,if=virtio" </dev/null >"$CONSOLE" 2>&1 &
  QEMU_PID=$!
  tail -n +1 -f --pid="$QEMU_PID" "$CONSOLE" 2>/dev/null | tr -d '\r' | grep --line-buffered -E \
    '^(GUEST|PCPU-GUEST-CHECK)|Reached target|Kernel panic|pcpu-bpf' >&2 &
  TAILER=$!
  set +e
  wait "$QEMU_PID"; qrc=$?
  set -e
  QEMU_PID=
  wait "$TAILER" 2>/dev/null || true
  say "qemu exited ($qrc) after $(secs "$t0" "$(now)") s"
  tr -d '\r' <"$CONSOLE" | sed -n '/^GUEST-SUMMARY-BEGIN/,/^GUEST-SUMMARY-END/p' >"$LOGDIR/summary.txt" || true
  cat "$LOGDIR/summary.txt" >&2
  verdict=$(tr -d '\r' <"$CONSOLE" | grep -E '^PCPU-GUEST-CHECK: ' | tail -n 1 || true)
  if [ -z "$verdict" ]; then
    say "no verdict on the console (qemu rc $qrc; 124 = --boot-timeout); last lines:"
    tr -d '\r' <"$CONSOLE" | tail -n 40 >&2
    exit 1
  fi
  say "$verdict (console log: $CONSOLE)"
  case "$verdict" in *": PASS"*) exit 0 ;; *) exit 1 ;; esac
fi

# ---------------------------------------------------------------- inner: build the image
LOGDIR=${PCPU_GUEST_LOGDIR:?}
# shellcheck disable=SC2317
inner_cleanup() {
  local d
  for d in "$TREE" "$WORKDIR/debootstrap.tmp"; do
    [ -d "$d" ] || continue
    stop_procs_in_root "$d"; unmount_under "$d" || true
  done
}
trap inner_cleanup EXIT
trap 'exit 130' INT TERM

# 1. The cached guest tree: minbase + systemd + the guest's packages.
t0=$(now)
if [ "$REFRESH" -eq 1 ] || [ ! -s "$CACHE" ]; then
  tmp=$WORKDIR/debootstrap.tmp
  remove_tree "$tmp"
  say "debootstrap --variant=minbase --include=systemd-sysv,udev,iproute2 $SUITE ($MIRROR)"
  debootstrap --variant=minbase --include=systemd-sysv,udev,iproute2 --arch="$ARCH" \
    "$SUITE" "$tmp" "$MIRROR" >"$LOGDIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGDIR/debootstrap.log" >&2; die "debootstrap failed"; }
  stop_procs_in_root "$tmp"; unmount_under "$tmp"
  mount_tree "$tmp"
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"; chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  say "apt-get install ${GUEST_PACKAGES[*]} (in the tree)"
  { in_tree "$tmp" apt-get update -q \
    && in_tree "$tmp" apt-get install -y -q --no-install-recommends "${GUEST_PACKAGES[@]}"; } \
    >"$LOGDIR/guest-packages.log" 2>&1 \
    || { tail -n 30 "$LOGDIR/guest-packages.log" >&2; die "apt-get install in the tree failed"; }
  rm -f "$tmp/usr/sbin/policy-rc.d"
  release_tree "$tmp"
  rm -rf "$tmp"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$tmp" -cf "$CACHE.part" . && mv "$CACHE.part" "$CACHE"
  remove_tree "$tmp"
  say "guest tree cached in $(secs "$t0" "$(now)") s ($(du -h "$CACHE" | cut -f1))"
else
  say "reusing cached guest tree $CACHE ($(date -r "$CACHE" +%F\ %T))"
fi

# 2. This run's tree, with the repository in /opt/pcpu-bpf and setup.sh run in a chroot.
remove_tree "$TREE"
mkdir -p "$TREE"
tar --numeric-owner -C "$TREE" -xpf "$CACHE"
KVER=$(find "$TREE/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
[ -n "$KVER" ] || die "no kernel in $TREE/boot"
KBUILD=$(readlink "$TREE/lib/modules/$KVER/build" || true)  # absolute, inside the tree
if [ -z "$KBUILD" ] || [ ! -e "$TREE$KBUILD/include" ]; then die "no headers for $KVER in the tree"; fi
say "guest kernel $KVER; /lib/modules/$KVER/build -> $KBUILD"
mkdir -p "$TREE/opt/pcpu-bpf"
git -C "$REPO" archive --format=tar "$SHA" | tar -C "$TREE/opt/pcpu-bpf" -xf -
mount_tree "$TREE"
# pip reaches PyPI from the chroot through the host's network: a TLS-intercepting egress
# proxy needs the host's extra CA certificates (the guest itself has no network).
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$TREE/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$TREE/usr/local/share/ca-certificates/"
  in_tree "$TREE" update-ca-certificates >"$LOGDIR/ca.log" 2>&1 || die "update-ca-certificates"
fi
HOST_KVER=$(uname -r)
had_host_modules=0; [ -e "$TREE/lib/modules/$HOST_KVER" ] && had_host_modules=1
say "bash setup.sh in a chroot of the tree (log: $LOGDIR/setup.log)"
t1=$(now)
printf '#!/bin/sh\nexit 101\n' >"$TREE/usr/sbin/policy-rc.d"; chmod 0755 "$TREE/usr/sbin/policy-rc.d"
in_tree "$TREE" bash -c 'cd /opt/pcpu-bpf && bash setup.sh' >"$LOGDIR/setup.log" 2>&1 \
  || { tail -n 30 "$LOGDIR/setup.log" >&2; die "setup.sh failed in the chroot"; }
rm -f "$TREE/usr/sbin/policy-rc.d"
sed 's/^/    setup.sh: /' "$LOGDIR/setup.log" >&2
say "setup.sh done in $(secs "$t1" "$(now)") s"
release_tree "$TREE"
# The chroot's `uname -r` is the host's: drop the header link setup.sh made for it.
if [ "$had_host_modules" -eq 0 ] && [ "$HOST_KVER" != "$KVER" ] && [ -d "$TREE/lib/modules/$HOST_KVER" ]; then
  say "removing /lib/modules/$HOST_KVER (setup.sh's link for the host kernel) from the tree"
  rm -rf --one-file-system -- "${TREE:?}/lib/modules/$HOST_KVER"
fi

# 3. The unit, exactly as systemd/README.md says; plus the guest's own plumbing.
install -m 0644 "$TREE/opt/pcpu-bpf/systemd/pcpu-bpf.service" "$TREE/etc/systemd/system/"
install -m 0644 "$TREE/opt/pcpu-bpf/systemd/pcpu-bpf.env" "$TREE/etc/default/pcpu-bpf"
in_tree "$TREE" systemctl enable pcpu-bpf >>"$LOGDIR/setup.log" 2>&1 || die "systemctl enable pcpu-bpf"
if [ -n "$START_TIMEOUT" ]; then
  mkdir -p "$TREE/etc/systemd/system/pcpu-bpf.service.d"
  printf '# GUEST ONLY (systemd-guest-check.sh --start-timeout): bcc under qemu TCG is slow.\n[Service]\nTimeoutStartSec=%ss\n' \
    "$START_TIMEOUT" >"$TREE/etc/systemd/system/pcpu-bpf.service.d/guest-tcg.conf"
  say "GUEST-ONLY drop-in: TimeoutStartSec=${START_TIMEOUT}s"
fi
echo pcpu-guest >"$TREE/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$TREE/etc/fstab"
# A quiet console: the check's output, not a login prompt.
ln -sfn /dev/null "$TREE/etc/systemd/system/serial-getty@ttyS0.service"
ln -sfn /dev/null "$TREE/etc/systemd/system/getty@tty1.service"

cat >"$TREE/etc/systemd/system/pcpu-guest-check.service" <<'EOF'
[Unit]
Description=pcpu-bpf guest check (systemd-guest-check.sh)
After=pcpu-bpf.service

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/local/sbin/pcpu-guest-check
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
EOF
printf 'WAIT=%s\nZOMBIES=%s\n' "$WAIT" "$ZOMBIES" >"$TREE/etc/default/pcpu-guest-check"
cat >"$TREE/usr/local/sbin/pcpu-guest-check" <<'EOF'
#!/bin/bash
# Runs in the guest at boot (pcpu-guest-check.service); output goes to the serial console.
set -u
. /etc/default/pcpu-guest-check
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat TERM=dumb
FAILS=()
SUMMARY=()
sec() { echo; echo "GUEST ==== $* ===="; }
note() { echo "GUEST: $*"; SUMMARY+=("$*"); }
bad() { echo "GUEST: FAIL: $*"; FAILS+=("$*"); SUMMARY+=("FAIL: $*"); }
prop() { systemctl show pcpu-bpf -P "$1"; }
mono_s() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", (b - a) / 1e6; else print "n/a" }'; }
kallsyms_diag() {  # why call sites are hex: run after the shipped unit was checked and stopped
    sec "why hex call sites: kallsyms as root and as a DynamicUser with the unit's capabilities"
    note "sysctl kptr_restrict=$(cat /proc/sys/kernel/kptr_restrict) perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)"
    grep -Eo 'call_site="0x[0-9a-f]+"' /run/pcpu-metrics.txt | grep -Eo '0x[0-9a-f]+' | sort -u | head -n 5 >/run/pcpu-hex.txt
    cat >/run/pcpu-kallsyms-diag.py <<'PY'
import os, sys
from pcpu_bpf.model.symbolizer import Symbolizer
text = open("/proc/kallsyms").read()
lines = text.splitlines()
nonzero = sum(1 for l in lines if int(l.split()[0], 16))
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")]
print(f"uid {os.getuid()} CapEff {caps[0]}: /proc/kallsyms {len(lines)} lines, {nonzero} with an address; first: {lines[0]!r}")
s = Symbolizer.from_kallsyms_text(text)
for a in open("/run/pcpu-hex.txt").read().split():
    print(f"  {a} -> {s.resolve(int(a, 16))}")
PY
    /opt/pcpu-bpf/.venv/bin/python /run/pcpu-kallsyms-diag.py 2>&1 | sed 's/^/GUEST: root: /'
    # The same sandbox, exactly: a copy of the installed unit with only Type=, ExecStart=
    # and the watchdog changed (systemd-run needs D-Bus, which minbase has not).
    sed -e 's/^Type=.*/Type=oneshot/' -e '/^WatchdogSec=/d' -e '/^Restart=/d' \
        -e 's|^ExecStart=.*|ExecStart=/opt/pcpu-bpf/.venv/bin/python /run/pcpu-kallsyms-diag.py|' \
        -e '/^\[Install\]/,$d' /etc/systemd/system/pcpu-bpf.service >/run/systemd/system/pcpu-kallsyms-diag.service
    systemctl daemon-reload
    systemctl start pcpu-kallsyms-diag.service
    journalctl -b -o cat --no-pager _SYSTEMD_UNIT=pcpu-kallsyms-diag.service | sed 's/^/GUEST: same sandbox: /'
    # Which setting empties or zeroes kallsyms: the same sandbox without one line at a time.
    mk_variant() {  # name sed-expr...
      local name=$1; shift
      sed -e 's/^Type=.*/Type=oneshot/' -e '/^WatchdogSec=/d' -e '/^Restart=/d' \
          -e "s|^ExecStart=.*|ExecStart=/bin/sh -c 'echo \$\$(wc -l </proc/kallsyms) lines, \$\$(grep -vc ^0000000000000000 /proc/kallsyms) with an address'|" \
          -e '/^\[Install\]/,$d' "$@" /etc/systemd/system/pcpu-bpf.service >/run/systemd/system/"$name".service
    }
    mk_variant pcpu-kd-all
    n=0
    while IFS= read -r line; do
      n=$((n + 1))
      mk_variant "pcpu-kd-$n" -e "\|^${line//|/\\|}\$|d"
      echo "$line" >"/run/pcpu-kd-$n.what"
    done < <(sed -n '/^DynamicUser=/,/^\[Install\]/p' /etc/systemd/system/pcpu-bpf.service \
             | grep -E '^[A-Za-z]+=' )
    systemctl daemon-reload
    systemctl start pcpu-kd-all.service
    echo "GUEST: kallsyms, same sandbox (/bin/sh): $(journalctl -b -o cat --no-pager _SYSTEMD_UNIT=pcpu-kd-all.service | tail -n 1)"
    for ((k = 1; k <= n; k++)); do
      systemctl start "pcpu-kd-$k.service"
      echo "GUEST: kallsyms without $(cat /run/pcpu-kd-$k.what): $(journalctl -b -o cat --no-pager _SYSTEMD_UNIT=pcpu-kd-$k.service | tail -n 1)"
    done
    # Candidate fixes (GUEST-ONLY experiments; the shipped unit is not changed): first
    # the same /bin/sh probe, then the real daemon with a runtime drop-in.
    printf 'BindReadOnlyPaths=/proc/kallsyms\n' >/run/pcpu-fix-1.conf
    printf 'ProtectKernelTunables=no\nReadOnlyPaths=/sys /proc/sys -/proc/sysrq-trigger -/proc/latency_stats -/proc/acpi -/proc/timer_stats -/proc/fs -/proc/irq -/proc/asound -/proc/bus\nInaccessiblePaths=-/proc/kcore\n' >/run/pcpu-fix-2.conf
    FIXES=()
    for f in 1 2; do
      mk_variant "pcpu-kd-fix$f" -e "/^UMask=/r /run/pcpu-fix-$f.conf"
      systemctl daemon-reload
      systemctl start "pcpu-kd-fix$f.service"
      r=$(journalctl -b -o cat --no-pager _SYSTEMD_UNIT=pcpu-kd-fix$f.service | tail -n 1)
      note "candidate fix $f ($(tr '\n' ' ' </run/pcpu-fix-$f.conf)): kallsyms $r"
      case "$r" in [1-9]*" lines, "[1-9]*) FIXES+=("$f") ;; esac
    done
    for FIX in "${FIXES[@]}"; do
      sec "GUEST-ONLY: the real daemon with candidate fix $FIX as a runtime drop-in"
      mkdir -p /run/systemd/system/pcpu-bpf.service.d
      { echo "[Service]"; cat "/run/pcpu-fix-$FIX.conf"; } >/run/systemd/system/pcpu-bpf.service.d/zz-kallsyms-fix.conf
      systemctl daemon-reload
      systemctl stop pcpu-bpf
      t=$(cut -d' ' -f1 /proc/uptime)
      systemctl start pcpu-bpf
      note "fix $FIX: start $(systemctl is-active pcpu-bpf) after $(awk -v a="$t" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s; drop-ins: $(prop DropInPaths)"
      for _ in 1 2 3 4 5; do unshare -n true; done
      sleep 3
      curl -fsS --max-time 60 http://127.0.0.1:9717/metrics -o /run/pcpu-metrics-fix.txt || true
      named=$(grep -E '^pcpu_allocations_total\{' /run/pcpu-metrics-fix.txt | grep -Ec 'call_site="[A-Za-z_]' || true)
      hex=$(grep -E '^pcpu_allocations_total\{' /run/pcpu-metrics-fix.txt | grep -Ec 'call_site="0x' || true)
      grep -E '^pcpu_allocations_total\{' /run/pcpu-metrics-fix.txt | sort -t' ' -k2 -rn | head -n 12
      note "fix $FIX: pcpu_allocations_total series: $named with a function name, $hex with a hex address"
      note "fix $FIX: $(systemd-analyze security pcpu-bpf --no-pager | grep -E 'Overall exposure' | sed 's/^→ //')"
      systemd-analyze security pcpu-bpf --no-pager | grep -E 'ProtectKernelTunables|kallsyms' || true
      systemctl stop pcpu-bpf
      rm -rf /run/systemd/system/pcpu-bpf.service.d
      systemctl daemon-reload
    done
}
DIAG=0
PROGS='name (on_alloc|on_free|on_alloc_fail|on_create_chunk|on_destroy_chun)'

sec "guest"
note "kernel $(uname -r), systemd $(systemctl --version | head -n1 | cut -d' ' -f2), $(nproc) CPUs, up $(cut -d' ' -f1 /proc/uptime) s"
note "CONFIG_PERCPU_STATS: $(grep -E 'CONFIG_PERCPU_STATS[ =]' /boot/config-"$(uname -r)" || echo '(not in config)')"
note "kernel headers: /lib/modules/$(uname -r)/build -> $(readlink -f /lib/modules/"$(uname -r)"/build)"

sec "waiting up to ${WAIT}s for pcpu-bpf to be active"
state=
for ((i = 0; i < WAIT; i++)); do
  state=$(systemctl is-active pcpu-bpf)
  [ "$state" = active ] && break
  [ $((i % 30)) -eq 0 ] && echo "GUEST: t+${i}s: $state ($(prop SubState), restarts $(prop NRestarts))"
  sleep 1
done
note "pcpu-bpf is $state after ${i}s of waiting (uptime $(cut -d' ' -f1 /proc/uptime) s)"
[ "$state" = active ] || bad "pcpu-bpf not active: $state"

sec "systemctl status pcpu-bpf --no-pager"
systemctl status pcpu-bpf --no-pager -l
sec "systemctl show"
systemctl show pcpu-bpf -p ActiveState -p SubState -p StatusText -p NRestarts -p MainPID \
  -p Result -p Type -p NotifyAccess -p TimeoutStartUSec -p WatchdogUSec -p DropInPaths
start=$(prop ExecMainStartTimestampMonotonic); ready=$(prop ActiveEnterTimestampMonotonic)
inact=$(prop InactiveExitTimestampMonotonic)
note "start-up (ExecMainStart -> active/READY=1): $(mono_s "$start" "$ready") s; since the start job began: $(mono_s "$inact" "$ready") s"
note "StatusText: $(prop StatusText)"
note "NRestarts: $(prop NRestarts)"
[ "$(prop NRestarts)" = 0 ] || bad "NRestarts=$(prop NRestarts)"
echo "--- mounts the unit pulled in"
findmnt -n /sys/kernel/tracing || bad "/sys/kernel/tracing not mounted"
findmnt -n /sys/kernel/debug || bad "/sys/kernel/debug not mounted"
systemctl show sys-kernel-tracing.mount sys-kernel-debug.mount -p Id -p ActiveState

pid=$(prop MainPID)
if [ "$state" = active ] && [ "$pid" != 0 ]; then
  sec "the process ($pid)"
  grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/"$pid"/status
  uid=$(awk '/^Uid:/ { print $2 }' /proc/"$pid"/status)
  eff=$(awk '/^CapEff:/ { print $2 }' /proc/"$pid"/status)
  uname_=$(getent passwd "$uid" | cut -d: -f1 || true)
  note "uid $uid (${uname_:-no passwd entry: libnss-systemd is not installed}), CapEff $eff (want 000000c400000004 = DAC_READ_SEARCH SYSLOG PERFMON BPF)"
  [ "$uid" != 0 ] || bad "runs as root, not a DynamicUser"
  [ "$eff" = 000000c400000004 ] || bad "CapEff $eff"
fi

sec "percpu work, then /metrics"
for _ in 1 2 3 4 5; do unshare -n true; done
sleep 3
if curl -fsS --max-time 60 http://127.0.0.1:9717/metrics -o /run/pcpu-metrics.txt; then
  grep -E '^pcpu_(collector_success|exporter_info)' /run/pcpu-metrics.txt
  echo "--- pcpu_allocations_total (first 25 of $(grep -c '^pcpu_allocations_total' /run/pcpu-metrics.txt))"
  grep -E '^pcpu_allocations_total' /run/pcpu-metrics.txt | sort -t' ' -k2 -rn | head -n 25
  echo "--- other"
  grep -E '^pcpu_(meminfo_bytes|tracepoint_field_available|collector_errors_total|bpf_program_recursion|tracking_dropped)' /run/pcpu-metrics.txt
  for c in snapshot tracing meminfo percpu_stats cgroups bpf_maps; do
    v=$(awk -v c="$c" '$1 == "pcpu_collector_success{collector=\"" c "\"}" { print $2 }' /run/pcpu-metrics.txt)
    note "pcpu_collector_success{collector=\"$c\"} ${v:-missing}"
    case "$c:$v" in
      percpu_stats:0.0|percpu_stats:0) ;;  # CONFIG_PERCPU_STATS off on 6.1: degrade, expected
      percpu_stats:*) bad "percpu_stats collector is '$v', expected 0 on a kernel without CONFIG_PERCPU_STATS" ;;
      bpf_maps:0.0|bpf_maps:0) ;;  # listing the host's BPF maps needs CAP_SYS_ADMIN: an opt-in
      bpf_maps:*) bad "bpf_maps collector is '$v', expected 0 without CAP_SYS_ADMIN" ;;
      *:1.0|*:1) ;;
      *) bad "collector $c success '$v'" ;;
    esac
  done
  grep -q '^pcpu_exporter_info{.*backend="bpf"' /run/pcpu-metrics.txt || bad "no pcpu_exporter_info with backend=bpf"
  named=$(grep -E '^pcpu_allocations_total\{' /run/pcpu-metrics.txt | grep -Ec 'call_site="[A-Za-z_]' || true)
  hex=$(grep -E '^pcpu_allocations_total\{' /run/pcpu-metrics.txt | grep -Ec 'call_site="0x' || true)
  note "pcpu_allocations_total series: $named with a function name, $hex with a hex address"
  [ "$named" -gt 0 ] || bad "no call site has a function name"
  [ "$hex" -eq 0 ] || DIAG=1
else
  bad "curl /metrics failed"
fi

# Zombie memory cgroups under systemd's cgroup v2: made, charged with page cache, removed.
# They stay dying (the page cache still holds them) with their percpu statistics live.
sec "zombie memory cgroups: $ZOMBIES made, page cache charged, removed"
metric() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
live_by_site() {  # pcpu_live_bytes summed by call site: "site bytes" lines
  awk -F'[{}", ]+' '/^pcpu_live_bytes\{/ { for (i = 2; i < NF; i += 2) if ($i == "call_site=") s = $(i + 1); b[s] += $NF }
    END { for (s in b) printf "%s %d\n", s, b[s] }' "$1" | sort
}
Z=/sys/fs/cgroup/pcpu-zombies
note "root cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
grep -qw memory /sys/fs/cgroup/cgroup.subtree_control || echo +memory >/sys/fs/cgroup/cgroup.subtree_control
mkdir -p "$Z" && echo +memory >"$Z/cgroup.subtree_control"
sleep 6  # the daemon reads the cgroups at most once per --min-read-interval (5 s)
curl -fsS --max-time 60 http://127.0.0.1:9717/metrics -o /run/pcpu-zombie-before.txt || bad "curl /metrics (zombies, before)"
d0=$(awk '$1 == "nr_dying_descendants" { print $2 }' /sys/fs/cgroup/cgroup.stat)
for ((z = 1; z <= ZOMBIES; z++)); do
  mkdir "$Z/z$z"
  sh -c "echo \$\$ >$Z/z$z/cgroup.procs && exec dd if=/dev/zero of=/var/tmp/pcpu-zombie-$z bs=1M count=2 status=none"
  rmdir "$Z/z$z"
done
sleep 6
curl -fsS --max-time 60 http://127.0.0.1:9717/metrics -o /run/pcpu-zombie-after.txt || bad "curl /metrics (zombies, after)"
d1=$(awk '$1 == "nr_dying_descendants" { print $2 }' /sys/fs/cgroup/cgroup.stat)
m0=$(metric 'pcpu_cgroup_dying_descendants{hierarchy="unified"}' /run/pcpu-zombie-before.txt)
m1=$(metric 'pcpu_cgroup_dying_descendants{hierarchy="unified"}' /run/pcpu-zombie-after.txt)
note "root cgroup.stat nr_dying_descendants: $d0 -> $d1; $Z: $(awk '$1 == "nr_dying_descendants" { print $2 }' "$Z/cgroup.stat")"
note "pcpu_cgroup_dying_descendants{hierarchy=\"unified\"}: ${m0:-missing} -> ${m1:-missing}"
[ -n "$m1" ] && awk -v a="${m0:-0}" -v b="$m1" -v n="$ZOMBIES" 'BEGIN { exit !(b - a >= n) }' \
  || bad "pcpu_cgroup_dying_descendants did not rise by $ZOMBIES"
stat_percpu=$(awk '$1 == "percpu" { print $2 }' "$Z/memory.stat")
exported=$(metric 'pcpu_cgroup_memory_percpu_bytes{cgroup="/pcpu-zombies"}' /run/pcpu-zombie-after.txt)
note "$Z memory.stat percpu (its dying children's statistics, charged to it): $stat_percpu bytes; pcpu_cgroup_memory_percpu_bytes{cgroup=\"/pcpu-zombies\"} ${exported:-missing}"
[ -n "$exported" ] || bad "no pcpu_cgroup_memory_percpu_bytes for /pcpu-zombies"
echo "--- pcpu_cgroup_memory_percpu_bytes (after)"
grep -E '^pcpu_cgroup_memory_percpu_bytes' /run/pcpu-zombie-after.txt | sort -t' ' -k2 -rn | head -n 10
echo "--- live bytes that grew, by call site (before -> after)"
join -a 2 -e 0 -o 0,1.2,2.2 <(live_by_site /run/pcpu-zombie-before.txt) <(live_by_site /run/pcpu-zombie-after.txt) \
  | awk '$3 > $2 { printf "%s %d -> %d (+%d)\n", $1, $2, $3, $3 - $2 }' | sort -t'+' -k2 -rn | head -n 12 \
  | tee /run/pcpu-zombie-grew.txt
note "live bytes grew at: $(awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $NF }' /run/pcpu-zombie-grew.txt)"
grep -Eq '^(mem_cgroup_css_alloc|mem_cgroup_alloc|alloc_mem_cgroup_per_node_info) ' /run/pcpu-zombie-grew.txt \
  || bad "no live bytes grew at a memory-cgroup call site"
rm -f /var/tmp/pcpu-zombie-*  # frees the page cache: the zombies can go, in their time

sec "journalctl -u pcpu-bpf -b --no-pager | tail -40"
journalctl -u pcpu-bpf -b --no-pager | tail -n 40

sec "systemd-analyze security pcpu-bpf"
systemd-analyze security pcpu-bpf --no-pager | tee /run/pcpu-security.txt
note "$(grep -E 'Overall exposure level' /run/pcpu-security.txt | sed 's/^→ //')"

sec "bpftool prog show (while running)"
bpftool prog show | grep -E "$PROGS" || true
n_before=$(bpftool prog show | grep -Ec "$PROGS" || true)
note "programs of pcpu-bpf loaded while running: $n_before"
[ "$state" != active ] || [ "$n_before" -ge 4 ] || bad "only $n_before of its programs loaded"

# Outlive the watchdog (WatchdogSec=30s) at least once after start-up.
since=$(awk -v r="$ready" -v n="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%d", n - r / 1e6 }')
if [ "$state" = active ] && [ "$since" -lt 75 ]; then
  sleep $((75 - since))
fi
note "after $(awk -v r="$ready" -v n="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%d", n - r / 1e6 }') s active: $(systemctl is-active pcpu-bpf), NRestarts $(prop NRestarts), MainPID $(prop MainPID) (was $pid)"
[ "$(prop NRestarts)" = 0 ] && [ "$(prop MainPID)" = "$pid" ] || bad "restarted while running (watchdog?)"

sec "systemctl stop pcpu-bpf"
t=$(cut -d' ' -f1 /proc/uptime)
systemctl stop pcpu-bpf; rc=$?
note "systemctl stop: exit $rc in $(awk -v a="$t" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"
systemctl show pcpu-bpf -p ActiveState -p SubState -p Result -p ExecMainCode -p ExecMainStatus
res=$(prop Result); code=$(prop ExecMainCode); status=$(prop ExecMainStatus)
note "after stop: $(prop ActiveState), Result=$res, ExecMainCode=$code ExecMainStatus=$status"
[ "$res" = success ] || bad "stop Result=$res"
[ "$(prop ActiveState)" = inactive ] || bad "not inactive after stop"
journalctl -u pcpu-bpf -b --no-pager | tail -n 8
n_after=$(bpftool prog show | grep -Ec "$PROGS" || true)
note "programs of pcpu-bpf loaded after stop: $n_after"
[ "$n_after" -eq 0 ] || bad "$n_after programs still loaded after stop"
bpftool prog show | grep -E "$PROGS" || true

[ "$DIAG" -eq 0 ] || kallsyms_diag

echo
echo "GUEST-SUMMARY-BEGIN"
printf '  %s\n' "${SUMMARY[@]}"
echo "GUEST-SUMMARY-END"
if [ ${#FAILS[@]} -eq 0 ]; then
  echo "PCPU-GUEST-CHECK: PASS"
else
  echo "PCPU-GUEST-CHECK: FAIL ($(IFS=';'; echo "${FAILS[*]}"))"
fi
sync
systemctl poweroff --no-block
EOF
chmod 0755 "$TREE/usr/local/sbin/pcpu-guest-check"
in_tree "$TREE" systemctl enable pcpu-guest-check >>"$LOGDIR/setup.log" 2>&1 || die "enable pcpu-guest-check"

# 4. Kernel, initrd and the image.
cp "$TREE/boot/vmlinuz-$KVER" "$WORKDIR/vmlinuz"
cp "$TREE/boot/initrd.img-$KVER" "$WORKDIR/initrd.img"
rm -f "$IMAGE"
size_mb=$(( $(du -sm --one-file-system "$TREE" | cut -f1) + 3072 ))
say "mke2fs -t ext4 -d $TREE $IMAGE (${size_mb} MiB)"
mke2fs -q -t ext4 -L pcpu-guest -d "$TREE" "$IMAGE" "${size_mb}M" >"$LOGDIR/mke2fs.log" 2>&1 \
  || { cat "$LOGDIR/mke2fs.log" >&2; die "mke2fs failed"; }
remove_tree "$TREE"
say "image ready"
