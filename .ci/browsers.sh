#!/usr/bin/env bash
# Idempotent: make sure Debian's Chromium and its WebDriver are installed for the browser test
# (tests/test_serve.py drives /usr/bin/chromium through /usr/bin/chromedriver with Selenium).
# A check when both are there; otherwise apt-get, as root or through passwordless sudo.
# Playwright's or Selenium's own browser downloads do not work here: the machine has no internet
# beyond the package registries.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "browsers: up to date ($(/usr/bin/chromedriver --version | cut -d' ' -f1-2))"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "browsers: chromium and chromium-driver are missing; install them as root:" >&2
  echo "  apt-get update && apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
start=$(date +%s)
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
echo "browsers: installed $(/usr/bin/chromedriver --version | cut -d' ' -f1-2) in $(( $(date +%s) - start )) s"
