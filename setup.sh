#!/usr/bin/env bash
# Set up pcpu-bpf on a Debian machine, as root. Idempotent: a rerun with everything in
# place changes nothing and takes a few seconds. Every step says what it does; a
# failing step says which one and why, and the script stops there.
set -euo pipefail

cd "$(dirname "$0")"
VENV=.venv
# Debian packages: bcc's Python bindings (not on PyPI), the venv module, bpftool for
# inspecting programs, Prometheus + promtool for the end-to-end tests, headers for bcc,
# tmux for the terminal test of pcpu-top, systemd's systemd-analyze for checking the unit,
# YAML and bcrypt for serve --web-config, openssl for the TLS tests' certificates,
# strace for measuring the unit's syscall filter.
PACKAGES=(python3-bpfcc python3-venv bpftool prometheus linux-headers-amd64 tmux systemd
  python3-yaml python3-bcrypt openssl strace)

step() { printf '==> %s\n' "$*"; }
fail() { printf 'setup.sh: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (installs packages, links kernel headers, mounts tracefs)"

# 1. Packages.
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || fail "apt-get update (is a Debian mirror reachable?)"
  # policy-rc.d-style environments refuse to start the prometheus service; that is fine,
  # the tests start their own server on loopback.
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]}"
else
  step "Debian packages present: ${PACKAGES[*]}"
fi

# 2. Kernel headers. bcc compiles programs at load time and needs headers at
# /lib/modules/$(uname -r)/build. Kernels without a headers package (custom builds) can use
# Debian's: tracepoint programs take argument layouts from the live tracefs formats, not
# from the headers.
build="/lib/modules/$(uname -r)/build"
if [ -e "$build/include" ]; then
  step "kernel headers present at $build -> $(readlink -f "$build")"
else
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  [ -n "$arch_dir" ] || fail "no /usr/src/linux-headers-*-amd64 (package linux-headers-amd64)"
  common_dir="${arch_dir%-amd64}-common"
  [ -d "$common_dir" ] || fail "$common_dir missing (package ${common_dir#/usr/src/})"
  step "linking kernel headers: $build -> $arch_dir (source -> $common_dir)"
  mkdir -p "/lib/modules/$(uname -r)"
  ln -sfn "$arch_dir" "$build"
  ln -sfn "$common_dir" "/lib/modules/$(uname -r)/source"
fi

# 3. tracefs (the tracepoint format files), debugfs (the kernel's percpu_stats), bpffs.
mount_if_missing() {  # fstype mountpoint
  if mountpoint -q "$2"; then
    step "$1 mounted at $2"
  else
    step "mounting $1 at $2"
    mount -t "$1" nodev "$2" || fail "mount -t $1 nodev $2"
  fi
}
mount_if_missing debugfs /sys/kernel/debug
mount_if_missing tracefs /sys/kernel/tracing
# bpffs: where `pcpu-bpf serve` pins its maps and programs across restarts.
mount_if_missing bpf /sys/fs/bpf

# The system user the unit runs as (systemd/pcpu-bpf.service, User=pcpu-bpf).
if id pcpu-bpf >/dev/null 2>&1; then
  step "system user pcpu-bpf present"
else
  step "creating system user pcpu-bpf"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pcpu-bpf \
    || fail "useradd pcpu-bpf"
fi

# 4. The virtualenv, from the system Python so that Debian's bcc bindings import.
if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV from /usr/bin/python3 with --system-site-packages"
  /usr/bin/python3 -m venv --system-site-packages "$VENV" || fail "python3 -m venv"
else
  step "virtualenv $VENV present"
fi
"$VENV/bin/python" -c "import bcc" 2>/dev/null \
  || fail "bcc does not import in $VENV (python3-bpfcc is for /usr/bin/python3; recreate $VENV)"

# 5. The package itself (editable, with the test extra). Reinstalled only when
# pyproject.toml changes.
stamp="$VENV/.pcpu-bpf-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  step "pcpu-bpf installed in $VENV"
else
  step "installing pcpu-bpf (editable, with test extras) into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' \
    || fail "pip install -e .[test]"
  echo "$want" >"$stamp"
fi
step "ready: $VENV/bin/pcpu-bpf doctor checks the live kernel"
