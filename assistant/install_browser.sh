#!/usr/bin/env bash
# Installs Debian's chromium, which the chat page's browser test drives through playwright's executable_path
# (tests/e2e/test_assistant_page.py); playwright's own browser download needs the internet.
# Idempotent: does nothing when chromium is installed. Needs root (or sudo).
set -euo pipefail
command -v chromium >/dev/null && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install_browser.sh: apt-get not found; install chromium with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_browser.sh: run as root to install chromium" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing chromium ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "installed chromium"
