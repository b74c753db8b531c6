#!/usr/bin/env bash
# Run the README's commands on a truly fresh Debian userland: a
# `debootstrap --variant=minbase bookworm` tree, entered with chroot as root, with a clean
# environment. Each command gets its own pristine tree (a fresh machine), with a clone of
# this repository at the given commit (pcpu-bpf in root's home unless --clone-dir says
# otherwise; git itself is not installed in the tree). The chroot shares the host kernel,
# so BPF, tracefs and debugfs are real; /lib/modules/$(uname -r) starts missing, as on any
# machine with a custom kernel. Takes about 30 s for the first debootstrap (cached after),
# 30 s for the first command, 2-4 minutes for the test command.
#
# Usage (as root):  scripts/fresh-machine-check.sh [options]
#   -c, --commit REF     commit to test (default: HEAD of the repository holding this script)
#   -r, --repo DIR       repository to clone from (default: the one holding this script)
#   -w, --workdir DIR    trees and logs go here (default: /var/tmp/pcpu-fresh)
#       --clone-dir DIR  where the clone goes inside the tree (default: pcpu-bpf in root's home)
#       --cache FILE     tarball of the pristine minbase tree, made on first use and reused
#                        (default: /var/tmp/pcpu-fresh-cache/bookworm-minbase-amd64.tar)
#       --refresh-cache  debootstrap again even if the cached tarball exists
#       --mirror URL     Debian mirror for debootstrap (default: the one this host's apt uses
#                        for the suite)
#   -o, --only N         run only the README's Nth command (1-based; repeatable)
#       --same-tree      run the commands one after another in ONE tree (the later ones then
#                        also exercise setup.sh's rerun) instead of one fresh tree each
#       --tracefs MODE   how /sys/kernel/{tracing,debug} and /sys/fs/bpf look in the tree:
#                          setup     - not mounted: setup.sh must mount tracefs/debugfs itself
#                          bind      - the host's mounts bound in (if the host has them)
#                          alternate - odd-numbered commands "setup", even ones "bind" (default)
#       --env NAME=VALUE add a variable to the clean environment (repeatable)
#       --ci             same as --env CI=true (the test suite then fails on any skip)
#       --no-host-ca     do not copy the host's /usr/local/share/ca-certificates/*.crt into
#                        the tree (by default they are copied: a TLS-intercepting egress
#                        proxy needs them; they only take effect if the ca-certificates
#                        package gets installed, so they never hide a missing package)
#       --timeout SECS   per command (default 3600)
#       --keep           keep the trees afterwards (under WORKDIR/tree-*) for inspection;
#                        mounts are removed and processes stopped regardless
#       --reuse          use a kept tree WORKDIR/tree-N as it is, if present (implies --keep):
#                        for reruns and for trying a fix in the tree's copy of the repo
#       --command CMD    run CMD (in the clone, same chroot and environment) instead of the
#                        README's commands (repeatable; --only N then counts these)
#   -q, --quiet          do not stream command output (it still goes to the log files)
#   -l, --list           print the commands that would run, and exit
#   -h, --help
#
# The commands are taken verbatim from the first fenced block of README.md at the tested
# commit (each non-empty line is one command, the way .ci/run reads it) and run as
#   chroot TREE env -i PATH=... HOME=/root [--env ...] bash -c 'cd CLONE_DIR && CMD'
# with stdin from /dev/null. All mounts live in a private mount namespace (unshare -m), so
# the host never sees them; a trap unmounts them anyway, and stops every process whose root
# is a tree of ours, both inside and after the namespace.
#
# Exit status: 0 all commands passed, 1 some command failed, 2 usage or infrastructure error.
# Logs: WORKDIR/logs/<timestamp>/cmd<N>.log and a summary.txt.
set -euo pipefail

SELF=$(readlink -f "$0")
PROG=fresh-machine-check
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SUITE=bookworm
ARCH=amd64

# shellcheck source=scripts/lib/tree.sh
. "$(dirname "$SELF")/lib/tree.sh"

# ---------------------------------------------------------------- options
COMMIT=HEAD
REPO=$(git -C "$(dirname "$SELF")" rev-parse --show-toplevel 2>/dev/null || true)
WORKDIR=/var/tmp/pcpu-fresh
GUEST_HOME=/root  # the guest tree's, not this machine's
CLONE_DIR=$GUEST_HOME/pcpu-bpf
REUSE=0
CUSTOM=()
CACHE=/var/tmp/pcpu-fresh-cache/$SUITE-minbase-$ARCH.tar
REFRESH=0
MIRROR=
ONLY=()
SAME_TREE=0
TRACEFS_MODE=alternate
EXTRA_ENV=()
HOST_CA=1
TIMEOUT=3600
KEEP=0
QUIET=0
LIST=0
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    -c|--commit) COMMIT=${2:?}; shift 2 ;;
    -r|--repo) REPO=${2:?}; shift 2 ;;
    -w|--workdir) WORKDIR=${2:?}; shift 2 ;;
    --clone-dir) CLONE_DIR=${2:?}; shift 2 ;;
    --reuse) REUSE=1; KEEP=1; shift ;;
    --command) CUSTOM+=("${2:?}"); shift 2 ;;
    --cache) CACHE=${2:?}; shift 2 ;;
    --refresh-cache) REFRESH=1; shift ;;
    --mirror) MIRROR=${2:?}; shift 2 ;;
    -o|--only) ONLY+=("${2:?}"); shift 2 ;;
    --same-tree) SAME_TREE=1; shift ;;
    --tracefs) TRACEFS_MODE=${2:?}; shift 2 ;;
    --env) [[ "${2:-}" == ?*=* ]] || die "--env wants NAME=VALUE"; EXTRA_ENV+=("$2"); shift 2 ;;
    --ci) EXTRA_ENV+=(CI=true); shift ;;
    --no-host-ca) HOST_CA=0; shift ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -q|--quiet) QUIET=1; shift ;;
    -l|--list) LIST=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[[ "$CLONE_DIR" == /?* ]] || die "--clone-dir wants an absolute path"
case "$TRACEFS_MODE" in setup|bind|alternate) ;; *) die "--tracefs setup|bind|alternate" ;; esac
[ -n "$MIRROR" ] || MIRROR=$(apt_mirror "$SUITE")
[ -n "$MIRROR" ] || die "apt on this host has no source for $SUITE main: give --mirror URL"
if [ -z "$REPO" ] || ! git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  die "no git repository (use --repo)"
fi
REPO=$(git -C "$REPO" rev-parse --show-toplevel)
SHA=$(git -C "$REPO" rev-parse --verify "$COMMIT^{commit}" 2>/dev/null) || die "no commit $COMMIT in $REPO"
WORKDIR=$(readlink -m "$WORKDIR")
CACHE=$(readlink -m "$CACHE")
case "$CACHE/" in "$REPO"/*) die "keep the cache outside the repository ($CACHE)" ;; esac
case "$WORKDIR/" in "$REPO"/*) die "keep the work dir outside the repository ($WORKDIR)" ;; esac
case "$WORKDIR" in /|/var|/var/tmp|/tmp|/root|/home) die "work dir $WORKDIR is too broad" ;; esac

# The README's commands at the tested commit: the first fenced block, one per non-empty line.
mapfile -t COMMANDS < <(git -C "$REPO" show "$SHA:README.md" \
  | awk '/^```/ { block++; next } block == 1 && NF { print }')
[ ${#COMMANDS[@]} -gt 0 ] || die "no commands in the first fenced block of README.md at $SHA"
[ ${#CUSTOM[@]} -eq 0 ] || COMMANDS=("${CUSTOM[@]}")
SELECTED=()
if [ ${#ONLY[@]} -eq 0 ]; then
  for i in "${!COMMANDS[@]}"; do SELECTED+=($((i + 1))); done
else
  for n in "${ONLY[@]}"; do
    if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt ${#COMMANDS[@]} ]; then
      die "--only $n: there are ${#COMMANDS[@]} commands"
    fi
    SELECTED+=("$n")
  done
fi
if [ "$LIST" -eq 1 ]; then
  for n in "${SELECTED[@]}"; do printf '%s: %s\n' "$n" "${COMMANDS[n - 1]}"; done
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, mounts)"

# ---------------------------------------------------------------- outer: the namespace
if [ -z "${PCPU_FRESH_INNER:-}" ]; then
  command -v unshare >/dev/null || die "unshare missing (util-linux)"
  command -v chroot >/dev/null || die "chroot missing (coreutils)"
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap on the host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null \
      || die "apt-get install debootstrap"
  fi
  mkdir -p "$WORKDIR" "$(dirname "$CACHE")"
  # shellcheck disable=SC2317  # run by the trap
  outer_cleanup() {
    # The namespace is gone once its last process exits; a daemon a command started in a
    # tree (e.g. a package's postinst) would keep it alive, so stop any such process.
    local t
    for t in "$WORKDIR"/tree-* "$WORKDIR"/debootstrap.tmp; do
      [ -d "$t" ] && stop_procs_in_root "$t"
    done
    local left
    left=$(mounts_under "$WORKDIR")
    [ -z "$left" ] || say "WARNING: mounts left under $WORKDIR on the host: $left"
  }
  trap outer_cleanup EXIT
  trap 'exit 130' INT TERM
  set +e
  PCPU_FRESH_INNER=1 unshare --mount --propagation private -- bash "$SELF" "${ARGS[@]}"
  rc=$?
  set -e
  exit "$rc"
fi

# ---------------------------------------------------------------- inner: in the namespace
ACTIVE_ROOTS=()
CHILD=
TAILER=
# shellcheck disable=SC2317  # run by the trap
inner_cleanup() {
  local r
  [ -z "$CHILD" ] || kill -TERM "$CHILD" 2>/dev/null || true
  [ -z "$TAILER" ] || kill -TERM "$TAILER" 2>/dev/null || true
  for r in "${ACTIVE_ROOTS[@]}"; do
    stop_procs_in_root "$r"
    unmount_under "$r" || true
    [ "$KEEP" -eq 1 ] || ( remove_tree "$r" ) || true
  done
  unmount_under "$WORKDIR/debootstrap.tmp" 2>/dev/null || true
}
trap inner_cleanup EXIT
trap 'exit 130' INT TERM

STAMP=$(date +%Y%m%d-%H%M%S)
LOGDIR=$WORKDIR/logs/$STAMP
mkdir -p "$LOGDIR"
say "repo $REPO, commit $SHA ($(git -C "$REPO" log -1 --format=%s "$SHA"))"
say "logs in $LOGDIR"

# 1. The pristine tree, as a cached tarball.
t0=$(now)
if [ "$REFRESH" -eq 1 ] || [ ! -s "$CACHE" ]; then
  tmp=$WORKDIR/debootstrap.tmp
  remove_tree "$tmp"
  say "debootstrap --variant=minbase $SUITE ($MIRROR) -> $CACHE"
  ACTIVE_ROOTS+=("$tmp")
  debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$tmp" "$MIRROR" \
    >"$LOGDIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGDIR/debootstrap.log" >&2; die "debootstrap failed (log: $LOGDIR/debootstrap.log)"; }
  stop_procs_in_root "$tmp"; unmount_under "$tmp"
  # Nothing of the build host's apt cache belongs in a fresh machine.
  rm -rf "$tmp"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$tmp" -cf "$CACHE.part" . && mv "$CACHE.part" "$CACHE"
  remove_tree "$tmp"
  ACTIVE_ROOTS=()
  say "pristine tree cached in $(secs "$t0" "$(now)") s ($(du -h "$CACHE" | cut -f1))"
else
  say "reusing cached pristine tree $CACHE ($(date -r "$CACHE" +%F))"
fi
CACHE_SECS=$(secs "$t0" "$(now)")

# 2. One tree: unpack, clone the repository in, mount.
prepare_tree() {  # root
  local root=$1 dest
  if [ "$REUSE" -eq 1 ] && [ -d "$root$CLONE_DIR/.git" ]; then
    local at
    at=$(git -C "$root$CLONE_DIR" rev-parse HEAD 2>/dev/null || echo unknown)
    say "reusing $root as it is (--reuse): its clone is at $at$([ "$at" = "$SHA" ] || echo ", NOT $SHA")"
    git -C "$root$CLONE_DIR" status --short | sed 's/^/    local change: /' >&2
    return 0
  fi
  remove_tree "$root"
  mkdir -p "$root"
  tar --numeric-owner -C "$root" -xpf "$CACHE"
  if [ ! -x "$root/usr/bin/apt-get" ] || [ -e "$root/usr/bin/git" ]; then
    die "$CACHE does not look like a pristine minbase tree"
  fi
  # The clone is made with the host's git (a fresh machine has no git; the user got the
  # tree somehow) from the local repository, then its origin (a host path) is dropped.
  dest=$root$CLONE_DIR
  mkdir -p "$(dirname "$dest")"
  git clone -q --no-checkout --no-hardlinks "$REPO" "$dest"
  git -C "$dest" cat-file -e "$SHA^{commit}" 2>/dev/null \
    || git -C "$dest" fetch -q "$REPO" "$SHA" \
    || die "cannot fetch $SHA from $REPO"
  git -C "$dest" -c advice.detachedHead=false checkout -q --detach "$SHA"
  git -C "$dest" remote remove origin
  if [ "$HOST_CA" -eq 1 ] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
}

mount_tree() {  # root mode
  local root=$1 mode=$2 d
  ACTIVE_ROOTS+=("$root")
  # The tree's / must be a mount point, as on a real machine (`unshare --propagation
  # private`, which the tests use, fails with EINVAL on a chroot whose / is not one).
  mount --bind "$root" "$root"
  mount --bind /proc "$root/proc"
  mount --bind /sys "$root/sys"
  mount --bind /dev "$root/dev"
  for d in /dev/pts /dev/shm; do
    mountpoint -q "$d" && mkdir -p "$root$d" && mount --bind "$d" "$root$d"
  done
  if [ "$mode" = bind ]; then
    for d in /sys/kernel/tracing /sys/kernel/debug /sys/fs/bpf; do
      mountpoint -q "$d" && mount --bind "$d" "$root$d"
    done
  fi
  if [ -L "$root/etc/resolv.conf" ]; then rm -f "$root/etc/resolv.conf"; fi
  if [ ! -e "$root/etc/resolv.conf" ]; then : >"$root/etc/resolv.conf"; fi
  mount --bind "$(readlink -f /etc/resolv.conf)" "$root/etc/resolv.conf"
}

release_tree() {  # root
  local root=$1 r keep=()
  stop_procs_in_root "$root"
  unmount_under "$root"
  for r in "${ACTIVE_ROOTS[@]}"; do [ "$r" = "$root" ] || keep+=("$r"); done
  ACTIVE_ROOTS=("${keep[@]+"${keep[@]}"}")
  if [ "$KEEP" -eq 0 ]; then remove_tree "$root"; else say "kept $root"; fi
}

# 3. Run.
RESULTS=()
FAILED=0
CHROOT_ENV=(PATH="$CHROOT_PATH" HOME=/root "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}")
run_command() {  # n root mode
  local n=$1 root=$2 mode=$3 cmd=${COMMANDS[$1 - 1]} log="$LOGDIR/cmd$1.log" t rc
  say "command $n: $cmd   (tree $root, tracefs: $mode, env: ${CHROOT_ENV[*]})"
  printf '+ %s\n' "$cmd" >"$log"
  t=$(now)
  # In the background, and waited for with the `wait` builtin, so that a signal runs the
  # traps at once (timeout(1) puts the command in its own process group: ^C does not reach
  # it, the cleanup stops it).
  timeout -k 30 "$TIMEOUT" chroot "$root" /usr/bin/env -i "${CHROOT_ENV[@]}" \
    /bin/bash -c "cd $(printf %q "$CLONE_DIR") && $cmd" </dev/null >>"$log" 2>&1 &
  CHILD=$!
  if [ "$QUIET" -eq 0 ]; then
    tail -n +2 -f --pid="$CHILD" "$log" &
    TAILER=$!
  fi
  set +e
  wait "$CHILD"
  rc=$?
  [ -z "$TAILER" ] || wait "$TAILER"
  set -e
  CHILD='' TAILER=''
  local dur
  dur=$(secs "$t" "$(now)")
  local verdict=PASS
  if [ "$rc" -eq 124 ]; then verdict="FAIL (timeout after $TIMEOUT s)"; FAILED=1
  elif [ "$rc" -ne 0 ]; then verdict="FAIL (exit $rc)"; FAILED=1
  fi
  # pytest's last line, if any, says what passed, failed and skipped.
  local pytest_line
  pytest_line=$(grep -E '^=+ .*(passed|failed|error|skipped).* in [0-9.]+s' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//' || true)
  RESULTS+=("$(printf '%-3s %-7s %7ss  tracefs=%-5s  %s\n      %s%s' "$n" "${verdict%% *}" "$dur" "$mode" "$cmd" "$verdict" "${pytest_line:+ | pytest: $pytest_line}")")
  say "command $n: $verdict in $dur s"
  if [ "$rc" -ne 0 ]; then
    say "last lines of $log:"
    tail -n 25 "$log" | sed 's/^/    /' >&2
  fi
}

mode_for() {  # n
  case "$TRACEFS_MODE" in
    alternate) if [ $(( $1 % 2 )) -eq 1 ]; then echo setup; else echo bind; fi ;;
    *) echo "$TRACEFS_MODE" ;;
  esac
}

if [ "$SAME_TREE" -eq 1 ]; then
  root=$WORKDIR/tree-same
  t=$(now); prepare_tree "$root"; say "tree ready in $(secs "$t" "$(now)") s"
  mount_tree "$root" "$(mode_for "${SELECTED[0]}")"
  for n in "${SELECTED[@]}"; do run_command "$n" "$root" "$(mode_for "${SELECTED[0]}")"; done
  release_tree "$root"
else
  for n in "${SELECTED[@]}"; do
    root=$WORKDIR/tree-$n
    mode=$(mode_for "$n")
    t=$(now); prepare_tree "$root"; say "tree $root ready in $(secs "$t" "$(now)") s"
    mount_tree "$root" "$mode"
    run_command "$n" "$root" "$mode"
    release_tree "$root"
  done
fi

{
  echo "fresh-machine-check: $SUITE minbase, commit $SHA, kernel $(uname -r)"
  echo "pristine tree: $CACHE ($CACHE_SECS s)"
  printf '%s\n' "${RESULTS[@]}"
} | tee "$LOGDIR/summary.txt"
exit "$FAILED"
