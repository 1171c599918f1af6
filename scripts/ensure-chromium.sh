#!/usr/bin/env bash
# Install Debian's chromium when it is missing, for the browser tests (tests/browser drive it with
# Playwright; no browser is ever downloaded by Playwright itself). Without root or a package mirror
# the tests skip locally; under CI=true they fail, so a gap cannot hide.
#
# --background: start the install and return at once (`make test` runs the other tests meanwhile;
# the browser tests run last and wait for it). It writes .venv/chromium-install.{started,done,log};
# `done` holds the install's exit status.
set -u
MARKS="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "ensure-chromium: chromium is not installed and cannot be installed here; the browser tests will skip" >&2
  exit 0
fi
install_once() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }
# The package lists may be stale or absent on a fresh machine: refresh them only when needed.
install() { install_once || { apt-get update -qq >/dev/null 2>&1; install_once; }; }
if [ "${1:-}" = "--background" ]; then
  mkdir -p "$MARKS"
  rm -f "$MARKS/chromium-install.done"
  touch "$MARKS/chromium-install.started"
  echo "ensure-chromium: installing chromium (Debian package) in the background" >&2
  (install; echo $? > "$MARKS/chromium-install.done") > "$MARKS/chromium-install.log" 2>&1 &
  exit 0
fi
echo "ensure-chromium: installing chromium (Debian package)" >&2
install || echo "ensure-chromium: installing chromium failed; the browser tests will skip (fail under CI)" >&2
exit 0
