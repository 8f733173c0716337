"""A real ``redis-server`` for a test: on a free local port, without persistence; it can be
killed (SIGKILL), paused (SIGSTOP/SIGCONT) and restarted on the same port (its data lost)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.support.gateway import free_port

REDIS_SERVER = "redis-server"


class RedisServer:
    def __init__(self, port: int | None = None, password: str | None = None):
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.dir = tempfile.mkdtemp(prefix="tollgate-redis-")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which(REDIS_SERVER)
        if exe is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server; "
                               ".ci/run installs it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             "--protected-mode", "no", "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {out}")
            if self.ping():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def ping(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                # a password-protected server answers NOAUTH: it is up all the same
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def command(self, *args: str | bytes | int) -> bytes:
        """One command in RESP over a fresh connection (after AUTH if the server has a
        password); the raw reply (for checks in tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            if self.password:
                s.sendall(_resp(("AUTH", self.password)))
                assert s.recv(64).startswith(b"+OK")
            s.sendall(_resp(args))
            return s.recv(65536)

    def get_int(self, key: str) -> int | None:
        """The integer stored at key, or None if there is none."""
        reply = self.command("GET", key)
        if reply.startswith(b"$-1"):
            return None
        return int(reply.split(b"\r\n")[1])

    def kill(self) -> None:
        """SIGKILL: gone at once, its data lost."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.paused = False
        self.proc.stdout.close()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog), nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def restart(self) -> "RedisServer":
        """Killed and started again on the same port, empty."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _resp(args) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)
