"""WebSocket: 1 KB echoes through Tollgate against a direct connection to the same echo server.

Three processes besides the gateway, all on uvloop: an **echo server** and a **load client**
written here to cost as little as possible per message, so that what the figures show is the
gateway's splice, not Python WebSocket libraries:

* the client opens ``--connections`` WebSocket connections (a real RFC 6455 handshake, the
  accept key checked), then on each keeps one 1 KB binary message in flight: send, wait for the
  whole echo, send again, for ``--duration`` seconds; it reports messages/s;
* the echo server answers the handshake and returns each 1 KB frame as a server frame (the
  client masks with a zero key, legal and free to undo, so echoing is a header swap).

Targets, interleaved ``--reps`` times: ``direct`` (client -> echo server), ``nginx`` (client ->
nginx, 1 worker, proxying the upgrade -> echo server: the reference proxy) and ``tollgate``
(client -> Tollgate, 1 worker -> echo server).  Reported: messages/s of each, the ratios, and the
CPU time each proxy spends per message (its whole process tree).  Writes the ``websocket``
section of RESULTS.md (``--no-write`` to print only).  Needs nginx.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import run as harness
from benchmarks.results import command_line, write_section

MESSAGE = 1024
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# a client frame: FIN + binary, masked, 16-bit length, zero masking key, then the payload
_CLIENT_HEAD = bytes([0x82, 0x80 | 126]) + MESSAGE.to_bytes(2, "big") + b"\0\0\0\0"
_SERVER_HEAD = bytes([0x82, 126]) + MESSAGE.to_bytes(2, "big")
_IN, _OUT = len(_CLIENT_HEAD) + MESSAGE, len(_SERVER_HEAD) + MESSAGE


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _split_head(buf: bytes):
    """(handshake head, bytes after it), or None while the head is incomplete."""
    end = buf.find(b"\r\n\r\n")
    return None if end < 0 else (buf[:end], buf[end + 4:])


# -- the echo server -----------------------------------------------------------------------------

class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
        self.open = False

    def data_received(self, data):
        buf = self.buf + data
        if not self.open:
            split = _split_head(buf)
            if split is None:
                self.buf = buf
                return
            head, buf = split
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n")
            self.open = True
        n = len(buf) // _IN
        if n:
            out = []
            for i in range(n):      # (a zero mask: the payload is as sent)
                start = i * _IN + len(_CLIENT_HEAD)
                out.append(_SERVER_HEAD)
                out.append(buf[start:start + MESSAGE])
            self.t.write(b"".join(out))
            buf = buf[n * _IN:]
        self.buf = buf


def serve(port: int) -> None:
    import uvloop
    loop = uvloop.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Echo, "127.0.0.1", port))
    print("ready", flush=True)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    server.close()


# -- the load client -----------------------------------------------------------------------------

class _Client(asyncio.Protocol):
    def __init__(self, path: bytes, host: bytes, opened: asyncio.Future):
        self.path, self.host, self.opened = path, host, opened
        self.key = base64.b64encode(os.urandom(16))
        self.buf = b""
        self.open = False
        self.count = 0
        self.running = True
        self.frame = _CLIENT_HEAD + os.urandom(MESSAGE)

    def connection_made(self, transport):
        self.t = transport
        transport.write(b"GET " + self.path + b" HTTP/1.1\r\nHost: " + self.host +
                        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " +
                        self.key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def data_received(self, data):
        buf = self.buf + data
        if not self.open:
            split = _split_head(buf)
            if split is None:
                self.buf = buf
                return
            head, buf = split
            if not head.startswith(b"HTTP/1.1 101") or _accept(self.key) not in head:
                self.opened.set_exception(RuntimeError(f"handshake refused: {head[:200]!r}"))
                return
            self.open = True
            self.opened.set_result(None)
        while len(buf) >= _OUT:
            buf = buf[_OUT:]
            self.count += 1
            if self.running:
                self.t.write(self.frame)
        self.buf = buf

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"closed during the handshake: {exc}"))
        self.running = False


async def _load(port: int, connections: int, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(connections):
        opened = loop.create_future()
        _, client = await loop.create_connection(
            lambda: _Client(b"/ws", b"bench.test", opened), "127.0.0.1", port)
        await opened
        clients.append(client)
    for c in clients:
        c.t.write(c.frame)
    await asyncio.sleep(1.0)                    # warm-up
    start_counts = sum(c.count for c in clients)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    done = sum(c.count for c in clients) - start_counts
    elapsed = time.monotonic() - started
    for c in clients:
        c.running = False
        c.t.close()
    return {"messages": done, "seconds": elapsed, "rate": done / elapsed}


def load(port: int, connections: int, seconds: float) -> None:
    import uvloop
    loop = uvloop.new_event_loop()
    print(json.dumps(loop.run_until_complete(_load(port, connections, seconds))), flush=True)


# -- the benchmark ---------------------------------------------------------------------------------

def start_echo(workdir) -> tuple[harness.Service, int]:
    port = harness.free_port()
    svc = harness.Service("ws-echo", [sys.executable, "-m", "benchmarks.ws_bench", "--serve",
                                      str(port)], workdir, f"http://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: "ready" in svc.log_tail())
    return svc, port


def start_nginx(workdir, echo_port, args) -> tuple[harness.Service, int]:
    port = harness.free_port()
    conf = harness.render(harness.HERE / "nginx" / "websocket.conf", workdir / "websocket.conf",
                          WORKERS=args.workers, WORKDIR=workdir, PORT=port, UPSTREAM_PORT=echo_port)
    svc = harness.Service("nginx-ws", [harness.NGINX, "-p", str(workdir), "-c", str(conf),
                                       "-g", "daemon off;"], workdir, f"http://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: _port_open(port))
    return svc, port


def _port_open(port) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def start_tollgate(workdir, echo_port, args) -> tuple[harness.Service, int]:
    port, status_port = harness.free_port(), harness.free_port()
    conf = workdir / "tollgate-ws.yaml"
    conf.write_text(
        "version: 1\ngroups: [{name: bench}]\napis:\n  - name: ws\n    group: bench\n"
        "    method: GET\n    path: /ws\n"
        f"    backend: {{type: http, url: \"http://127.0.0.1:{echo_port}/ws\"}}\n"
        "    environments: {RELEASE: {}}\n", encoding="utf-8")
    argv = harness.tollgate_command() + [
        "gateway", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
        "--status-listen", f"127.0.0.1:{status_port}", "--workers", str(args.workers)]
    svc = harness.Service("tollgate-ws", argv, workdir, f"http://127.0.0.1:{port}",
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    svc.start()
    svc.wait_ready(lambda: harness.http_get(f"http://127.0.0.1:{status_port}/readyz")[0] == 200)
    return svc, port


def measure(port, proxy, args: harness.Service | None) -> dict:
    before = proxy.cpu() if proxy is not None else None
    out = subprocess.run([sys.executable, "-m", "benchmarks.ws_bench", "--load", str(port),
                          "--connections", str(args.connections), "--duration",
                          str(args.duration)], capture_output=True, text=True,
                         timeout=args.duration + 60, cwd=str(harness.REPO))
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if proxy is not None:
        after = proxy.cpu()
        # (CPU over the whole client run, warm-up and handshakes included: an upper bound)
        total = result["messages"] * (args.duration + 1.0) / result["seconds"]
        per = 1e6 / harness.CLK_TCK / total
        result["user_us"] = (after.user - before.user) * per
        result["cpu_us"] = result["user_us"] + (after.system - before.system) * per
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ws_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.load:
        load(args.load, args.connections, args.duration)
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, harness._on_signal)
    workdir = harness.WORK_ROOT / f"ws-{int(time.time())}"
    (workdir / "tmp").mkdir(parents=True)
    runs: dict[str, list] = {"direct": [], "nginx": [], "tollgate": []}
    try:
        echo, echo_port = start_echo(workdir)
        targets = {"direct": (echo_port, None), "nginx": start_nginx(workdir, echo_port, args)[::-1],
                   "tollgate": start_tollgate(workdir, echo_port, args)[::-1]}
        names = list(targets)
        for rep in range(1, args.reps + 1):
            for name in (names if rep % 2 else names[::-1]):
                harness.log(f"rep {rep}/{args.reps}: {name} for {args.duration:.0f}s")
                r = measure(*targets[name], args=args)
                runs[name].append(r)
                harness.log(f"  {r['rate']:,.0f} messages/s" + (
                    f", proxy CPU {r['cpu_us']:.1f} us/message ({r['user_us']:.1f} user)"
                    if "cpu_us" in r else ""))
    finally:
        harness.stop_all()
    text = report(args, runs)
    print(text)
    if not args.no_write:
        write_section("websocket", text)
        harness.log("wrote the 'websocket' section of benchmarks/RESULTS.md")
    return 0


def report(args, runs) -> str:
    rate = {n: statistics.median(r["rate"] for r in rs) for n, rs in runs.items()}
    cpu = {n: statistics.median(r["cpu_us"] for r in rs) for n, rs in runs.items() if n != "direct"}
    user = {n: statistics.median(r["user_us"] for r in rs) for n, rs in runs.items() if n != "direct"}
    per_rep = {n: [t["rate"] / d["rate"] for d, t in zip(runs["direct"], runs[n])]
               for n in ("nginx", "tollgate")}
    vs_nginx = [t["rate"] / n["rate"] for n, t in zip(runs["nginx"], runs["tollgate"])]
    lines = ["## WebSocket: 1 KB echoes through Tollgate, through nginx, and direct", "",
             f"Command: `{command_line()}`", "", *harness.machine_info(), "",
             f"{args.connections} connections, one 1 KB binary message in flight on each, "
             f"{args.duration:.0f} s per run, {args.reps} interleaved reps (medians); the echo "
             f"server and the load client are this script's own lean uvloop programs, on the same "
             f"machine; nginx and Tollgate with {args.workers} worker(s) each.  CPU per message: "
             f"the proxy's whole process tree over the client's run (a message crosses it twice: "
             f"there and back).", "",
             "| path | messages/s | ratio to direct | per-rep ratios | proxy CPU us/message | of which user |",
             "|---|---:|---:|---|---:|---:|",
             f"| direct to the echo server | {rate['direct']:,.0f} | | | | |"]
    for name, label in (("nginx", "through nginx"), ("tollgate", "through Tollgate")):
        lines.append(f"| {label} | {rate[name]:,.0f} | {rate[name] / rate['direct']:.2f}x | "
                     f"{', '.join(f'{x:.2f}' for x in per_rep[name])} | {cpu[name]:.1f} | "
                     f"{user[name]:.1f} |")
    lines += ["", f"Tollgate against nginx: **{rate['tollgate'] / rate['nginx']:.2f}x** the "
              f"messages/s (per rep: {', '.join(f'{x:.2f}' for x in vs_nginx)}), "
              f"{cpu['tollgate'] / cpu['nginx']:.2f}x the CPU per message."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
