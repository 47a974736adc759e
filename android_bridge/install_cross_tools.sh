#!/usr/bin/env bash
# Installs the Debian packages that run linux-arm64 packages under emulation on an x86_64 machine
# (pdlink.android_bridge.qemu_runner, tests/model/test_arm64_emulation.py):
#   qemu-user-static       -> qemu-aarch64-static (user-mode emulation, no arm64 root file system)
#   g++-aarch64-linux-gnu  -> aarch64-linux-gnu-g++
#   libc6-dev-arm64-cross  -> the aarch64 glibc in /usr/aarch64-linux-gnu (only a Recommends of the compiler)
# Idempotent: does nothing (and prints nothing) when all are installed. Needs root (or sudo).
set -euo pipefail

exec bash "$(dirname "$0")/../common/apt_install.sh" install_cross_tools.sh \
  qemu-user-static g++-aarch64-linux-gnu libc6-dev-arm64-cross
