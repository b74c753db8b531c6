#!/usr/bin/env bash
# Install the Debian package on a Debian host under a real systemd (PID 1) and take it
# through its life: install, enable, scrape, restart, stop, start early in the next boot,
# purge. The host is a bookworm guest (stock kernel linux-image-amd64 6.1 with its exactly
# matching headers) booted twice under qemu TCG. A manual, slow check (10-20 minutes),
# not part of the test suite.
#
#  1. The package: scripts/build-deb.sh builds pcpu-bpf_<version>_all.deb from --commit
#     (lintian included).
#  2. Guest tree: `debootstrap --variant=minbase --include=systemd-sysv,udev,iproute2
#     bookworm` from the archive this host's apt uses, plus linux-image-amd64,
#     linux-headers-amd64 (matching the kernel, so the package's headers dependency is
#     met as on an up-to-date host), bpftool and curl for the check itself (cached as a
#     tarball, see --cache). The .deb goes to GUEST_DEB_DIR; what `apt install` will need from
#     the archive (python3-bpfcc, python3-click, ...) is downloaded into apt's cache in
#     a chroot, because the guest has no network. Nothing is installed.
#  3. Boot 1 (pcpu-guest-check.service, after multi-user.target: a host that has booted):
#     `apt install ./pcpu-bpf_*.deb` (the files, the user, the unit not enabled),
#     `systemctl enable --now pcpu-bpf`, its process (user, capabilities), /metrics after
#     some percpu work, the share of meminfo Percpu traced when started after boot,
#     `systemd-analyze security`, a restart (the pinned set adopted: tracking start time
#     unchanged, counters not back), one watchdog period, `systemctl stop` (the set stays
#     pinned and attached, by design); then power off.
#  4. Boot 2: the unit starts early in boot (DefaultDependencies=no, Before=sysinit.target):
#     where it lands in boot and what boot pays for it, the share of meminfo Percpu traced
#     when started early, then stop and `apt purge pcpu-bpf`: no pins, no programs, no file
#     of the package, no user or group, no unit. Before the purge, the zombie memory
#     cgroup demo (scripts/zombie-memcg-demo.sh, copied from the same commit) runs under
#     cgroup v2 with the installed package; its figures go into the summary. Prints `PCPU-GUEST-CHECK: PASS` or
#     `PCPU-GUEST-CHECK: FAIL (...)`, and powers off.
#  Both boots enable the percpu trace events from early in start_kernel (kernel command
#  line trace_event=), an independent record of every dynamic percpu allocation since
#  then: the guest compares the daemon's live table with it.
#  5. The image (ext4, `mke2fs -d`) boots with qemu-system-x86_64 -accel tcg, serial console
#     captured to WORKDIR/logs/<stamp>/console-<boot>.log; the verdict is grepped from there.
#
# Usage (as root):  scripts/systemd-guest-check.sh [options]
#   -c, --commit REF        commit to build the package from (default: HEAD)
#   -w, --workdir DIR       tree, image, kernel and logs (default: /var/tmp/pcpu-guest)
#       --cache FILE        tarball of the guest tree before the package goes in
#                           (default: /var/tmp/pcpu-guest-cache/bookworm-guest-amd64-<hash
#                           of the package list>.tar)
#       --refresh-cache     build the cached tree again
#       --mirror URL        Debian mirror (default: the one this host's apt uses for bookworm)
#       --start-timeout S   add a GUEST-ONLY drop-in TimeoutStartSec=S (default: none, the
#                           shipped unit's 120 s applies)
#       --wait S            how long the guest waits for pcpu-bpf to become active
#                           (default: 900)
#       --boot-timeout S    kill qemu after S seconds, per boot (default: 2400)
#       --memory MB         guest memory (default: 2048)
#       --smp N             guest CPUs (default: 2)
#       --reuse-image       boot the image the last run built again (its first boot state)
#   -h, --help
#
# Exit status: 0 PASS, 1 FAIL (guest verdict FAIL or no verdict), 2 usage/infrastructure.
set -euo pipefail

SELF=$(readlink -f "$0")
PROG=systemd-guest-check
SUITE=bookworm
ARCH=amd64
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# What the guest has before the package: a kernel with its headers, and the check's tools.
GUEST_PACKAGES=(linux-image-amd64 linux-headers-amd64 bpftool curl ca-certificates)
# The percpu trace events from early boot, the ring buffer large enough to keep them all.
TRACE_CMDLINE="trace_event=percpu:percpu_alloc_percpu,percpu:percpu_free_percpu trace_buf_size=32M"

# shellcheck source=scripts/lib/tree.sh
. "$(dirname "$SELF")/lib/tree.sh"

COMMIT=HEAD
REPO=$(git -C "$(dirname "$SELF")" rev-parse --show-toplevel 2>/dev/null || true)
WORKDIR=/var/tmp/pcpu-guest
CACHE=/var/tmp/pcpu-guest-cache/$SUITE-guest-$ARCH-$(echo "${GUEST_PACKAGES[*]}" | sha256sum | cut -c1-8).tar
REFRESH=0
MIRROR=
START_TIMEOUT=
WAIT=900
BOOT_TIMEOUT=2400
MEMORY=2048
SMP=2
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
for n in "$WAIT" "$BOOT_TIMEOUT" "$MEMORY" "$SMP" ${START_TIMEOUT:+"$START_TIMEOUT"}; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: $n"
done
[ -n "$MIRROR" ] || MIRROR=$(apt_mirror "$SUITE")
[ -n "$MIRROR" ] || die "apt on this host has no source for $SUITE main: give --mirror URL"
TREE=$WORKDIR/tree
IMAGE=$WORKDIR/guest.img
PRISTINE=$WORKDIR/guest-first-boot.img
DEBDIR=$WORKDIR/deb

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
  say "commit $SHA ($(git -C "$REPO" log -1 --format=%s "$SHA" | cut -c1-80)); logs in $LOGDIR"
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

  if [ "$REUSE_IMAGE" -eq 1 ] && [ -s "$PRISTINE" ] && [ -s "$WORKDIR/vmlinuz" ]; then
    say "reusing $PRISTINE as it is (--reuse-image)"
  else
    # 1. The package.
    rm -rf "$DEBDIR"
    say "scripts/build-deb.sh --commit $SHA"
    "$REPO/scripts/build-deb.sh" --commit "$SHA" --outdir "$DEBDIR" >"$LOGDIR/build-deb.out" \
      2>"$LOGDIR/build-deb.log" || { tail -n 30 "$LOGDIR/build-deb.log" >&2; die "build-deb.sh failed"; }
    sed 's/^/    /' "$LOGDIR/build-deb.log" >&2
    PCPU_GUEST_INNER=1 PCPU_GUEST_MIRROR=$MIRROR unshare --mount --propagation private -- \
      bash "$SELF" "${ARGS[@]}" || die "building the guest image failed (log: $LOGDIR)"
    cp --sparse=always "$IMAGE" "$PRISTINE"
  fi
  cp --sparse=always "$PRISTINE" "$IMAGE"

  # Boot until the guest gives a verdict: the first boot ends asking for the second. The
  # guest powers itself off; -no-reboot turns a panic (panic=10) into an exit.
  verdict=
  for boot in 1 2; do
    CONSOLE=$LOGDIR/console-$boot.log
    say "boot $boot under TCG (-m $MEMORY -smp $SMP), console -> $CONSOLE (timeout ${BOOT_TIMEOUT}s)"
    t0=$(now)
    timeout -k 10 "$BOOT_TIMEOUT" qemu-system-x86_64 -accel tcg -m "$MEMORY" -smp "$SMP" \
      -nographic -no-reboot -nic none \
      -kernel "$WORKDIR/vmlinuz" -initrd "$WORKDIR/initrd.img" \
      -append "root=/dev/vda rw console=ttyS0 panic=10 loglevel=4 systemd.show_status=1 $TRACE_CMDLINE" \
      -drive "file=$IMAGE,format=raw,if=virtio" </dev/null >"$CONSOLE" 2>&1 &
    QEMU_PID=$!
    tail -n +1 -f --pid="$QEMU_PID" "$CONSOLE" 2>/dev/null | tr -d '\r' | grep --line-buffered -E \
      '^(GUEST|PCPU-GUEST)|Reached target|Kernel panic' >&2 &
    TAILER=$!
    set +e
    wait "$QEMU_PID"; qrc=$?
    set -e
    QEMU_PID=
    wait "$TAILER" 2>/dev/null || true
    say "qemu exited ($qrc) after $(secs "$t0" "$(now)") s"
    verdict=$(tr -d '\r' <"$CONSOLE" | grep -E '^PCPU-GUEST-CHECK: ' | tail -n 1 || true)
    [ -z "$verdict" ] || break
    if ! tr -d '\r' <"$CONSOLE" | grep -q '^PCPU-GUEST-PHASE: 1 done'; then
      say "boot $boot ended without a verdict (qemu rc $qrc; 124 = --boot-timeout); last lines:"
      tr -d '\r' <"$CONSOLE" | tail -n 40 >&2
      exit 1
    fi
  done
  tr -d '\r' <"$CONSOLE" | sed -n '/^GUEST-SUMMARY-BEGIN/,/^GUEST-SUMMARY-END/p' >"$LOGDIR/summary.txt" || true
  cat "$LOGDIR/summary.txt" >&2
  if [ -z "$verdict" ]; then
    say "no verdict after two boots; last lines:"
    tr -d '\r' <"$CONSOLE" | tail -n 40 >&2
    exit 1
  fi
  say "$verdict (console logs: $LOGDIR/console-*.log)"
  case "$verdict" in *": PASS"*) exit 0 ;; *) exit 1 ;; esac
fi

# ---------------------------------------------------------------- inner: build the image
LOGDIR=${PCPU_GUEST_LOGDIR:?}
MIRROR=${PCPU_GUEST_MIRROR:?}
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

# 2a. The cached guest tree: minbase + systemd + the guest's packages.
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

# 2b. This run's tree: the .deb in GUEST_DEB_DIR, what installing it will fetch in apt's cache.
remove_tree "$TREE"
mkdir -p "$TREE"
tar --numeric-owner -C "$TREE" -xpf "$CACHE"
KVER=$(find "$TREE/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
[ -n "$KVER" ] || die "no kernel in $TREE/boot"
KBUILD=$(readlink "$TREE/lib/modules/$KVER/build" || true)  # absolute, inside the tree
if [ -z "$KBUILD" ] || [ ! -e "$TREE$KBUILD/include" ]; then die "no headers for $KVER in the tree"; fi
say "guest kernel $KVER; /lib/modules/$KVER/build -> $KBUILD"
DEBS=("$DEBDIR"/pcpu-bpf_*_all.deb)
if [ ${#DEBS[@]} -ne 1 ] || [ ! -s "${DEBS[0]}" ]; then die "expected one package in $DEBDIR"; fi
DEB=$(basename "${DEBS[0]}")
# Where the guest finds the package, as an administrator's download would sit.
GUEST_DEB_DIR=/var/local/pcpu-guest-check
install -D -m 0644 "${DEBS[0]}" "$TREE$GUEST_DEB_DIR/$DEB"
mount_tree "$TREE"
# The guest has no network: fetch now (through this host's) what `apt install` will take
# from the archive. The cached package lists first; fresh ones if those have gone stale.
say "apt-get install --download-only $GUEST_DEB_DIR/$DEB (in the tree)"
if ! in_tree "$TREE" apt-get install -y -q --download-only "$GUEST_DEB_DIR/$DEB" >"$LOGDIR/download.log" 2>&1; then
  { in_tree "$TREE" apt-get update -q \
    && in_tree "$TREE" apt-get install -y -q --download-only "$GUEST_DEB_DIR/$DEB"; } >>"$LOGDIR/download.log" 2>&1 \
    || { tail -n 30 "$LOGDIR/download.log" >&2; die "downloading the package's dependencies failed"; }
fi
say "in apt's cache for the guest: $(find "$TREE/var/cache/apt/archives" -name '*.deb' | wc -l) packages"
release_tree "$TREE"

# 3. The guest's own plumbing: a quiet console, and the check at every boot.
echo pcpu-guest >"$TREE/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$TREE/etc/fstab"
ln -sfn /dev/null "$TREE/etc/systemd/system/serial-getty@ttyS0.service"
ln -sfn /dev/null "$TREE/etc/systemd/system/getty@tty1.service"
if [ -n "$START_TIMEOUT" ]; then
  mkdir -p "$TREE/etc/systemd/system/pcpu-bpf.service.d"
  printf '# GUEST ONLY (systemd-guest-check.sh --start-timeout): bcc under qemu TCG is slow.\n[Service]\nTimeoutStartSec=%ss\n' \
    "$START_TIMEOUT" >"$TREE/etc/systemd/system/pcpu-bpf.service.d/guest-tcg.conf"
  say "GUEST-ONLY drop-in: TimeoutStartSec=${START_TIMEOUT}s"
fi

cat >"$TREE/etc/systemd/system/pcpu-guest-check.service" <<'EOF'
[Unit]
Description=pcpu-bpf guest check (systemd-guest-check.sh)
# A host that has booted: everything of multi-user.target started first.
After=multi-user.target

[Service]
# Not oneshot: boot counts as finished while the check runs, so systemd-analyze blame and
# critical-chain can answer.
Type=simple
ExecStart=/usr/local/sbin/pcpu-guest-check
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
EOF
printf 'WAIT=%s\nDEB=%s\nDEB_DIR=%s\n' "$WAIT" "$DEB" "$GUEST_DEB_DIR" >"$TREE/etc/default/pcpu-guest-check"
cat >"$TREE/usr/local/sbin/pcpu-guest-check" <<'EOF'
#!/bin/bash
# Runs in the guest at each boot (pcpu-guest-check.service); output goes to the serial
# console. Boot 1 installs and exercises the package, boot 2 sees it start early, purges it.
set -u
. /etc/default/pcpu-guest-check
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat TERM=dumb DEBIAN_FRONTEND=noninteractive
STATE=/var/lib/pcpu-guest-check
mkdir -p "$STATE"
PHASE=$(cat "$STATE/phase" 2>/dev/null || echo 1)
FAILS=()
SUMMARY=()
[ -s "$STATE/fails" ] && mapfile -t FAILS <"$STATE/fails"
[ -s "$STATE/summary" ] && mapfile -t SUMMARY <"$STATE/summary"
save_state() {
  : >"$STATE/fails"; : >"$STATE/summary"
  [ ${#FAILS[@]} -eq 0 ] || printf '%s\n' "${FAILS[@]}" >"$STATE/fails"
  [ ${#SUMMARY[@]} -eq 0 ] || printf '%s\n' "${SUMMARY[@]}" >"$STATE/summary"
}
# When a unit reached its state, in seconds since the kernel started.
at() { awk -v t="$(systemctl show "$1" -P "${2:-ActiveEnterTimestampMonotonic}")" 'BEGIN { printf "%.1f", t / 1e6 }'; }
PROGS='name (on_alloc|on_free|on_alloc_fail|on_create_chunk|on_destroy_chun)'
PIN_DIR=/sys/fs/bpf/pcpu-bpf
METRICS=http://127.0.0.1:9717/metrics

sec() { echo; echo "GUEST ==== $* ===="; }
note() { echo "GUEST: $*"; SUMMARY+=("$*"); }
bad() { echo "GUEST: FAIL: $*"; FAILS+=("$*"); SUMMARY+=("FAIL: $*"); }
prop() { systemctl show pcpu-bpf -P "$1"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
mono_s() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", (b - a) / 1e6; else print "n/a" }'; }
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }
# The sum of a metric family's samples in a scrape (0 when absent).
msum() { awk -v n="$1" 'index($0, n "{") == 1 || $1 == n { s += $NF } END { printf "%.0f", s }' "$2"; }
pins() { find "$PIN_DIR" -mindepth 1 2>/dev/null | wc -l; }
programs() { bpftool prog show 2>/dev/null | grep -Ec "$PROGS"; }
percpu_work() { for _ in 1 2 3 4 5; do unshare -n true; done; sleep 3; }
# The daemon's proportional set size (smaps_rollup) and its child processes.
pss() {  # pid
  awk '/^Pss:/ { p = $2 } /^Pss_Anon:/ { a = $2 } /^Pss_File:/ { f = $2 }
    END { printf "%.1f MiB (anonymous %.1f, file %.1f)", p / 1024, a / 1024, f / 1024 }' /proc/"$1"/smaps_rollup
  printf '; %s child processes' "$(cat /proc/"$1"/task/*/children | wc -w)"
}
scrape() {  # file
  curl -fsS --max-time 60 "$METRICS" -o "$1" || { bad "curl $METRICS failed"; : >"$1"; }
}
finish() {
  save_state
  echo
  echo "GUEST-SUMMARY-BEGIN"
  printf '  %s\n' "${SUMMARY[@]}"
  echo "GUEST-SUMMARY-END"
  if [ ${#FAILS[@]} -eq 0 ]; then
    echo "PCPU-GUEST-CHECK: PASS"
  else
    echo "PCPU-GUEST-CHECK: FAIL ($(IFS=';'; echo "${FAILS[*]}"))"
  fi
  echo 3 >"$STATE/phase"
  sync
  systemctl poweroff --no-block
  exit 0
}
wait_active() {
  local state='' i
  for ((i = 0; i < WAIT; i++)); do
    state=$(systemctl is-active pcpu-bpf)
    case "$state" in active|failed) break ;; esac
    # Nothing is starting it (every start in this check waits for its job).
    [ "$state:$(prop SubState)" != inactive:dead ] || break
    # Failing in a loop (Restart=on-failure) will not get better by waiting.
    [ "$(prop NRestarts)" -lt 2 ] || break
    [ $((i % 30)) -eq 0 ] && echo "GUEST: t+${i}s: $state ($(prop SubState), restarts $(prop NRestarts))" >&2
    sleep 1
  done
  echo "$state"
}
# Who holds meminfo Percpu: the daemon's live table against the kernel's own trace of
# every dynamic percpu allocation since early boot (trace_event= on the command line).
# Compared by count: the trace's bytes_alloc is pcpu_obj_full_size() (every CPU's copy and
# the memcg extension), pcpu_live_bytes the size on every unit without the extension.
coverage() {  # label scrape-file
  local label=$1 m=$2 meminfo live nlive untracked own start boot start_up trace overrun
  meminfo=$(awk '/^Percpu:/ { print $2 * 1024 }' /proc/meminfo)
  live=$(msum pcpu_live_bytes "$m"); nlive=$(msum pcpu_live_allocations "$m")
  untracked=$(msum pcpu_untracked_frees_total "$m"); own=$(msum pcpu_profiler_percpu_bytes "$m")
  start=$(awk '$1 == "pcpu_tracking_start_time_seconds" { print $2 }' "$m")
  boot=$(awk -v u="$(uptime_s)" -v n="$(date +%s.%N)" 'BEGIN { printf "%.3f", n - u }')
  start_up=$(awk -v s="${start:-0}" -v b="$boot" 'BEGIN { printf "%.1f", s - b }')
  # Replay the trace: alloc adds ptr -> bytes_alloc, free removes it; what is left is live
  # now, split at the moment tracking began.
  trace=$(awk '
    { ev = ""; for (i = 1; i <= NF; i++) if ($i == "percpu_alloc_percpu:" || $i == "percpu_free_percpu:") { ev = $i; ts = $(i - 1); break } }
    ev == "" { next }
    { sub(/:$/, "", ts); ptr = ""; b = 0
      for (j = i + 1; j <= NF; j++) { split($j, kv, "="); if (kv[1] == "ptr") ptr = kv[2]; else if (kv[1] == "bytes_alloc") b = kv[2] } }
    ev == "percpu_alloc_percpu:" { n++; bytes[ptr] = b + 0; when[ptr] = ts + 0; next }
    { if (ptr in bytes) { delete bytes[ptr]; delete when[ptr] } }
    END { for (p in bytes) { all += bytes[p]; na++; if (when[p] >= t0) { after += bytes[p]; nafter++ } else { before += bytes[p]; nbefore++ } }
          printf "%d %d %d %d %d %d %d", n, all, na, after, nafter, before, nbefore }' t0="$start_up" /sys/kernel/tracing/trace)
  overrun=$(awk '/^overrun:/ { s += $2 } END { print s + 0 }' /sys/kernel/tracing/per_cpu/cpu*/stats)
  read -r t_n t_all t_na t_after t_nafter t_before t_nbefore <<<"$trace"
  note "$label: tracking began ${start_up} s after boot; meminfo Percpu $meminfo B; traced live $live B in $nlive allocations ($(awk -v a="$live" -v b="$meminfo" 'BEGIN { printf "%.1f", b ? 100 * a / b : 0 }')% of meminfo Percpu); untracked frees $untracked; the profiler's own maps $own B"
  note "$label: kernel trace since early boot ($t_n allocations, overrun $overrun): $t_all B live in $t_na allocations, of which $t_before B ($t_nbefore) made before tracking began and $t_after B ($t_nafter) after; the live table holds $nlive of the $t_na live dynamic allocations ($(awk -v a="$nlive" -v b="$t_na" 'BEGIN { printf "%.1f", b ? 100 * a / b : 0 }')%)"
  echo "$label $start_up $meminfo $live $nlive $untracked $own $t_all $t_na $t_after $t_nafter $t_before $t_nbefore $overrun" >>"$STATE/coverage"
}
check_scrape() {  # file
  local m=$1 c v named hex
  grep -E '^pcpu_(collector_success|exporter_info|profiler_percpu_bytes|tracking_start_time)' "$m"
  for c in snapshot tracing meminfo percpu_stats; do
    v=$(awk -v c="$c" '$1 == "pcpu_collector_success{collector=\"" c "\"}" { print $2 }' "$m")
    case "$c:$v" in
      percpu_stats:0.0|percpu_stats:0) ;;  # CONFIG_PERCPU_STATS off on 6.1: degrades, expected
      percpu_stats:*) bad "percpu_stats collector is '$v', expected 0 without CONFIG_PERCPU_STATS" ;;
      *:1.0|*:1) ;;
      *) bad "collector $c success '$v'" ;;
    esac
  done
  grep -q '^pcpu_exporter_info{.*backend="bpf"' "$m" || bad "no pcpu_exporter_info with backend=bpf"
  named=$(grep -E '^pcpu_allocations_total\{' "$m" | grep -Ec 'call_site="[A-Za-z_]' || true)
  hex=$(grep -E '^pcpu_allocations_total\{' "$m" | grep -Ec 'call_site="0x' || true)
  note "pcpu_allocations_total series: $named with a function name, $hex with a hex address"
  [ "$named" -gt 0 ] || bad "no call site has a function name"
  [ "$hex" -eq 0 ] || bad "$hex call sites are hex addresses (kallsyms hidden?)"
}

if [ "$PHASE" = 1 ]; then
  sec "boot 1: a host that has booted, without the package"
  note "kernel $(uname -r), systemd $(systemctl --version | head -n1 | cut -d' ' -f2), $(nproc) CPUs, up $(uptime_s) s"
  note "CONFIG_PERCPU_STATS: $(grep -E 'CONFIG_PERCPU_STATS[ =]' /boot/config-"$(uname -r)" || echo '(not in config)')"
  note "kernel headers: /lib/modules/$(uname -r)/build -> $(readlink -f /lib/modules/"$(uname -r)"/build)"
  note "boot 1 (no pcpu-bpf): multi-user.target reached $(at multi-user.target) s after the kernel started"
  dmesg | grep -E 'percpu: Embedded' | sed 's/^/GUEST: /'

  sec "cd $DEB_DIR && apt install ./$DEB"
  dpkg-query -W -f '${Package}\n' | sort >"$STATE/packages-before"
  (cd "$DEB_DIR" && apt install -y "./$DEB") 2>&1 | grep -vE '^(Reading|Building|Selecting|Preparing|\(Reading)'
  rc=${PIPESTATUS[0]}
  dpkg-query -W -f '${Package}\n' | sort >"$STATE/packages-after"
  new=$(comm -13 "$STATE/packages-before" "$STATE/packages-after" | tr '\n' ' ')
  note "apt install ./$DEB: exit $rc; $(echo "$new" | wc -w) packages new: $new"
  [ "$rc" = 0 ] && dpkg-query -W -f '${Status}' pcpu-bpf | grep -q 'install ok installed' \
    || { bad "apt install failed"; finish; }
  dpkg -L pcpu-bpf >"$STATE/files"
  grep -E '^/(usr/bin|lib/systemd|etc|usr/share/pcpu-bpf/[a-z_]+$)' "$STATE/files" | sed 's/^/    /'
  note "files: $(grep -c . "$STATE/files") paths; conffiles: $(dpkg-query -W -f '${Conffiles}' pcpu-bpf | awk 'NF { printf "%s ", $1 }')"
  for d in pcpu_bpf exporters bpf_programs; do
    [ ! -e "/usr/lib/python3/dist-packages/$d" ] || bad "$d in the system's dist-packages"
  done
  getent passwd pcpu-bpf | sed 's/^/    /'
  note "user: $(getent passwd pcpu-bpf || echo none); group: $(getent group pcpu-bpf || echo none)"
  getent passwd pcpu-bpf >/dev/null || bad "no user pcpu-bpf after install"
  note "after install: $(systemctl is-enabled pcpu-bpf 2>&1) and $(systemctl is-active pcpu-bpf 2>&1) (the package starts nothing)"
  [ "$(systemctl is-active pcpu-bpf)" = inactive ] || bad "the service runs before it was enabled"
  echo "--- pcpu-bpf --version; pcpu-bpf doctor"
  pcpu-bpf --version
  pcpu-bpf doctor; note "pcpu-bpf doctor as root: exit $?"

  sec "systemctl enable --now pcpu-bpf"
  t=$(uptime_s)
  systemctl enable --now pcpu-bpf 2>&1; rc=$?
  note "systemctl enable --now: exit $rc after $(since "$t") s; $(systemctl is-enabled pcpu-bpf)"
  state=$(wait_active)
  note "pcpu-bpf is $state (uptime $(uptime_s) s)"
  [ "$state" = active ] || { bad "pcpu-bpf not active: $state"; journalctl -u pcpu-bpf -b --no-pager | tail -n 40; finish; }
  systemctl status pcpu-bpf --no-pager -l | head -n 20
  systemctl show pcpu-bpf -p StatusText -p NRestarts -p MainPID -p Type -p WatchdogUSec -p DropInPaths
  note "start-up (ExecMainStart -> READY=1): $(mono_s "$(prop ExecMainStartTimestampMonotonic)" "$(prop ActiveEnterTimestampMonotonic)") s"
  findmnt -n /sys/kernel/tracing >/dev/null || bad "/sys/kernel/tracing not mounted"
  findmnt -n /sys/kernel/debug >/dev/null || bad "/sys/kernel/debug not mounted"
  pid=$(prop MainPID)
  grep -E '^(Uid|Gid|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/"$pid"/status
  uid=$(awk '/^Uid:/ { print $2 }' /proc/"$pid"/status)
  eff=$(awk '/^CapEff:/ { print $2 }' /proc/"$pid"/status)
  # The four ambient capabilities (DAC_READ_SEARCH SYSLOG PERFMON BPF) start it; once
  # attached it keeps only what a snapshot still needs, and sets no_new_privs.
  nnp=$(awk '/^NoNewPrivs:/ { print $2 }' /proc/"$pid"/status)
  note "process $pid: user $(getent passwd "$uid" | cut -d: -f1) (uid $uid), CapEff $eff after the start (want 0000000000000000), NoNewPrivs $nnp; $(journalctl -u pcpu-bpf -b -o cat --no-pager | grep -o 'running with .*' | tail -n 1)"
  [ "$(getent passwd "$uid" | cut -d: -f1)" = pcpu-bpf ] || bad "runs as uid $uid, not pcpu-bpf"
  [ "$eff" = 0000000000000000 ] || bad "CapEff $eff"
  [ "$nnp" = 1 ] || bad "NoNewPrivs $nnp"

  sec "percpu work, then /metrics"
  percpu_work
  scrape "$STATE/metrics-1"
  check_scrape "$STATE/metrics-1"
  coverage "started after boot" "$STATE/metrics-1"
  note "daemon PSS after start and a scrape: $(pss "$(prop MainPID)")"
  note "pinned: $(pins) entries under $PIN_DIR; programs loaded: $(programs)"
  bpftool prog show | grep -E "$PROGS"
  [ "$(programs)" -eq 5 ] || bad "$(programs) of its 5 programs loaded"

  sec "systemd-analyze security pcpu-bpf"
  systemd-analyze security pcpu-bpf --no-pager | grep -vE '^✓' | tee "$STATE/security.txt"
  note "$(grep -E 'Overall exposure level' "$STATE/security.txt" | sed 's/^→ //')"

  sec "systemctl restart pcpu-bpf: the pinned set is adopted, counts continue"
  start1=$(awk '$1 == "pcpu_tracking_start_time_seconds" { print $2 }' "$STATE/metrics-1")
  allocs1=$(msum pcpu_allocations_total "$STATE/metrics-1"); frees1=$(msum pcpu_frees_total "$STATE/metrics-1")
  t=$(uptime_s); since_ts=$(date '+%F %T')
  systemctl restart pcpu-bpf; rc=$?
  state=$(wait_active)
  note "systemctl restart: exit $rc, $state after $(since "$t") s; MainPID $(prop MainPID) (was $pid)"
  journalctl -u pcpu-bpf --since "$since_ts" --no-pager | tail -n 8
  journalctl -u pcpu-bpf --since "$since_ts" --no-pager -o cat | grep -q 'adopted the pinned set' \
    || bad "the restart did not adopt the pinned set"
  percpu_work
  scrape "$STATE/metrics-2"
  start2=$(awk '$1 == "pcpu_tracking_start_time_seconds" { print $2 }' "$STATE/metrics-2")
  allocs2=$(msum pcpu_allocations_total "$STATE/metrics-2"); frees2=$(msum pcpu_frees_total "$STATE/metrics-2")
  note "across the restart: tracking start $start1 -> $start2; allocations $allocs1 -> $allocs2; frees $frees1 -> $frees2; untracked frees $(msum pcpu_untracked_frees_total "$STATE/metrics-1") -> $(msum pcpu_untracked_frees_total "$STATE/metrics-2")"
  [ -n "$start1" ] && [ "$start1" = "$start2" ] || bad "tracking start time changed across the restart"
  [ "$allocs2" -ge "$allocs1" ] && [ "$allocs1" -gt 0 ] || bad "allocation counter went back ($allocs1 -> $allocs2)"
  [ "$frees2" -ge "$frees1" ] || bad "free counter went back ($frees1 -> $frees2)"

  sec "apt install --reinstall ./$DEB: the upgrade path (the postinst restarts a running service)"
  pid=$(prop MainPID); since_ts=$(date '+%F %T')
  (cd "$DEB_DIR" && apt install --reinstall -y "./$DEB") 2>&1 | grep -E '^(Setting up|Unpacking|E:|W:)'
  rc=${PIPESTATUS[0]}
  state=$(wait_active)
  note "apt install --reinstall: exit $rc; pcpu-bpf $state, MainPID $(prop MainPID) (was $pid); $(journalctl -u pcpu-bpf --since "$since_ts" --no-pager -o cat | grep -c 'adopted the pinned set') adoption(s) logged"
  [ "$rc" = 0 ] && [ "$state" = active ] && [ "$(prop MainPID)" != "$pid" ] || bad "the upgrade path did not restart the service"
  percpu_work
  scrape "$STATE/metrics-2b"
  [ "$(awk '$1 == "pcpu_tracking_start_time_seconds" { print $2 }' "$STATE/metrics-2b")" = "$start1" ] \
    || bad "tracking start time changed across the upgrade path"

  # Outlive the watchdog (WatchdogSec=30s) at least once after the restart.
  pid=$(prop MainPID); ready=$(prop ActiveEnterTimestampMonotonic)
  up=$(awk -v r="$ready" -v n="$(uptime_s)" 'BEGIN { printf "%d", n - r / 1e6 }')
  [ "$up" -ge 75 ] || sleep $((75 - up))
  note "after $(awk -v r="$ready" -v n="$(uptime_s)" 'BEGIN { printf "%d", n - r / 1e6 }') s active: $(systemctl is-active pcpu-bpf), NRestarts $(prop NRestarts), MainPID $(prop MainPID) (was $pid)"
  [ "$(prop NRestarts)" = 0 ] && [ "$(prop MainPID)" = "$pid" ] || bad "restarted while running (watchdog?)"
  percpu_work
  scrape "$STATE/metrics-2c"
  coverage "started after boot, minutes later" "$STATE/metrics-2c"
  note "daemon PSS after the upgrade path's restart, 75 s and scrapes later: $(pss "$(prop MainPID)")"

  sec "systemctl stop pcpu-bpf: the set stays pinned and attached for the next start"
  t=$(uptime_s)
  systemctl stop pcpu-bpf; rc=$?
  note "systemctl stop: exit $rc in $(since "$t") s; $(prop ActiveState), Result=$(prop Result), ExecMainStatus=$(prop ExecMainStatus)"
  [ "$(prop Result)" = success ] || bad "stop Result=$(prop Result)"
  [ "$(prop ActiveState)" = inactive ] || bad "not inactive after stop"
  journalctl -u pcpu-bpf -b --no-pager | tail -n 4
  note "after stop: $(pins) entries pinned under $PIN_DIR, $(programs) programs loaded (kept for the next start)"

  save_state
  echo 2 >"$STATE/phase"
  sync
  echo "PCPU-GUEST-PHASE: 1 done, powering off for boot 2"
  systemctl poweroff --no-block
  exit 0
fi

if [ "$PHASE" = 2 ]; then
  sec "boot 2: pcpu-bpf enabled, started early in boot"
  state=$(wait_active)
  note "pcpu-bpf is $state when the check starts (uptime $(uptime_s) s)"
  [ "$state" = active ] || { bad "pcpu-bpf not active in boot 2: $state"; journalctl -u pcpu-bpf -b --no-pager | tail -n 40; }
  systemctl show pcpu-bpf -p After -p Before -p Wants -p Conflicts | fold -w 160
  note "boot 2 timeline (s since the kernel started): local-fs.target $(at local-fs.target), pcpu-bpf started $(at pcpu-bpf.service ExecMainStartTimestampMonotonic) and ready $(at pcpu-bpf.service), sysinit.target $(at sysinit.target), basic.target $(at basic.target), multi-user.target $(at multi-user.target)"
  before=$(systemctl list-units --type=service --state=active --no-legend --plain | awk '{ print $1 }' \
    | while read -r u; do
        [ "$u" = pcpu-bpf.service ] && continue
        t=$(systemctl show "$u" -P ExecMainStartTimestampMonotonic)
        [ "${t:-0}" -gt 0 ] && [ "$t" -lt "$(prop ActiveEnterTimestampMonotonic)" ] && echo "$u"
      done | tr '\n' ' ')
  note "services started before pcpu-bpf was ready: ${before:-none}"
  systemd-analyze critical-chain pcpu-bpf.service --no-pager 2>&1 | tail -n 8
  # systemd-analyze security calls ProtectSystem=, ProtectHome= and PrivateTmp= "not
  # appropriate" for a unit without default dependencies: see that they still apply.
  pid=$(prop MainPID)
  sandbox=$(nsenter --target "$pid" --mount sh -c \
    'printf "/usr %s, /home %s, /tmp %s, /sys/fs/bpf/pcpu-bpf %s" \
      "$(findmnt -no OPTIONS --target /usr | cut -d, -f1)" \
      "$(findmnt -no FSTYPE,OPTIONS --target /home | cut -d, -f1)" \
      "$(findmnt -no SOURCE --target /tmp)" \
      "$(findmnt -no OPTIONS --target /sys/fs/bpf/pcpu-bpf | cut -d, -f1)"')
  note "the early service's mount namespace: $sandbox"
  case "$sandbox" in "/usr ro, "*) ;; *) bad "sandbox not applied early in boot: $sandbox" ;; esac
  systemd-analyze blame --no-pager | head -n 6

  sec "percpu work, then /metrics"
  percpu_work
  scrape "$STATE/metrics-3"
  check_scrape "$STATE/metrics-3"
  coverage "started early in boot" "$STATE/metrics-3"
  note "daemon PSS, started early in boot, after a scrape: $(pss "$(prop MainPID)")"

  sec "zombie memory cgroups: scripts/zombie-memcg-demo.sh with the installed package"
  /usr/local/sbin/zombie-memcg-demo --count 4 --hold 65 2>&1 | tee "$STATE/zombies.txt"
  rc=${PIPESTATUS[0]}
  while IFS= read -r line; do note "zombies: $line"; done \
    < <(sed -n 's/^ZOMBIE-MEMCG: *//p' "$STATE/zombies.txt")
  [ "$rc" = 0 ] || bad "zombie-memcg-demo exited $rc"
  grep -q '^== memory cgroups: cgroup v2' "$STATE/zombies.txt" || bad "the demo did not use cgroup v2"

  sec "systemctl stop pcpu-bpf; apt purge pcpu-bpf"
  systemctl stop pcpu-bpf
  note "stopped: $(pins) entries pinned, $(programs) programs loaded"
  apt purge -y pcpu-bpf 2>&1 | grep -vE '^(Reading|Building|\(Reading)'
  rc=${PIPESTATUS[0]}
  note "apt purge pcpu-bpf: exit $rc; dpkg status: $(dpkg-query -W -f '${Status}' pcpu-bpf 2>&1)"
  [ "$rc" = 0 ] || bad "apt purge failed"

  sec "nothing left"
  note "pins under $PIN_DIR: $(pins) ($( [ -e "$PIN_DIR" ] && echo 'directory present' || echo 'directory gone'))"
  [ ! -e "$PIN_DIR" ] || bad "$PIN_DIR still exists: $(find "$PIN_DIR" | head -n 5 | tr '\n' ' ')"
  bpftool prog show | grep -E "$PROGS"
  note "programs of pcpu-bpf loaded: $(programs)"
  [ "$(programs)" -eq 0 ] || bad "$(programs) programs still loaded after purge"
  left=$(while read -r f; do [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"; done <"$STATE/files")
  note "files of the package left (of $(grep -c . "$STATE/files") paths it had): $(echo "$left" | grep -c .)"
  [ -z "$left" ] || bad "left behind: $(echo "$left" | tr '\n' ' ' | cut -c1-300)"
  # Anything named after it on the root file system, but the check's own files and the
  # .deb the administrator downloaded.
  strays=$(find / -xdev \( -name '*pcpu-bpf*' -o -name '*pcpu_bpf*' \) 2>/dev/null \
    | grep -vE '^/(var/local/pcpu-guest-check/pcpu-bpf_[^/]*\.deb|usr/local/sbin/pcpu-guest-check|etc/default/pcpu-guest-check|etc/systemd/system/(multi-user\.target\.wants/)?pcpu-guest-check\.service|var/lib/pcpu-guest-check(/.*)?)$')
  note "other paths named pcpu-bpf or pcpu_bpf: $(echo "$strays" | grep -c .) $(echo "$strays" | tr '\n' ' ' | cut -c1-300)"
  [ -z "$strays" ] || bad "paths left: $(echo "$strays" | tr '\n' ' ' | cut -c1-300)"
  note "user: $(getent passwd pcpu-bpf || echo none); group: $(getent group pcpu-bpf || echo none); in /etc/shadow, gshadow: $(grep -c '^pcpu-bpf:' /etc/shadow /etc/gshadow | tr '\n' ' ')"
  getent passwd pcpu-bpf >/dev/null && bad "user pcpu-bpf still exists"
  getent group pcpu-bpf >/dev/null && bad "group pcpu-bpf still exists"
  note "unit: LoadState=$(prop LoadState), UnitFileState=$(prop UnitFileState)"
  [ "$(prop LoadState)" = not-found ] || bad "unit still loadable: $(prop LoadState)"
  echo "--- coverage: label start_after_boot_s meminfo_B live_B live_n untracked_frees own_B trace_live_B trace_live_n trace_after_B trace_after_n trace_before_B trace_before_n overrun"
  cat "$STATE/coverage"
  finish
fi

echo "GUEST: the check has run (phase $PHASE); powering off"
systemctl poweroff --no-block
EOF
chmod 0755 "$TREE/usr/local/sbin/pcpu-guest-check"
# The zombie memory cgroup demo, from the same commit, run in boot 2.
git -C "$REPO" show "$SHA:scripts/zombie-memcg-demo.sh" >"$TREE/usr/local/sbin/zombie-memcg-demo"
chmod 0755 "$TREE/usr/local/sbin/zombie-memcg-demo"
in_tree "$TREE" systemctl enable pcpu-guest-check >>"$LOGDIR/setup.log" 2>&1 || die "enable pcpu-guest-check"

# 5. Kernel, initrd and the image.
cp "$TREE/boot/vmlinuz-$KVER" "$WORKDIR/vmlinuz"
cp "$TREE/boot/initrd.img-$KVER" "$WORKDIR/initrd.img"
rm -f "$IMAGE"
size_mb=$(( $(du -sm --one-file-system "$TREE" | cut -f1) + 3072 ))
say "mke2fs -t ext4 -d $TREE $IMAGE (${size_mb} MiB)"
mke2fs -q -t ext4 -L pcpu-guest -d "$TREE" "$IMAGE" "${size_mb}M" >"$LOGDIR/mke2fs.log" 2>&1 \
  || { cat "$LOGDIR/mke2fs.log" >&2; die "mke2fs failed"; }
remove_tree "$TREE"
say "image ready"
