"""Memory per idle keep-alive client connection: Tollgate beside nginx, in one run.

For each proxy (1 worker each, the same upstream as ``benchmarks.run``): warm it up, read the
resident memory of its processes, open N client connections that each make one proxied request
and then stay open and idle (keep-alive), read the memory again, and report
(after - before) / N.  That is the user-space cost a connection keeps between requests (its
objects, parser state, buffers); the kernel's socket buffers are not in a process's RSS and are
the same for both proxies.  The connections are then closed and the memory read a third time
(what a burst of connections leaves behind).

    python -m benchmarks.idle_memory                  # 4000 connections, writes RESULTS.md
    python -m benchmarks.idle_memory --connections 8000 --no-write
"""
from __future__ import annotations

import argparse
import resource
import socket
import sys
import time
from pathlib import Path

from benchmarks import run as harness
from benchmarks.results import command_line, write_section

REQUEST = b"GET /json HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle-memory\r\n\r\n"


def rss_kib(root: int) -> int:
    """Resident memory of ``root`` and its descendants, in KiB."""
    total = 0
    for pid in harness.process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def one_request(sock: socket.socket) -> None:
    """Send a GET on ``sock`` and read its whole response (Content-Length framed)."""
    sock.sendall(REQUEST)
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the proxy closed a connection")
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            continue
        head = buf[:end].lower()
        if not head.startswith(b"http/1.1 200"):
            raise RuntimeError(f"unexpected answer {head[:80]!r}")
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        if len(buf) >= end + 4 + length:
            return


def measure(target: harness.Target, count: int, port: int) -> dict:
    warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for _ in range(50):
        for sock in warm:
            one_request(sock)
    for sock in warm:
        sock.close()
    time.sleep(1.0)
    root = target.service.pid
    before = rss_kib(root)
    conns = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            one_request(sock)
            conns.append(sock)
        time.sleep(1.0)
        held = rss_kib(root)
        for sock in conns[::max(1, count // 50)]:      # still served: they are alive, not dropped
            one_request(sock)
    finally:
        for sock in conns:
            sock.close()
    time.sleep(2.0)
    after = rss_kib(root)
    return {"name": target.name, "before": before, "held": held, "after": after,
            "per_conn": (held - before) * 1024 / count}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.connections + 1000      # ours, and the proxies' (they inherit the limit)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        if min(need, hard) < need:
            sys.exit(f"open-file limit {hard} is too low for {args.connections} connections")
    workdir = harness.HERE / ".work" / f"idle-{int(time.time())}"
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(workers=1, connections=args.connections,
                            tollgate_cmd=harness.tollgate_command())
    results = []
    try:
        upstream, upstream_addr, _status = harness.start_upstream(workdir)
        for start in (lambda: harness.start_nginx_proxy(workdir, upstream_addr, ns),
                      lambda: harness.start_tollgate(workdir, upstream_addr, ns, "tollgate", None)):
            target = start()
            port = int(target.url.split(":")[2].split("/")[0])
            results.append(measure(target, args.connections, port))
            target.service.stop()
    finally:
        harness.stop_all()
    lines = [f"Command: `{command_line()}`", "", *harness.machine_info(), "",
             f"{args.connections} idle keep-alive client connections, each after one proxied "
             "request; 1 worker per proxy. RSS of the proxy's processes (master + worker).", "",
             "| proxy | RSS before | RSS with the connections open | per connection | "
             "RSS after closing them |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['before'] / 1024:.1f} MiB | {r['held'] / 1024:.1f} MiB | "
                     f"{r['per_conn']:,.0f} B | {r['after'] / 1024:.1f} MiB |")
    by = {r["name"]: r for r in results}
    if "nginx" in by and "tollgate" in by and by["nginx"]["per_conn"] > 0:
        lines += ["", f"Tollgate / nginx per idle connection: "
                      f"{by['tollgate']['per_conn'] / by['nginx']['per_conn']:.2f}x "
                      f"(target: Tollgate <= 4096 B: "
                      f"{'PASS' if by['tollgate']['per_conn'] <= 4096 else 'FAIL'})"]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        write_section("idle-memory", "## Memory per idle keep-alive connection\n\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
