"""PostgreSQL for tests: Debian's cluster started on loopback (and stopped after), one database a server."""

from __future__ import annotations

import glob
import os
import re
import secrets
import subprocess

ROLE, PASSWORD = "bg", "bg"


def _psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database,
                    "-c", sql], check=True, capture_output=True, timeout=60)


class PostgresCluster:
    """Debian's `main` cluster, driven through pg_ctlcluster (peer auth for the postgres user;
    TCP on 127.0.0.1 with a password role for the gateway)."""

    def __init__(self) -> None:
        servers = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not servers:
            raise RuntimeError("PostgreSQL is not installed (make test installs it: scripts/ensure-postgres.sh)")
        self.version = re.search(r"postgresql/(\d+)/", servers[-1]).group(1)  # type: ignore[union-attr]
        self.started_here = False

    def _ctl(self, action: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main", action],
                              capture_output=True, timeout=120)

    def start(self) -> PostgresCluster:
        if os.geteuid() != 0:
            raise RuntimeError("managing the local PostgreSQL cluster needs root")
        if self._ctl("status").returncode != 0:
            result = self._ctl("start")
            if result.returncode != 0:
                raise RuntimeError(f"pg_ctlcluster start failed: {result.stderr.decode()[-500:]}")
            self.started_here = True
        _psql(f"DO $$ BEGIN CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}' CREATEDB; "
              "EXCEPTION WHEN duplicate_object THEN NULL; END $$;")
        return self

    def new_database(self) -> str:
        name = f"bg_test_{secrets.token_hex(4)}"
        _psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1/{name}"

    def stop(self) -> None:
        if self.started_here:
            self._ctl("stop")
