#!/usr/bin/env bash
# Installs the system programs the project runs and tests against (Debian/Ubuntu, as root or with sudo):
# redis-server (Redis and Sentinel), prometheus + promtool, chromium (browser tests), buildah + mmdebstrap (image smoke).
# Idempotent: installs only what is missing. Pass package names to install a subset, e.g. `install-system.sh redis-server`.
set -euo pipefail

declare -A BIN_OF=(
  [redis-server]=redis-server
  [prometheus]=promtool
  [chromium]=chromium
  [buildah]=buildah
  [mmdebstrap]=mmdebstrap
)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(redis-server prometheus chromium buildah mmdebstrap)

missing=()
for pkg in "${wanted[@]}"; do
  bin=${BIN_OF[$pkg]:-$pkg}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/bin/$bin" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]}. Install them with your system's package manager (see README, 'Other platforms')." >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing with apt: ${missing[*]}"
# A fresh machine may still be running its own apt at boot: wait for the lock rather than fail.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged services; rtai starts its own servers on free ports, so stop the system ones.
for svc in redis-server prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then $SUDO systemctl stop "$svc" || true; fi
done
