"""PostgreSQL for tests: Debian's cluster started on loopback (and stopped after), one database a server."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator

ROLE, PASSWORD = "bg", "bg"


def _psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


class PostgresCluster:
    """Debian's `main` cluster, driven through pg_ctlcluster (peer auth for the postgres user;
    TCP on 127.0.0.1 with a password role for the gateway)."""

    def __init__(self) -> None:
        servers = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not servers:
            raise RuntimeError("PostgreSQL is not installed (make test installs it: scripts/ensure-postgres.sh)")
        self.version = re.search(r"postgresql/(\d+)/", servers[-1]).group(1)  # type: ignore[union-attr]
        self.started_here = False

    def _ctl(self, action: str, *options: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *options, self.version, "main", action],
            capture_output=True,
            timeout=120,
        )

    def is_running(self) -> bool:
        return self._ctl("status").returncode == 0

    def accepts_connections(self) -> bool:
        """pg_isready on the gateway's address: the server is up and past recovery."""
        done = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-t", "2"], capture_output=True, timeout=30)
        return done.returncode == 0

    def halt(self, mode: str = "fast") -> None:
        """Stop the cluster now, whoever started it: a database outage for a chaos test (`fast` ends every
        session with "terminating connection due to administrator command"; `immediate` is a crash, the
        next start runs recovery). Pair it with `resume`, in a `finally`: later tests share the cluster."""
        result = self._ctl("stop", "-m", mode)
        if result.returncode != 0 and self.is_running():
            raise RuntimeError(f"pg_ctlcluster stop failed: {result.stderr.decode()[-500:]}")

    def resume(self, timeout: float = 60.0) -> None:
        """Start the cluster again (if it is down) and wait until it accepts connections."""
        deadline = time.monotonic() + timeout
        if not self.is_running():
            result = self._ctl("start")
            if result.returncode != 0 and not self.is_running():
                raise RuntimeError(f"pg_ctlcluster start failed: {result.stderr.decode()[-500:]}")
        while not self.accepts_connections():
            if time.monotonic() >= deadline:
                raise RuntimeError(f"PostgreSQL not accepting connections {timeout:g}s after start")
            time.sleep(0.05)

    @contextlib.contextmanager
    def down(self, mode: str = "fast") -> Iterator[None]:
        """The cluster stopped for the body of the `with`, and running again after it, whatever happens."""
        self.halt(mode)
        try:
            yield
        finally:
            self.resume()

    def start(self) -> PostgresCluster:
        if os.geteuid() != 0:
            raise RuntimeError("managing the local PostgreSQL cluster needs root")
        if self._ctl("status").returncode != 0:
            result = self._ctl("start")
            if result.returncode != 0:
                raise RuntimeError(f"pg_ctlcluster start failed: {result.stderr.decode()[-500:]}")
            self.started_here = True
        _psql(
            f"DO $$ BEGIN CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}' CREATEDB; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        )
        return self

    def new_database(self) -> str:
        name = f"bg_test_{secrets.token_hex(4)}"
        _psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1/{name}"

    def stop(self) -> None:
        if self.started_here:
            self._ctl("stop")
