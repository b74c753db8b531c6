#!/usr/bin/env bash
# Build the Debian package (pcpu-bpf_<version>_all.deb) with Debian's own tooling:
# dpkg-buildpackage, debhelper and dh-python's pybuild, driven by debian/. It builds a
# commit of this repository (git archive) in a scratch directory, so the checkout is never
# written to, then checks the result with lintian.
#
# Build dependencies (debian/control) come from apt's configured sources: as root the
# script installs the ones missing (apt-get build-dep); otherwise it names them and stops.
#
# Usage: scripts/build-deb.sh [options]
#   -c, --commit REF   the commit to build (default: HEAD; uncommitted changes are not in it)
#   -o, --outdir DIR   where the .deb, .buildinfo and .changes go (default: dist/)
#       --no-lintian   do not run lintian
#   -h, --help
#
# Install: apt install ./dist/pcpu-bpf_*_all.deb && systemctl enable --now pcpu-bpf
set -euo pipefail

SELF=$(readlink -f "$0")
PROG=build-deb
say()  { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$PROG" "$*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }

REPO=$(git -C "$(dirname "$SELF")" rev-parse --show-toplevel 2>/dev/null) || die "not in a git checkout"
COMMIT=HEAD
OUTDIR=$REPO/dist
LINTIAN=1
while [ $# -gt 0 ]; do
  case "$1" in
    -c|--commit) COMMIT=${2:?}; shift 2 ;;
    -o|--outdir) OUTDIR=${2:?}; shift 2 ;;
    --no-lintian) LINTIAN=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
SHA=$(git -C "$REPO" rev-parse --verify "$COMMIT^{commit}" 2>/dev/null) || die "no commit $COMMIT"
if [ "$COMMIT" = HEAD ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
  say "note: uncommitted changes are not built (building $SHA)"
fi

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/pcpu-bpf-deb.XXXXXX")
trap 'rm -rf -- "$SCRATCH"' EXIT
SRC=$SCRATCH/pcpu-bpf
mkdir "$SRC"
git -C "$REPO" archive --format=tar "$SHA" | tar -C "$SRC" -xf -
VERSION=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version 2>/dev/null) \
  || die "dpkg-parsechangelog failed (is dpkg-dev installed?)"
say "building pcpu-bpf $VERSION from $SHA ($(git -C "$REPO" log -1 --format=%s "$SHA" | cut -c1-60))"

# 1. Build dependencies.
if ! unmet=$(cd "$SRC" && dpkg-checkbuilddeps 2>&1); then
  unmet=${unmet#*Unmet build dependencies: }
  [ "$(id -u)" -eq 0 ] || die "missing build dependencies (as root: apt-get build-dep ./ in the source): $unmet"
  say "installing build dependencies: $unmet"
  (cd "$SRC" && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q ./) >"$SCRATCH/build-dep.log" 2>&1 \
    || { tail -n 20 "$SCRATCH/build-dep.log" >&2; die "apt-get build-dep failed"; }
fi

# 2. The binary package (architecture-independent; no source package is needed here),
# with the system's own Python: nothing from a venv, pyenv or PYTHONPATH of the caller.
say "dpkg-buildpackage -b -us -uc (log: build.log beside the .deb)"
if ! (cd "$SRC" && env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc) >"$SCRATCH/build.log" 2>&1; then
  tail -n 40 "$SCRATCH/build.log" >&2
  die "dpkg-buildpackage failed"
fi
DEB=$SCRATCH/pcpu-bpf_${VERSION}_all.deb
[ -s "$DEB" ] || die "no $DEB after the build"
mkdir -p "$OUTDIR"
cp "$SCRATCH/build.log" "$OUTDIR/pcpu-bpf_${VERSION}_build.log"
cp "$DEB" "$SCRATCH"/pcpu-bpf_"${VERSION}"_*.buildinfo "$SCRATCH"/pcpu-bpf_"${VERSION}"_*.changes "$OUTDIR/"
OUT=$(readlink -f "$OUTDIR/$(basename "$DEB")")
dpkg-deb --field "$OUT" Package Version Architecture Depends | sed 's/^/    /' >&2
say "$OUT ($(du -h "$OUT" | cut -f1), $(dpkg-deb --contents "$OUT" | grep -vc '/$') files)"

# 3. Lint.
if [ "$LINTIAN" -eq 1 ]; then
  command -v lintian >/dev/null || die "lintian is not installed (apt-get install lintian, or --no-lintian)"
  say "lintian $(basename "$OUT")"
  lintian --display-info --fail-on error "$OUT" >&2 || die "lintian found errors"
  say "lintian: no errors"
fi
echo "$OUT"
