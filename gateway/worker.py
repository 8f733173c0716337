"""A gateway worker process: one uvloop event loop serving client connections.

Started by the master (:mod:`gateway.master`) as ``python -m gateway.worker SETTINGS_JSON``.
It serves the listening socket the master bound and passed down (``listen_fd``): all workers
accept from one queue, so no second program can join the address, and connections queued
when a worker dies are accepted by the others.  It talks to the master over one pipe
(``channel_fd``): frames of msgpack carrying ``ready``, ``reload`` results and periodic metric
totals.

Signals: SIGHUP reloads the configuration file (a bad file is refused and the old snapshot keeps
serving); SIGTERM or SIGINT drains: stop accepting, let in-flight exchanges finish (up to
``drain_timeout_s``), close, exit.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import socket
import struct
import sys
import time

import msgspec
import uvloop

import fastpath

from .accesslog import AccessLog
from .config import ConfigError, load_document
from .exchange import Clock, RequestIds
from .http.limits import Limits
from .http.server import ClientConnection
from .http.tls_server import serve_tls
from .http.tunnel import Tunnel, TunnelStats
from .http.upstream import UpstreamPool
from .policy.counters import NodeCounters
from .metrics import WorkerMetrics
from .pipeline import Pipeline
from .snapshot import compile_snapshot, paused_gc
from .channels.table import HealthTable
from .tls import front_context, verify_clients

log = logging.getLogger("tollgate.gateway")


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    config: str
    host: str
    port: int
    index: int = 0
    access_log: str | None = None
    channel_fd: int = -1
    listen_fd: int = -1             # the master's listening socket; -1: bind host:port here
    tls_host: str = "127.0.0.1"
    tls_port: int = 0               # 0: no TLS listener
    tls_listen_fd: int = -1         # the master's TLS listening socket; -1: bind tls_host:tls_port
    push_interval_s: float = 0.5
    counters_fd: int = -1           # the node's shared counters (gateway.policy.counters)
    health_fd: int = -1             # the node's channel member health (gateway.channels.table)
    checked_fd: int = -1            # the SHA-256 of the document bytes the master validated
    limits: Limits = Limits()


class Worker:
    """The state shared by every connection of one worker process."""

    def __init__(self, settings: WorkerSettings, loop):
        self.settings = settings
        self.loop = loop
        self.limits = settings.limits
        self.log = log
        self.clock = Clock(loop.time())
        self.connections: set = set()      # client connections and WebSocket tunnels
        self.tunnel_stats = TunnelStats()
        self.draining = False
        self.pool = UpstreamPool(loop, self.limits)
        self.metrics = WorkerMetrics(fastpath.IMPLEMENTATION)
        # the node's throttle and quota counters, shared with the other workers
        self.counters = NodeCounters(settings.counters_fd)
        self.budgets = None                 # Redis budgets when the document has a redis section
        # the health of channel members, written by the master's checker and by every worker's
        # passive checks (a private table when the worker runs alone)
        self.health_table = HealthTable(settings.health_fd if settings.health_fd >= 0 else None)
        self._health_generation = -1
        self._health_sync_at = 0.0
        self.pipeline = Pipeline(self)
        self.snapshot = None
        self.config_bytes = b""
        self.access_log = AccessLog(settings.access_log) if settings.access_log else None
        self.request_ids = RequestIds(os.urandom(8).hex())
        self._tasks: set = set()
        self._channel = None
        self._server = None
        self._tls_server = None
        self.tls_context = front_context(self.current_certificates)
        self.tls_handshakes_begun = 0
        self.tls_handshakes = 0             # completed (ClientConnection.connection_made)
        self.tls_failures: dict = {}        # reason -> failed handshakes
        self._certificate_files: dict = {}  # TLS file path -> (mtime, size, inode) when loaded
        self.tls_contexts: dict = {}        # https backends' client contexts (see snapshot)
        self._stopped = loop.create_future()

    # -- services for connections and handlers ------------------------------------------------
    def spawn(self, coro):
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task):
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception())

    def count_protocol_error(self, error):
        self.metrics.count_error(error.code)

    def log_protocol_error(self, conn, error, request_id):
        log.info("rejected request from %s: %s %s (%s) request_id=%s", conn.client_ip,
                 error.status, error.message, error.detail, request_id)

    def log_exchange_error(self, ex, error):
        if error.status >= 500 and not error.cause_logged:
            log.warning("%s %s %s -> %s %s: %s request_id=%s", ex.client_ip, ex.method,
                        ex.path, error.status, error.code, error.detail, ex.request_id)

    # -- configuration ------------------------------------------------------------------------
    def load(self, initial: bool) -> bool:
        path = self.settings.config
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self._config_failed(f"cannot read {path}: {exc}", initial)
            return False
        if data == self.config_bytes and not self._certificates_changed():
            return True
        base_dir = os.path.dirname(os.path.abspath(path))
        previous_budgets = self.budgets
        started = time.monotonic()
        try:
            with paused_gc():
                # bytes the master validated are only decoded (and compiled, below)
                doc = load_document(path, data=data, checked=self._checked(data))
                self.budgets = self._budgets_for(doc.redis)     # (the stages compiled take it)
                # (the APIs a reload did not change are taken from the live snapshot)
                snapshot = compile_snapshot(doc, runtime=self, base_dir=base_dir,
                                            previous=self.snapshot)
        except ConfigError as exc:
            self._replace_budgets(previous_budgets)
            self._config_failed(f"{path}: invalid configuration:\n{exc}", initial)
            return False
        self.snapshot = snapshot          # the atomic swap: one reference
        if previous_budgets is not None and previous_budgets is not self.budgets:
            # exchanges of the old snapshot may still count on it: close after the swap
            self.spawn(previous_budgets.close())
        self.pipeline.router = snapshot.router
        self.pipeline.trusted = snapshot.trusted
        self._health_generation = -1        # (the new plans read the table at the next tick)
        self.config_bytes = data
        self._certificate_files = {p: _file_state(p) for p in snapshot.files}
        verify_clients(self.tls_context, snapshot.certificates)
        if snapshot.certificates is not None and self.settings.index == 0:
            for warning in snapshot.certificates.warnings:
                log.warning("%s: %s", path, warning)
        if not initial:
            log.info("worker %d: configuration %s is live (%d of %d compiled APIs kept from the "
                     "last one; loaded in %.0f ms)", self.settings.index, snapshot.version,
                     snapshot.reused, len(snapshot.apis), (time.monotonic() - started) * 1000)
            self._end_stale_tunnels(snapshot)
            self.send({"t": "reload", "ok": True, "version": snapshot.version})
        return True

    def _checked(self, data) -> bool:
        """Whether the master validated these very bytes (see Master.checked_fd)."""
        fd = self.settings.checked_fd
        return fd >= 0 and os.pread(fd, 32, 0) == hashlib.sha256(data).digest()

    def _budgets_for(self, config):
        """The Redis budgets for the document's ``redis`` section: the live ones when it did
        not change (their leases and state carry over), new ones when it did, None without."""
        if config is None:
            return None
        if self.budgets is not None and self.budgets.config == config:
            return self.budgets
        from .policy.budgets import Budgets     # (redis is imported only when configured)

        return Budgets(config, self.metrics)

    def _replace_budgets(self, budgets):
        """Back to ``budgets`` after a refused document (closing what it had made)."""
        if self.budgets is not None and self.budgets is not budgets:
            self.spawn(self.budgets.close())
        self.budgets = budgets

    def _end_stale_tunnels(self, snapshot):
        """WebSocket tunnels opened through an API the reload changed or removed get the drain
        grace, then are closed (the others are not touched)."""
        stale = sum(1 for conn in list(self.connections)
                    if isinstance(conn, Tunnel) and not conn.closed
                    and not conn.check_api(snapshot.apis))
        if stale:
            log.info("worker %d: %d WebSocket tunnel(s) of changed or removed APIs close in "
                     "%.0f s", self.settings.index, stale, self.limits.tunnel_drain_grace_s)

    def current_certificates(self):
        """The live snapshot's certificates (read by each TLS handshake)."""
        snapshot = self.snapshot
        return snapshot.certificates if snapshot is not None else None

    def _certificates_changed(self) -> bool:
        return any(_file_state(p) != state for p, state in self._certificate_files.items())

    def count_tls_failure(self, reason):
        self.tls_failures[reason] = self.tls_failures.get(reason, 0) + 1

    def _config_failed(self, reason, initial):
        log.error("worker %d: %s", self.settings.index, reason)
        if not initial:
            self.send({"t": "reload", "ok": False, "error": reason})

    # -- the master channel ---------------------------------------------------------------------
    def send(self, message: dict):
        if self._channel is not None and not self._channel.is_closing():
            payload = msgspec.msgpack.encode(message)
            self._channel.write(struct.pack("!I", len(payload)) + payload)

    def push_metrics(self):
        # (an export hands over what changed: only when it can be sent)
        if self.snapshot is not None and self._channel is not None \
                and not self._channel.is_closing():
            self.send({"t": "metrics", **self.metrics.export(self)})

    # -- running --------------------------------------------------------------------------------
    def listen_socket(self, fd, host, port) -> socket.socket | None:
        if fd >= 0:
            sock = socket.socket(fileno=fd)
        elif port:   # a worker run on its own (not by a master)
            sock = bind_listener(host, port)
        else:
            return None
        sock.setblocking(False)
        return sock

    async def serve(self):
        if not self.load(initial=True):
            raise SystemExit(2)
        if self.settings.channel_fd >= 0:
            # the transport owns the descriptor (see Master._read_channel)
            self._channel, _ = await self.loop.connect_write_pipe(
                asyncio.Protocol, os.fdopen(self.settings.channel_fd, "wb", buffering=0,
                                            closefd=False))
        s = self.settings
        sock = self.listen_socket(s.listen_fd, s.host, s.port)
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: ClientConnection(self), sock=sock, backlog=4096)
        sock = self.listen_socket(s.tls_listen_fd, s.tls_host, s.tls_port)
        if sock is not None:
            self._tls_server = await serve_tls(self, sock)
        self.loop.add_signal_handler(signal.SIGHUP, self.load, False)
        self.loop.add_signal_handler(signal.SIGTERM, self.drain)
        self.loop.add_signal_handler(signal.SIGINT, self.drain)
        log.info("worker %d serving, config %s, fastpath %s", self.settings.index,
                 self.snapshot.version, fastpath.IMPLEMENTATION)
        self.send({"t": "ready", "version": self.snapshot.version, "pid": os.getpid(),
                   "implementation": fastpath.IMPLEMENTATION})
        self.push_metrics()
        # what start-up built lives as long as the process: keep it out of every collection
        gc.collect()
        gc.freeze()
        ticker = self.spawn(self._tick())
        try:
            await self._stopped
        finally:
            ticker.cancel()
            self.pool.close_all()
            if self.budgets is not None:    # (unused leases back to Redis, bounded)
                try:
                    await asyncio.wait_for(self.budgets.close(), 2.0)
                except (asyncio.TimeoutError, OSError):
                    pass
            self.push_metrics()
            if self.access_log is not None:
                self.access_log.close()
            if self._channel is not None:
                self._channel.close()
                await asyncio.sleep(0)

    async def _tick(self):
        """The worker's clock: deadlines, pool aging, log flushing, metric pushes."""
        limits = self.limits
        tick = limits.tick_s
        next_slow = 0.0
        next_push = 0.0
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            self.clock.advance(now)
            for conn in list(self.connections):
                if conn.deadline:
                    try:
                        conn.check_deadline(now)
                    except Exception:   # one connection's failure must not stop the sweep
                        log.exception("deadline handling failed; closing the connection")
                        conn.hard_close()
            if now >= next_slow:
                next_slow = now + 1.0
                self.pool.sweep(now)
            self._sync_health(now)
            if self.access_log is not None:
                self.access_log.flush()
            if now >= next_push:
                next_push = now + self.settings.push_interval_s
                self.push_metrics()
            if self.draining and not self.connections:
                self._finish()
            if os.getppid() == 1 and self.settings.channel_fd >= 0:
                log.error("worker %d: the master is gone; draining", self.settings.index)
                self.drain()

    def _sync_health(self, now):
        """Channel members' health from the node's table into this worker's balancers: when
        the table changed, and every 0.5 s (passive back-offs end with time)."""
        plans = self.snapshot.channel_plans if self.snapshot is not None else ()
        if not plans:
            return
        generation = self.health_table.generation()
        if generation == self._health_generation and now < self._health_sync_at:
            return
        self._health_generation = generation
        self._health_sync_at = now + 0.5
        now_ns = time.monotonic_ns()
        for plan in plans:
            plan.sync(now_ns)

    def drain(self):
        if self.draining:
            return
        self.draining = True
        log.info("worker %d draining (%d connections)", self.settings.index, len(self.connections))
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        for conn in list(self.connections):
            conn.start_drain()
        self.loop.call_later(self.limits.drain_timeout_s, self._finish)
        if not self.connections:
            self._finish()

    def _finish(self):
        if not self._stopped.done():
            self._stopped.set_result(None)


def _file_state(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def bind_listener(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket on host:port, without SO_REUSEPORT: binding fails with
    EADDRINUSE when any other socket (another gateway, any program) listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # lets a restarted gateway bind while old connections sit in TIME_WAIT; it never
        # lets two sockets listen on one address
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    settings = msgspec.json.decode(argv[0].encode(), type=WorkerSettings)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(settings, loop)
    try:
        loop.run_until_complete(worker.serve())
    finally:
        loop.close()
    threads = getattr(worker, "authorizer_threads", None)
    if threads is not None:
        # a hung authorizer function holds its thread for ever, and the interpreter joins
        # such threads before exiting: a drained worker exits without waiting for them
        threads.shutdown(wait=False, cancel_futures=True)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
