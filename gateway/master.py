"""The gateway's master process: starts and watches the workers, reloads, serves status.

* The master binds the listening socket once, without SO_REUSEPORT, so a gateway refuses to
  start on an address another gateway or program already serves; its workers inherit the
  socket and accept from its one queue (connections queued when a worker dies are accepted by
  the others).
* Workers are fresh interpreters (``python -m gateway.worker``), never forks of a process with a
  running event loop.  A worker that dies is started again (at most once a second).
* The configuration is validated here first: a bad file at start stops the gateway with the
  errors; a bad file on reload is refused with the reason logged, and the workers keep serving
  the old one.  A good one is applied by SIGHUP to every worker, each of which swaps its
  snapshot atomically.  Reload triggers: SIGHUP to the master, or a change of the file (polled
  every ``watch_interval_s``; mtime, size and inode).
* SIGTERM/SIGINT: the workers drain and exit, then the master exits.
* The status listener (``/metrics``, ``/healthz``, ``/readyz``, ``/status/channels``) runs here,
  on metric totals the workers push (see :mod:`gateway.metrics`).
* The channel members' active health checks run here, once per node (:mod:`gateway.channels`),
  into a health table in shared memory the workers map (made once, like the counters).
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import signal
import struct
import subprocess
import sys
import time

import httptools
import msgspec
import uvloop
from prometheus_client import CollectorRegistry, generate_latest

import fastpath

from .channels.checker import HealthChecker
from .channels.table import HealthTable, create_health_segment
from .config import ConfigError, load_document, validate
from .config import warnings as config_warnings
from .metrics import ClusterCollector
from .policy.counters import create_segment
from .follow import Follower, FollowSettings, prepare_state_dir, sync_dir
from .snapshot import compile_snapshot, paused_gc
from .worker import WorkerSettings, bind_listener

log = logging.getLogger("tollgate.gateway")

IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    config: str
    host: str = "127.0.0.1"
    port: int = 8080                        # 0: no plain listener
    tls_host: str = "127.0.0.1"
    tls_port: int = 0                       # 0: no TLS listener
    status_host: str = "127.0.0.1"
    status_port: int = 9091
    workers: int = 1
    access_log: str | None = None
    watch_interval_s: float = 1.0
    throttle_keys: int = 262_144            # live caller keys the node's throttle table holds
    worker: WorkerSettings | None = None   # template for the workers' settings
    #: follow a control plane (``config`` is then the state directory's published.json)
    follow: FollowSettings | None = None


class CheckedConfig(msgspec.Struct, frozen=True):
    """A configuration file that can be served: its version (content hash), its warnings, and
    how many APIs each environment serves."""

    version: str
    warnings: list[str]
    apis_per_environment: dict[str, int]
    has_certificates: bool = False


def check_file(path) -> CheckedConfig:
    """Load and compile without serving; raise ConfigError or OSError (unreadable)."""
    return _check(path)[0]


def _check(path, previous=None):
    """(CheckedConfig, the loaded document, its snapshot, the SHA-256 of the bytes checked):
    check_file, and the document the master serves; ``previous``, the snapshot of the last
    check, lets the compile reuse what did not change."""
    with open(path, "rb") as f:     # an unreadable file is an OSError, not a config error
        data = f.read()
    with paused_gc():
        # (the APIs equal to the last good document's are not validated again on their own)
        doc = load_document(path, data=data, checked=previous is not None)
        if previous is not None:
            errors = validate(doc, previous.document)
            if errors:
                raise ConfigError(errors, source=os.fspath(path))
        snapshot = compile_snapshot(doc, runtime=None, base_dir=config_dir(path),
                                    previous=previous)
    counts = {env: 0 for env in doc.environment_names()}
    for _api, env in snapshot.apis:
        counts[env] = counts.get(env, 0) + 1
    warnings = config_warnings(doc)
    if snapshot.certificates is not None:
        warnings += snapshot.certificates.warnings
    return (CheckedConfig(snapshot.version, warnings, counts, snapshot.certificates is not None),
            doc, snapshot, hashlib.sha256(data).digest())


def config_dir(path) -> str:
    """Where the document's relative file paths (certificates) are read from."""
    return os.path.dirname(os.path.abspath(path))


class WorkerProcess:
    def __init__(self, index):
        self.index = index
        self.proc = None
        self.pid = 0
        self.ready = False
        self.version = ""
        self.started_at = 0.0
        self.channel_task = None


class Master:
    def __init__(self, settings: GatewaySettings, loop):
        self.settings = settings
        self.loop = loop
        self.workers = [WorkerProcess(i) for i in range(settings.workers)]
        self.collector = ClusterCollector(self)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.config_version = ""
        self.checked = None         # the snapshot of the last good check (reused by the next)
        self.implementation = fastpath.IMPLEMENTATION
        self.stopping = False
        self._stat = None
        self._done = loop.create_future()
        self._status_server = None
        self.listener = None       # the listening socket the workers inherit
        self.tls_listener = None   # the TLS one, when there is one
        # the throttle and quota counters every worker shares; made once, so budgets outlive
        # reloads and worker restarts
        self.counters_fd = create_segment(settings.throttle_keys)
        # the channel members' health, shared with the workers; checked here, once per node
        self.health_fd = create_health_segment()
        self.checker = HealthChecker(HealthTable(self.health_fd), loop)
        # the SHA-256 of the document bytes this master validated last, read by the workers:
        # they decode those bytes without validating them again (they still compile them)
        self.checked_fd = os.memfd_create("tollgate-checked")
        os.pwrite(self.checked_fd, bytes(32), 0)
        self.follower = None        # the watch of the control plane, when following one
        self.follow_revision = 0    # the revision of the state directory's document at start

    # -- workers ---------------------------------------------------------------------------------
    def _spawn(self, wp: WorkerProcess):
        read_fd, write_fd = os.pipe()
        s = self.settings
        listen_fd = self.listener.fileno() if self.listener is not None else -1
        tls_fd = self.tls_listener.fileno() if self.tls_listener is not None else -1
        settings = msgspec.structs.replace(
            s.worker or WorkerSettings(config=s.config, host=s.host, port=s.port),
            config=s.config, host=s.host, port=s.port, index=wp.index,
            access_log=s.access_log, channel_fd=write_fd, listen_fd=listen_fd,
            tls_host=s.tls_host, tls_port=s.tls_port, tls_listen_fd=tls_fd,
            counters_fd=self.counters_fd, health_fd=self.health_fd,
            checked_fd=self.checked_fd)
        # run from the directory this master imported gateway from: ``-m`` puts the working
        # directory first on sys.path, and a worker must run the very same code as its master
        wp.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.worker", msgspec.json.encode(settings).decode()],
            pass_fds=tuple(fd for fd in (write_fd, listen_fd, tls_fd, self.counters_fd,
                                         self.health_fd, self.checked_fd) if fd >= 0),
            close_fds=True,
            cwd=IMPORT_ROOT)
        os.close(write_fd)
        wp.pid = wp.proc.pid
        wp.ready = False
        wp.started_at = time.monotonic()
        # keep the task: the loop holds tasks weakly, and a collected reader would stop the
        # worker's reports (metrics, readiness, reload results)
        wp.channel_task = self.loop.create_task(self._read_channel(wp, wp.pid, read_fd))

    async def _read_channel(self, wp, pid, read_fd):
        # The transport owns the descriptor (libuv closes it); the file object must not close
        # it again: by then its number may belong to a new worker's pipe or a status socket.
        reader = os.fdopen(read_fd, "rb", buffering=0, closefd=False)
        stream = asyncio.StreamReader(limit=64 * 1024 * 1024)
        try:
            transport, _ = await self.loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stream), reader)
        except BaseException:
            os.close(read_fd)
            raise
        decoder = msgspec.msgpack.Decoder()
        try:
            while True:
                size = struct.unpack("!I", await stream.readexactly(4))[0]
                message = decoder.decode(await stream.readexactly(size))
                self._on_message(wp, pid, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            transport.close()
            # the end of the pipe: the worker is gone and its last push is read (retiring it
            # when its exit is seen could come before that push, counted then twice)
            self.collector.retire(pid)

    def _on_message(self, wp, pid, message):
        kind = message.get("t")
        if kind == "metrics":
            self.collector.update(pid, message)
        elif kind == "ready":
            wp.ready = True
            wp.version = message["version"]
            log.info("worker %d (pid %d) ready, config %s, fastpath %s", wp.index, pid,
                     wp.version, message.get("implementation"))
            if wp.version != self.config_version and wp.proc is not None:
                # a reload came while it started (it was not signalled: see _signal_workers),
                # after it had read the file: it loads the file again now
                try:
                    os.kill(wp.proc.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass
        elif kind == "reload":
            if message["ok"]:
                wp.version = message["version"]

    async def _watch_workers(self):
        while not self.stopping:
            await asyncio.sleep(0.2)
            for wp in self.workers:
                if wp.proc is None or wp.proc.poll() is None:
                    continue
                code = wp.proc.returncode
                if self.stopping:
                    break
                log.error("worker %d (pid %d) exited with %s; starting it again", wp.index,
                          wp.pid, code)
                wp.proc = None
                delay = max(0.0, 1.0 - (time.monotonic() - wp.started_at))
                self.loop.call_later(delay, self._respawn, wp)

    def _respawn(self, wp):
        if not self.stopping and wp.proc is None:
            self._spawn(wp)

    def _signal_workers(self, sig):
        for wp in self.workers:
            if sig == signal.SIGHUP and not wp.ready:
                # a worker still starting has no SIGHUP handler yet (the default action ends
                # it): it reads the file as it starts, and is told again once ready if the
                # file changed after it read it (see _on_message)
                continue
            if wp.proc is not None and wp.proc.poll() is None:
                try:
                    os.kill(wp.proc.pid, sig)
                except ProcessLookupError:
                    pass

    # -- configuration ---------------------------------------------------------------------------
    def reload(self, reason, candidate=None) -> bool:
        """Check the configuration file (or ``candidate``, a file beside it that replaces it
        once checked) and, when it changed, make the workers load it.  False when refused."""
        path = candidate or self.settings.config
        try:
            checked, doc, snapshot, digest = _check(path, self.checked)
        except OSError as exc:
            self.reloads_failed += 1
            log.error("reload (%s): cannot read %s (%s); still serving configuration %s", reason,
                      path, exc.strerror or exc, self.config_version)
            return False
        except ConfigError as exc:
            self.reloads_failed += 1
            log.error("reload (%s) refused, still serving configuration %s:\n%s", reason,
                      self.config_version, exc)
            if candidate:
                os.unlink(candidate)
            return False
        if candidate:       # (the workers, and a restart, read the file: it is this one now)
            os.replace(candidate, self.settings.config)
            sync_dir(os.path.dirname(self.settings.config))
            self._stat = self._file_state()
        self.checked = snapshot
        version = checked.version
        if version == self.config_version:
            log.info("reload (%s): %s is unchanged; still serving configuration %s", reason,
                     path, version)
            return True
        _log_warnings(path, checked)
        self.reloads_ok += 1
        log.info("reload (%s): config %s -> %s", reason, self.config_version, version)
        self.config_version = version
        self.checker.apply(doc)
        os.pwrite(self.checked_fd, digest, 0)
        self._signal_workers(signal.SIGHUP)
        return True

    def _file_state(self):
        try:
            st = os.stat(self.settings.config)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _watch_file(self):
        self._stat = self._file_state()
        while not self.stopping:
            await asyncio.sleep(self.settings.watch_interval_s)
            state = self._file_state()
            if state is None:
                if self._stat is not None:      # once per disappearance
                    log.warning("configuration file %s is gone; still serving configuration %s "
                                "(it is loaded again when the file is back)",
                                self.settings.config, self.config_version)
                self._stat = None
            elif state != self._stat:
                self._stat = state
                self.reload("file changed")

    # -- status listener ------------------------------------------------------------------------
    @property
    def healthy(self):
        return any(wp.ready and wp.proc is not None and wp.proc.poll() is None for wp in self.workers)

    @property
    def ready(self):
        # (a gateway following a control plane is ready once it serves a publish)
        return not self.stopping and all(wp.ready and wp.proc is not None for wp in self.workers) \
            and (self.follower is None or self.follower.applied > 0)

    def status_response(self, method, path):
        if method not in (b"GET", b"HEAD"):
            return 405, b"text/plain", b"method not allowed\n"
        path = path.split(b"?", 1)[0]
        if path == b"/metrics":
            return 200, b"text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if path == b"/healthz":
            ok = self.healthy
            return (200 if ok else 503), b"text/plain", b"ok\n" if ok else b"no worker serving\n"
        if path == b"/readyz":
            ok = self.ready
            body = msgspec.json.encode({"ready": ok, "config_version": self.config_version,
                                        **({"revision": self.follower.applied}
                                           if self.follower is not None else {}),
                                        "workers": [{"pid": w.pid, "ready": w.ready,
                                                     "config_version": w.version}
                                                    for w in self.workers]})
            return (200 if ok else 503), b"application/json", body
        if path == b"/status/channels":
            return 200, b"application/json", msgspec.json.encode(self.checker.status())
        return 404, b"text/plain", b"not found\n"

    # -- running -------------------------------------------------------------------------------
    async def run(self):
        if self.settings.follow is not None:
            self.follower = Follower(self.settings.follow, self, self.follow_revision)
        checked, doc, self.checked, digest = _check(self.settings.config)
        os.pwrite(self.checked_fd, digest, 0)
        _log_warnings(self.settings.config, checked)
        version = self.config_version = checked.version
        s = self.settings
        if s.port:
            self.listener = _listen(s.host, s.port, "serve")
        if s.tls_port:
            self.tls_listener = _listen(s.tls_host, s.tls_port, "serve TLS")
        status = _listen(s.status_host, s.status_port, "serve the status endpoints")
        self._status_server = await self.loop.create_server(lambda: StatusProtocol(self),
                                                            sock=status)
        for wp in self.workers:
            self._spawn(wp)
        self.checker.apply(doc)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        listening = ", ".join(([f"http on {s.host}:{s.port}"] if s.port else []) +
                              ([f"https on {s.tls_host}:{s.tls_port}"] if s.tls_port else []))
        log.info("tollgate gateway: %d worker(s), %s, status on %s:%d, config %s, fastpath %s",
                 s.workers, listening, s.status_host, s.status_port, version,
                 fastpath.IMPLEMENTATION)
        if s.tls_port and not checked.has_certificates:
            log.warning("the TLS listener has no certificate to serve: every handshake is refused "
                        "until the configuration has one (certificates)")
        watchers = [self.loop.create_task(self._watch_workers()),
                    self.loop.create_task(self._watch_file())]
        if self.follower is not None:
            watchers.append(self.loop.create_task(self.follower.run()))
        await self._done
        for task in watchers:
            task.cancel()

    def stop(self):
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: draining workers")
        self.checker.stop()
        self._signal_workers(signal.SIGTERM)
        self.close_listener()
        self.loop.create_task(self._wait_workers())

    async def _wait_workers(self):
        limit = (self.settings.worker.limits.drain_timeout_s if self.settings.worker else 30.0) + 5.0
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if all(wp.proc is None or wp.proc.poll() is not None for wp in self.workers):
                break
            await asyncio.sleep(0.05)
        else:
            log.error("workers did not stop in time; killing them")
            self._signal_workers(signal.SIGKILL)
        if self._status_server is not None:
            self._status_server.close()
        self._done.set_result(None)


    def close_listener(self):
        """Stop new connections from queueing on the address: the workers hold their own
        copies of the socket while they drain; it closes with the last of them."""
        for sock in (self.listener, self.tls_listener):
            if sock is not None:
                sock.close()
        self.listener = self.tls_listener = None


def _log_warnings(path, checked):
    for warning in checked.warnings:
        log.warning("%s: %s", path, warning)


class AddressInUse(OSError):
    """The gateway cannot listen where it was told to: the message says where and why."""


def _listen(host, port, purpose):
    try:
        return bind_listener(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(f"cannot {purpose} on {host}:{port}: the address is already in use "
                               "(by another gateway or another program)") from None
        raise AddressInUse(f"cannot {purpose} on {host}:{port}: {exc.strerror or exc}") from None


class StatusProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 listener for the status endpoints: one request, then close."""

    MAX_REQUEST = 16 * 1024

    def __init__(self, master):
        self.master = master
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.size = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(10.0, transport.close)

    def connection_lost(self, exc):
        self.timer.cancel()

    def data_received(self, data):
        self.size += len(data)
        try:
            if self.size > self.MAX_REQUEST:
                raise httptools.HttpParserError("request too large")
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        method = self.parser.get_method()
        status, ctype, body = self.master.status_response(method, self.url)
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, b"OK" if status == 200 else b"Error", ctype, len(body)))
        self.transport.write(head + (b"" if method == b"HEAD" else body))
        self.transport.close()


def run_gateway(settings: GatewaySettings) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s master[{os.getpid()}] %(levelname)s %(message)s")
    follow_revision = 0
    if settings.follow is not None:
        # the configuration is the last document applied from the control plane
        state_dir = os.path.abspath(settings.follow.state_dir)
        try:
            published, follow_revision = prepare_state_dir(state_dir)
        except OSError as exc:
            print(f"tollgate: cannot use the state directory {state_dir}: {exc}",
                  file=sys.stderr)
            return 2
        settings = msgspec.structs.replace(
            settings, config=published,
            follow=msgspec.structs.replace(settings.follow, state_dir=state_dir))
    # workers run from another directory (see _spawn): hand them absolute paths
    settings = msgspec.structs.replace(
        settings, config=os.path.abspath(settings.config),
        access_log=(os.path.abspath(settings.access_log)
                    if settings.access_log not in (None, "-") else settings.access_log))
    try:
        check_file(settings.config)
    except ConfigError as exc:
        print(f"tollgate: {settings.config}: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tollgate: cannot read {settings.config}: {exc}", file=sys.stderr)
        return 2
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    master = Master(settings, loop)
    master.follow_revision = follow_revision
    try:
        loop.run_until_complete(master.run())
    except OSError as exc:
        print(f"tollgate: {exc}", file=sys.stderr)
        master.stopping = True
        master._signal_workers(signal.SIGTERM)
        master.close_listener()
        return 1
    finally:
        loop.close()
    return 0
