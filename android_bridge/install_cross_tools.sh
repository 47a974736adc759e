#!/usr/bin/env bash
# Installs the Debian packages that run linux-arm64 packages under emulation on an x86_64 machine
# (pdlink.android_bridge.qemu_runner, tests/model/test_arm64_emulation.py):
#   qemu-user-static       -> qemu-aarch64-static (user-mode emulation, no arm64 root file system)
#   g++-aarch64-linux-gnu  -> aarch64-linux-gnu-g++
#   libc6-dev-arm64-cross  -> the aarch64 glibc in /usr/aarch64-linux-gnu (only a Recommends of the compiler)
# Idempotent: does nothing (and prints nothing) when all are installed. Needs root (or sudo).
set -euo pipefail

PACKAGES=(qemu-user-static g++-aarch64-linux-gnu libc6-dev-arm64-cross)
missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "install_cross_tools.sh: apt-get not found; install ${missing[*]} with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_cross_tools.sh: run as root to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed ${missing[*]}"
