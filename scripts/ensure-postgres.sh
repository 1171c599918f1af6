#!/usr/bin/env bash
# Install Debian's PostgreSQL server when it is missing, so `make test` can run the PostgreSQL
# suite on a fresh machine. Best effort: without root or a package mirror, those tests skip.
set -u
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "ensure-postgres: PostgreSQL is not installed and cannot be installed here; its tests will skip" >&2
  exit 0
fi
echo "ensure-postgres: installing postgresql (Debian package)" >&2
apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 \
  || echo "ensure-postgres: installing postgresql failed; its tests will skip" >&2
exit 0
