#!/usr/bin/env bash
# Installs what the `mooncake` KV transport needs (pdlink.cloud.kv.mooncake_transport): the Debian package
# libibverbs1 (Mooncake's wheel links it even for TCP) and the PyPI wheel mooncake-transfer-engine-non-cuda
# into the given Python. Idempotent. Optional: without them the shm and tcp transports still work and the
# mooncake tests are skipped, so a failure here only warns.
set -uo pipefail
PY=${1:-python3}

if ! dpkg-query -W -f='${Status}' libibverbs1 2>/dev/null | grep -q "install ok installed"; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq libibverbs1 >/dev/null) \
      || echo "install_mooncake.sh: could not install libibverbs1; the mooncake KV transport stays off" >&2
  else
    echo "install_mooncake.sh: no apt-get; install libibverbs1 for the mooncake KV transport" >&2
  fi
fi
if ! "$PY" -c "import mooncake.engine" 2>/dev/null; then
  "$PY" -m pip install -q mooncake-transfer-engine-non-cuda \
    || echo "install_mooncake.sh: pip could not install mooncake-transfer-engine-non-cuda" >&2
fi
exit 0
