"""Run the real control plane (``python -m tollgate control-plane``) as a subprocess for a test."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.gateway import ROOT, free_port


class ControlPlaneProcess:
    """``tollgate control-plane`` on a free port with a SQLite store in ``workdir``."""

    def __init__(self, workdir: Path, admin_token: str | None = None, store: str | None = None,
                 env: dict | None = None):
        self.workdir = Path(workdir)
        self.store_path = self.workdir / "cp.db"
        self.store = store or f"sqlite:///{self.store_path}"
        self.port = free_port()
        self.args = [sys.executable, "-m", "tollgate", "control-plane",
                     "--listen", f"127.0.0.1:{self.port}", "--store", self.store]
        if admin_token:
            self.args += ["--admin-token", admin_token]
        if not self.store.startswith("sqlite:") and "TOLLGATE_AUDIT_KEY" not in (env or {}):
            # (a PostgreSQL store's default audit key file is in the working directory: the
            # repository's; the key of a test goes to its own directory)
            self.args += ["--audit-key-file", str(self.workdir / "audit.key")]
        self.env = dict(os.environ)
        self.env.pop("TOLLGATE_ADMIN_TOKEN", None)      # only what the test gives
        self.env.pop("TOLLGATE_AUDIT_KEY", None)
        self.env.update(env or {})
        self.log_path = self.workdir / "control-plane.log"
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0, wait: bool = True) -> "ControlPlaneProcess":
        """Run it and wait until it serves (``wait=False``: call :meth:`wait_serving` later, to
        start several at once)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env)
        return self.wait_serving(timeout) if wait else self

    def wait_serving(self, timeout: float = 20.0) -> "ControlPlaneProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"control plane exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            try:
                httpx.get(self.url + "/v1/settings", timeout=1.0)   # any answer: it serves
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"control plane not serving in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code, self.proc = self.proc.returncode, None
        return code

    def kill(self) -> None:
        """kill -9: no shutdown of any kind (a crash)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self._log.close()
            self.proc = None

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)


@contextlib.contextmanager
def running(workdir: Path, **options):
    """A started control plane for a fixture or a test; it must stop cleanly (exit 0)."""
    proc = ControlPlaneProcess(workdir, **options).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()
