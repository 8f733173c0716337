"""Run the real gateway (``python -m tollgate gateway``) as a subprocess for a test."""
from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


#: the ports free_port() handed out lately: the kernel may give a port just closed again at
#: once, and a test asking for two ports (a listener and a status port) would get one twice
_HANDED_OUT: collections.deque = collections.deque(maxlen=256)


def free_port() -> int:
    """A port nothing listens on now, and not one this process was handed lately."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise RuntimeError("no free port that was not handed out lately")


class GatewayProcess:
    def __init__(self, config: dict | str, workdir: Path, workers: int = 1,
                 access_log: str | None = None, extra_args=(), env=None, port: int | None = None,
                 name: str = "gateway"):
        self.workdir = Path(workdir)
        self.config_path = self.workdir / f"{name}.yaml"
        if config is not None:          # (None: the extra_args say what to serve, --control-plane)
            self.write_config(config)
        self.port = port or free_port()
        self.status_port = free_port()
        self.workers = workers
        self.args = [sys.executable, "-m", "tollgate", "gateway",
                     *(("--config", str(self.config_path)) if config is not None else ()),
                     "--listen", f"127.0.0.1:{self.port}",
                     "--status-listen", f"127.0.0.1:{self.status_port}",
                     "--workers", str(workers), "--watch-interval", "0.2", *extra_args]
        if access_log:
            self.args += ["--access-log", access_log]
        self.env = dict(os.environ, **(env or {}))
        self.log_path = self.workdir / f"{name}.log"
        self.proc = None

    def write_config(self, config):
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)   # atomic, as a careful operator would

    def start(self, timeout=20.0, ready=True):
        """Start and wait until /readyz says ready (``ready=False``: until it answers at all)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.status("/readyz")[0] == 200 or not ready:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def status(self, path, timeout=5.0):
        """GET on the status listener: (status, body); a healthy one answers at once."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}{path}",
                                        timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self) -> str:
        return self.status("/metrics")[1].decode()

    def metric(self, name: str, **labels) -> float:
        """The value of one sample (0 when absent), e.g. metric('tollgate_requests_total', api='x')."""
        from prometheus_client.parser import text_string_to_metric_families
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def wait_metric(self, name, value, timeout=5.0, **labels):
        """Metrics are pushed by workers every 0.5 s: wait (bounded) until the sample has ``value``."""
        deadline = time.monotonic() + timeout
        current = None
        while time.monotonic() < deadline:
            current = self.metric(name, **labels)
            if current == value:
                return current
            time.sleep(0.1)
        raise AssertionError(f"{name}{labels} = {current}, expected {value}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=40.0) -> int:
        if self.proc is None:
            return 0
        try:
            if self.proc.poll() is not None:
                return self.proc.returncode
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        finally:
            if not self._log.closed:
                self._log.close()
