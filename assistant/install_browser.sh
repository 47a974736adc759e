#!/usr/bin/env bash
# Installs Debian's chromium, which the chat page's browser test drives through playwright's executable_path
# (tests/e2e/test_assistant_page.py); playwright's own browser download needs the internet.
# Idempotent: does nothing when chromium is installed. Needs root (or sudo).
set -euo pipefail
command -v chromium >/dev/null && exit 0
exec bash "$(dirname "$0")/../common/apt_install.sh" install_browser.sh chromium
