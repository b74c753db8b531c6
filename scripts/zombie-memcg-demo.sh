#!/usr/bin/env bash
# The zombie memory cgroup, on this host: memory cgroups that charged page cache and were
# removed stay dying, and their percpu statistics stay live. Shown with pcpu-bpf's own
# figures (the daemon's /metrics and pcpu-top), then cleaned up.
#
#  1. Finds the memory controller: cgroup v2 (the unified hierarchy) where it has the
#     memory controller (enabled for the root's children if it was not), else the v1
#     memory hierarchy.
#  2. Uses the pcpu-bpf daemon answering at --url; if none answers, starts one of its own
#     (pinned in a directory of its own, detached at the end).
#  3. Makes a parent cgroup and N memory cgroups in it; in each a process writes a file
#     of --size MiB under --dir (kept: its page cache stays charged to the cgroup).
#     Cgroup v2: each cgroup's memory.stat percpu and file, and the parent's percpu (the
#     memory controller charges a cgroup's own percpu statistics to its parent).
#  4. Removes the N cgroups: the page cache keeps them dying. Waits --hold seconds, so the
#     ages show, then shows the dying count (pcpu_cgroup_dying_descendants; v2: also the
#     parent's nr_dying_descendants), the live allocations and bytes at the memory-cgroup
#     call sites against before (pcpu_live_allocations, pcpu_live_bytes, with
#     pcpu_live_oldest_age_seconds and pcpu_live_by_age_bytes), pcpu-top's rows for those
#     sites, and under v2 the parent's memory.stat percpu (the dying children's stays
#     charged to it) and pcpu_cgroup_memory_percpu_bytes.
#  5. Cleans up: deletes the files, drops the clean caches (echo 3 > drop_caches: a file
#     system's metadata blocks charged to a cgroup are not the file's), waits until the
#     cgroups are freed, removes the parent, and shows the figures again.
#
# The memory-cgroup call sites are the functions a mkdir of a memory cgroup allocates
# percpu memory at that stay while it is dying. On 6.18 (traced): mem_cgroup_css_alloc
# twice (mem_cgroup_alloc's vmstats_percpu and the per-node lruvec_stats_percpu, both
# inlined), memcg1_alloc_events (v1 only), css_rstat_init three times (the cgroup's base
# and rstat counters, the memory css's rstat counters), psi_cgroup_alloc, and a
# __percpu_counter_init_many (the writeback domain's counter; a busy generic site, so not
# counted here); its three percpu_ref_init go at removal. Older kernels name them
# mem_cgroup_alloc, alloc_mem_cgroup_per_node_info and cgroup_rstat_init: --sites.
#
# Usage (as root):  scripts/zombie-memcg-demo.sh [options]
#   -n, --count N      memory cgroups to make (default: 4)
#       --size MIB     page cache each one charges (default: 8)
#       --dir DIR      where the files go, disk-backed or tmpfs (default: /var/tmp)
#       --hold S       seconds the dying cgroups are kept before the figures (default: 65:
#                      past a minute, the age band "1m" becomes "1h")
#       --url URL      a running daemon (default: http://127.0.0.1:9717)
#       --sites REGEX  call sites counted (default: see above)
#       --no-cleanup   leave the dying cgroups and their files (remove them yourself)
#   -h, --help
# Prints lines starting "ZOMBIE-MEMCG:" with the figures. Exit status: 0 done, 1 the
# picture is not the expected one (no dying cgroups, nothing live at the sites), 2 usage.
set -euo pipefail
export LC_ALL=C

SELF=$(readlink -f "$0")
COUNT=4
SIZE=8
DIR=/var/tmp
HOLD=65
URL=http://127.0.0.1:9717
SITES='^(mem_cgroup_css_alloc|mem_cgroup_alloc|alloc_mem_cgroup_per_node_info|memcg1_alloc_events|css_rstat_init|cgroup_rstat_init|psi_cgroup_alloc)$'
CLEANUP=1
NAME=pcpu-zombie-demo-$$

say() { echo "== $*"; }
fig() { echo "ZOMBIE-MEMCG: $*"; }
die() { echo "zombie-memcg-demo: $*" >&2; exit 2; }
usage() { sed -n '/^# Usage/,/^# Prints/p' "$SELF" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--count) COUNT=${2:?}; shift 2 ;;
    --size) SIZE=${2:?}; shift 2 ;;
    --dir) DIR=${2:?}; shift 2 ;;
    --hold) HOLD=${2:?}; shift 2 ;;
    --url) URL=${2:?}; shift 2 ;;
    --sites) SITES=${2:?}; shift 2 ;;
    --no-cleanup) CLEANUP=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
for n in "$COUNT" "$SIZE" "$HOLD"; do [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: $n"; done
[ "$COUNT" -ge 1 ] || die "--count must be at least 1"
[ "$(id -u)" -eq 0 ] || die "run as root (cgroups, drop_caches, BPF)"
[ -d "$DIR" ] || die "no directory $DIR"
URL=${URL%/}; URL=${URL%/metrics}
case "$URL" in http://*|https://*) ;; *) URL=http://$URL ;; esac

# pcpu-bpf and pcpu-top: on PATH (the package), else this checkout's venv.
BIN=
command -v pcpu-bpf >/dev/null || BIN=$(dirname "$SELF")/../.venv/bin/
command -v "${BIN}pcpu-bpf" >/dev/null || die "no pcpu-bpf on PATH nor in this checkout's .venv"

# ------------------------------------------------------------ the memory controller
mount_of() { awk -v t="$1" -v o="$2" '$3 == t && (o == "" || index("," $4 ",", "," o ",")) { print $2; exit }' /proc/self/mounts; }
V2=$(mount_of cgroup2 "")
if [ -n "$V2" ] && grep -qw memory "$V2/cgroup.controllers" 2>/dev/null; then
  ROOT=$V2 HIER=unified
  if ! grep -qw memory "$V2/cgroup.subtree_control"; then
    echo +memory >"$V2/cgroup.subtree_control"
    say "enabled the memory controller for the root's children ($V2/cgroup.subtree_control)"
  fi
elif [ -n "$(mount_of cgroup memory)" ]; then
  ROOT=$(mount_of cgroup memory) HIER=memory
else
  die "no memory cgroups here: neither v2 with +memory at its root nor the v1 memory hierarchy"
fi
PARENT=$ROOT/$NAME
say "memory cgroups: $([ "$HIER" = unified ] && echo "cgroup v2 at $ROOT" || echo "cgroup v1 memory hierarchy at $ROOT") (pcpu_cgroup_dying_descendants{hierarchy=\"$HIER\"})"

# ------------------------------------------------------------ the daemon
fetch() {  # url -> stdout
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=60).read().decode())' "$1"
}
OWN_PID='' OWN_PIN=''
if fetch "$URL/metrics" 2>/dev/null | grep -q '^pcpu_exporter_info{.*backend="bpf"'; then
  say "using the daemon at $URL"
else
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  URL=http://127.0.0.1:$port
  OWN_PIN=/sys/fs/bpf/$NAME
  say "no daemon answers; starting one: pcpu-bpf serve --listen 127.0.0.1:$port --pin-dir $OWN_PIN --min-read-interval 1"
  "${BIN}pcpu-bpf" serve --listen "127.0.0.1:$port" --pin-dir "$OWN_PIN" --min-read-interval 1 \
    >"/tmp/$NAME.log" 2>&1 &
  OWN_PID=$!
  for ((i = 0; i < 600; i++)); do
    fetch "$URL/metrics" >/dev/null 2>&1 && break
    kill -0 "$OWN_PID" 2>/dev/null || { cat "/tmp/$NAME.log" >&2; die "pcpu-bpf serve exited"; }
    sleep 0.5
  done
  fetch "$URL/metrics" >/dev/null || die "pcpu-bpf serve did not answer in 300 s"
fi

# ------------------------------------------------------------ figures
TMP=$(mktemp -d)
scrape() { fetch "$URL/metrics" >"$TMP/$1"; }
# A family's value for one hierarchy.
dying() { awk -v h="$HIER" 'index($0, "pcpu_cgroup_dying_descendants{hierarchy=\"" h "\"}") == 1 { printf "%d", $2 }' "$TMP/$1"; }
# "site allocations bytes oldest-age" per matching call site, summed over atomic/reserved.
sites() {
  awk -v re="$SITES" '
    /^pcpu_live_(allocations|bytes|oldest_age_seconds)\{/ {
      if (!match($0, /call_site="[^"]*"/)) next
      s = substr($0, RSTART + 11, RLENGTH - 12); if (s !~ re) next
      f = substr($0, 1, index($0, "{") - 1); seen[s] = 1
      if (f == "pcpu_live_allocations") n[s] += $2
      else if (f == "pcpu_live_bytes") b[s] += $2
      else if ($2 > age[s]) age[s] = $2
    }
    END { for (s in seen) printf "%s %d %d %.0f\n", s, n[s], b[s], age[s] }' "$TMP/$1" | sort
}
# "site band bytes" per matching call site and age band.
bands() {
  awk -v re="$SITES" '
    /^pcpu_live_by_age_bytes\{/ {
      if (!match($0, /call_site="[^"]*"/)) next
      s = substr($0, RSTART + 11, RLENGTH - 12); if (s !~ re) next
      match($0, /age="[^"]*"/); a = substr($0, RSTART + 5, RLENGTH - 6)
      if ($2 > 0) v[s " " a] += $2
    }
    END { for (k in v) printf "%s %d\n", k, v[k] }' "$TMP/$1" | sort
}
# Per site, the change from one scrape to another: "site +allocations +bytes oldest".
delta() {
  join -a 1 -a 2 -e 0 -o 0,1.2,1.3,2.2,2.3,2.4 <(sites "$1") <(sites "$2") \
    | awk '{ printf "%s %+d %+d %s\n", $1, $4 - $2, $5 - $3, $6 }'
}
totals() { awk '{ n += $2; b += $3 } END { printf "%+d allocations, %+d bytes", n, b }'; }
stat_of() { awk -v k="$2" '$1 == k { print $2 }' "$1/memory.stat" 2>/dev/null || echo "-"; }
v2_dying() { awk '$1 == "nr_dying_descendants" { print $2 }' "$PARENT/cgroup.stat"; }
now_s() { date +%s.%N; }
# A scrape whose snapshot and kernel reading (cgroups, live-table ages) were both made
# after this call: scrapes 0.5 s apart share a snapshot, and the daemon reads the kernel
# at most once per its --min-read-interval (pcpu_kernel_stats_age_seconds says when).
fresh_scrape() {  # name
  local t i
  t=$(now_s)
  for ((i = 0; i < 240; i++)); do
    sleep 0.5
    scrape "$1"
    awk -v t="$t" -v n="$(now_s)" '$1 == "pcpu_kernel_stats_age_seconds" { exit !(n - $2 - 0.5 > t) }' "$TMP/$1" && return 0
  done
  die "the daemon served no fresh reading in 120 s"
}
# Wait (at most $2 s) until the daemon's reading of the dying count satisfies $1 (awk).
wait_dying() {
  local i
  for ((i = 0; i < $2 * 2; i++)); do
    scrape now
    awk -v d="$(dying now)" "BEGIN { exit !($1) }" && return 0
    sleep 0.5
  done
  return 1
}
show_sites() {  # title scrape
  say "$1: live at the memory-cgroup call sites (pcpu_live_*; age of the oldest)"
  sites "$2" | awk '{ printf "   %-32s %6d allocations %10d bytes  oldest %ss\n", $1, $2, $3, $4 }'
}

# ------------------------------------------------------------ cleanup
FILES=()
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local rc=$? i t0
  trap - EXIT INT TERM
  if [ "$CLEANUP" -eq 1 ] && [ -d "$PARENT" ]; then
    say "cleanup: deleting the files, dropping the caches, waiting for the dying cgroups to be freed"
    for f in "${FILES[@]}"; do rm -f "$f"; done
    for ((i = 1; i <= COUNT; i++)); do rmdir "$PARENT/z$i" 2>/dev/null || true; done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    t0=$SECONDS
    if [ "$HIER" = unified ]; then
      for ((i = 0; i < 240 && $(v2_dying) > 0; i++)); do sleep 0.5; done
      fig "after cleanup: parent nr_dying_descendants $(v2_dying) after $((SECONDS - t0)) s, memory.stat percpu $(stat_of "$PARENT" percpu) B"
    fi
    rmdir "$PARENT" || echo "could not remove $PARENT" >&2
    # Freed when the memory-cgroup call sites hold no more than before the demo.
    for ((i = 0; i < 240; i++)); do
      scrape after
      [ "$(delta base0 after | awk '{ n += $2 } END { print n + 0 }')" -gt 0 ] || break
      sleep 0.5
    done
    fresh_scrape after
    fig "after cleanup ($((SECONDS - t0)) s): dying $(dying after) (before: $DYING0; dropping the caches frees other dying cgroups too); memory-cgroup call sites against before the demo: $(delta base0 after | totals)"
    show_sites "after cleanup" after
    say "cleaned up: files deleted, caches dropped, cgroups removed"
  elif [ -d "$PARENT" ]; then
    say "left as they are (--no-cleanup): $PARENT and ${FILES[*]}"
  fi
  if [ -n "$OWN_PID" ]; then
    kill -TERM "$OWN_PID" 2>/dev/null || true
    wait "$OWN_PID" 2>/dev/null || true
    "${BIN}pcpu-bpf" detach --pin-dir "$OWN_PIN" >/dev/null 2>&1 || true
    rm -f "/tmp/$NAME.log"
    say "stopped the daemon this demo started and detached its programs"
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ the zombies
scrape base0
DYING0=$(dying base0)
[ -n "$DYING0" ] || die "the daemon exports no pcpu_cgroup_dying_descendants{hierarchy=\"$HIER\"}"
say "before: $DYING0 dying cgroups (pcpu_cgroup_dying_descendants{hierarchy=\"$HIER\"})"

mkdir "$PARENT"
[ "$HIER" != unified ] || echo +memory >"$PARENT/cgroup.subtree_control"
P0=$(stat_of "$PARENT" percpu)
# The baseline of the call sites: the parent made, alive to the end, not counted.
fresh_scrape base
for ((i = 1; i <= COUNT; i++)); do
  mkdir "$PARENT/z$i"
  FILES+=("$DIR/$NAME-z$i")
  # A process in the cgroup writes the file: its page cache is charged to the cgroup.
  sh -c 'echo $$ >"$1/cgroup.procs" && exec dd if=/dev/zero of="$2" bs=1M count="$3" status=none' \
    sh "$PARENT/z$i" "$DIR/$NAME-z$i" "$SIZE"
done
say "made $COUNT memory cgroups under $PARENT, each charged $SIZE MiB of page cache in $DIR"
if [ "$HIER" = unified ]; then
  for ((i = 1; i <= COUNT; i++)); do
    fig "z$i before removal: memory.stat percpu $(stat_of "$PARENT/z$i" percpu) B, file $(stat_of "$PARENT/z$i" file) B"
  done
  P1=$(stat_of "$PARENT" percpu)
  fig "parent memory.stat percpu: $P0 B before the children, $P1 B with them (their own percpu statistics are charged to it)"
fi

for ((i = 1; i <= COUNT; i++)); do rmdir "$PARENT/z$i"; done
say "removed the $COUNT cgroups; their page cache keeps them dying"
[ "$HIER" != unified ] || fig "parent after removal: nr_dying_descendants $(v2_dying), memory.stat percpu $(stat_of "$PARENT" percpu) B"
wait_dying "d >= $DYING0 + $COUNT" 60 || true
say "holding them for $HOLD s (ages)"
sleep "$HOLD"
fresh_scrape held
DYING1=$(dying held)

fig "dying cgroups (pcpu_cgroup_dying_descendants{hierarchy=\"$HIER\"}): $DYING0 before, $DYING1 after removing $COUNT ($((DYING1 - DYING0)))"
fig "memory-cgroup call sites, live against before: $(delta base held | totals); per dying cgroup $(delta base held | awk -v c="$COUNT" '{ n += $2; b += $3 } END { printf "%.1f allocations, %.0f bytes", n / c, b / c }')"
delta base held | while read -r s n b age; do
  fig "  $s: $n allocations, $b bytes; oldest live $age s; the site's live bytes by age: $(bands held | awk -v s="$s" '$1 == s { printf "%s %d B  ", $2, $3 }')"
done
if [ "$HIER" = unified ]; then
  fig "parent memory.stat percpu with $(v2_dying) dying children: $(stat_of "$PARENT" percpu) B; pcpu_cgroup_memory_percpu_bytes{cgroup=\"/$NAME\"} $(awk -v c="/$NAME" 'index($0, "pcpu_cgroup_memory_percpu_bytes{cgroup=\"" c "\"}") == 1 { printf "%d", $2 }' "$TMP/held") B"
fi
show_sites "with the dying cgroups" held
say "pcpu-top --from $URL (the memory-cgroup call sites; AGE: the oldest live allocation)"
"${BIN}pcpu-top" --from "$URL" -r 0 | awk -v re="$SITES" 'NR <= 6 || /^CALL SITE/ { print; next } { s = $1 } s ~ re'

status=0
[ "$DYING1" -ge $((DYING0 + COUNT)) ] || { fig "UNEXPECTED: the dying count rose by $((DYING1 - DYING0)), not $COUNT"; status=1; }
[ "$(delta base held | awk '$2 > 0' | wc -l)" -gt 0 ] || { fig "UNEXPECTED: nothing more live at the memory-cgroup call sites"; status=1; }
exit "$status"
