"""A real PostgreSQL server for tests: ``initdb`` + ``postgres`` in a temporary directory, on a
free local port, trust authentication, no fsync (the tests kill clients, not the server).

The binaries are found with ``pg_config --bindir``, else in /usr/lib/postgresql/*/bin, else on
PATH (Debian package ``postgresql``; .ci/run installs it).  PostgreSQL refuses to run as root:
as root, the server runs as the ``postgres`` user (else ``nobody``).

``create_database()`` makes a fresh database per test (a copy of template0: fast, empty).
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.gateway import free_port

SUPERUSER = "tollgate"


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``, or None if PostgreSQL is not installed."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for d in candidates:
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    return None


class PostgresServer:
    def __init__(self):
        self.bindir = find_bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count(1)
        self._user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._user = pwd.getpwnam(name)
                    break
                except KeyError:
                    pass

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run_as(self):
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def start(self) -> "PostgresServer":
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb: Debian package "
                               "postgresql; .ci/run installs it)")
        data = self.dir / "data"
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", SUPERUSER,
                        "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                       check=True, capture_output=True, **self._run_as())
        self.log = open(self.dir / "server.log", "ab")
        return self.resume()

    def resume(self) -> "PostgresServer":
        """Run the server on its data directory and port (after :meth:`halt`: a store restart)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=self.log, stderr=subprocess.STDOUT, **self._run_as())
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}): "
                                   + (self.dir / "server.log").read_text(errors="replace"))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def halt(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data; start it
        again with :meth:`resume`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # fast shutdown (SIGTERM waits for clients)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _ready(self) -> bool:
        r = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p",
                            str(self.port), "-U", SUPERUSER], capture_output=True)
        return r.returncode == 0

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run one statement (psql, autocommit: CREATE DATABASE cannot run in a transaction)."""
        subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-c",
                        statement], check=True, capture_output=True)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        """Stop for good (immediate shutdown: the data directory is removed anyway)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
        self.halt()
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
