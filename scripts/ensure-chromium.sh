#!/usr/bin/env bash
# Install Debian's chromium when it is missing, for the browser tests (tests/browser drive it with
# Playwright; no browser is ever downloaded by Playwright itself). Without root or a package mirror
# the tests skip locally; under CI=true they fail, so a gap cannot hide.
set -u
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "ensure-chromium: chromium is not installed and cannot be installed here; the browser tests will skip" >&2
  exit 0
fi
echo "ensure-chromium: installing chromium (Debian package)" >&2
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }
# The package lists may be stale or absent on a fresh machine: refresh them only when needed.
install || { apt-get update -qq >/dev/null 2>&1; install; } \
  || echo "ensure-chromium: installing chromium failed; the browser tests will skip (fail under CI)" >&2
exit 0
