# shellcheck shell=bash
# Shared by scripts/fresh-machine-check.sh and scripts/systemd-guest-check.sh (sourced,
# not run): messages, and the careful clean-up of a chroot tree under $WORKDIR. The
# caller sets PROG, SELF and WORKDIR first.

say()  { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$PROG" "$*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }
now()  { printf '%s' "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Mount points at or below $1 in this mount namespace, deepest first.
mounts_under() {
  local base=$1
  awk -v base="$base" '{
      p = $5; gsub(/\\040/, " ", p); gsub(/\\011/, "\t", p); gsub(/\\134/, "\\", p)
      if (p == base || index(p, base "/") == 1) print length(p) "\t" p
    }' /proc/self/mountinfo | sort -rn -k1,1 | cut -f2-
}

# Processes whose root directory is $1 (a chroot of ours); never this shell.
procs_in_root() {
  local root=$1 p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    [ /proc/"$pid"/root -ef "$root" ] 2>/dev/null && echo "$pid"
  done
  return 0
}

stop_procs_in_root() {
  local root=$1 pids
  pids=$(procs_in_root "$root" | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 0
  say "stopping processes left in $root: $pids"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.5
    pids=$(procs_in_root "$root" | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  sleep 0.5
}

unmount_under() {
  local base=$1 m tries ms
  for tries in 1 2 3 4 5; do
    mapfile -t ms < <(mounts_under "$base")
    [ ${#ms[@]} -gt 0 ] || return 0
    for m in "${ms[@]}"; do
      umount "$m" 2>/dev/null || { [ "$tries" -ge 3 ] && umount -l "$m" 2>/dev/null; } || true
    done
  done
  mapfile -t ms < <(mounts_under "$base")
  [ ${#ms[@]} -eq 0 ] || { say "could not unmount: ${ms[*]}"; return 1; }
}

# rm -rf, but only of a directory below WORKDIR with nothing mounted in it.
remove_tree() {
  local d=$1
  [ -e "$d" ] || return 0
  case "$d" in "$WORKDIR"/?*) ;; *) die "refusing to remove $d (not below $WORKDIR)" ;; esac
  [ -z "$(mounts_under "$d")" ] || die "refusing to remove $d: mounts below it: $(mounts_under "$d" | tr '\n' ' ')"
  rm -rf --one-file-system -- "$d"
}

# The Debian archive apt on this host is configured with for suite $1 (its main component),
# without a trailing slash: what debootstrap should use. Empty when there is none.
apt_mirror() {
  # shellcheck disable=SC2016  # apt's own $(FIELD) syntax
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' \
    2>/dev/null | awk -v s="$1" '$2 == s && $3 == "main" { sub(/\/$/, "", $1); print $1; exit }'
}
