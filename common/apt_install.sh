#!/usr/bin/env bash
# Installs the named Debian packages that are missing (apt-get, without recommends), for the install scripts
# that need system packages (android_bridge/install_cross_tools.sh, assistant/install_browser.sh).
# Usage: apt_install.sh CALLER PACKAGE...   (CALLER names the script in messages)
# Idempotent: does nothing (and prints nothing) when all are installed. Needs root (or sudo).
set -euo pipefail
CALLER=$1
shift
missing=()
for pkg in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "$CALLER: apt-get not found; install ${missing[*]} with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "$CALLER: run as root to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed ${missing[*]}"
