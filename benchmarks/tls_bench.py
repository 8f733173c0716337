"""TLS termination: Tollgate against nginx terminating TLS with the same certificate.

Both proxies serve the same ECDSA P-256 certificate (made here), TLS 1.2 and 1.3 with the same
TLS 1.2 suites, and proxy to the same upstream nginx with keep-alive, 1 worker each (or
``--workers N``).  Two scenarios, each run with the targets interleaved (``--reps``):

* **keep-alive**: ``wrk -c50`` over https: the cost of TLS records on a proxied request;
* **handshakes**: the same with ``Connection: close``: a new connection, so a full TLS
  handshake, per request (wrk does not resume sessions).

Then **https backend**: Tollgate (plain HTTP from wrk) in front of an https upstream (nginx with
the same certificate, verified with it as the CA) against the same Tollgate in front of the plain
upstream, interleaved: what TLS to a pooled backend costs (target >= 0.8x).  nginx as the proxy
is measured the same way, in the same run, as the reference for what TLS to a backend costs a
proxy using the same OpenSSL.

Writes the ``tls`` section of RESULTS.md (``--no-write`` to print only).  Target: keep-alive
req/s >= 0.75x nginx's.  Needs nginx (with its SSL module: Debian's nginx-light has it) and wrk.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from benchmarks import run as harness
from benchmarks.results import command_line, write_section

SCENARIOS = {"keep-alive": (), "handshakes": ("Connection: close",)}
TARGET_KEEPALIVE = 0.75
TARGET_HTTPS_BACKEND = 0.8


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = workdir / "bench.pem", workdir / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def start_nginx_tls(workdir, upstream, args, cert, key) -> harness.Target:
    port = harness.free_port()
    conf = harness.render(harness.HERE / "nginx" / "proxy-tls.conf", workdir / "proxy-tls.conf",
                          WORKERS=args.workers, WORKDIR=workdir, PORT=port, CERT=cert, KEY=key,
                          UPSTREAM_PORT=upstream.rsplit(":", 1)[1],
                          UPSTREAM_KEEPALIVE=max(256, args.connections))
    svc = harness.Service("nginx-tls", [harness.NGINX, "-p", str(workdir), "-c", str(conf),
                                        "-g", "daemon off;"], workdir, f"https://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: _https_ok(port))
    return harness.Target("nginx", svc, svc.url + harness.PATH)


def start_tollgate_tls(workdir, upstream, args, cert, key) -> harness.Target:
    port, tls_port, status_port = harness.free_port(), harness.free_port(), harness.free_port()
    conf = harness.render(harness.HERE / "config" / "tollgate.yaml", workdir / "tollgate-tls.yaml",
                          UPSTREAM=upstream)
    with open(conf, "a", encoding="utf-8") as f:
        f.write(f"certificates:\n  - {{name: bench, cert: {cert}, key: {key}, "
                f"domains: [bench.test], default: true}}\n")
    argv = harness.tollgate_command() + [
        "gateway", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
        "--tls-listen", f"127.0.0.1:{tls_port}", "--status-listen", f"127.0.0.1:{status_port}",
        "--workers", str(args.workers)]
    svc = harness.Service("tollgate-tls", argv, workdir, f"https://127.0.0.1:{tls_port}",
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    svc.start()
    svc.wait_ready(lambda: _https_ok(tls_port))
    return harness.Target("tollgate", svc, svc.url + harness.PATH)


def start_upstream_tls(workdir, cert, key) -> tuple[harness.Service, str]:
    port = harness.free_port()
    conf = harness.render(harness.HERE / "nginx" / "upstream-tls.conf", workdir / "upstream-tls.conf",
                          WORKDIR=workdir, PORT=port, CERT=cert, KEY=key, BODY=harness.BODY)
    svc = harness.Service("upstream-tls", [harness.NGINX, "-p", str(workdir), "-c", str(conf),
                                           "-g", "daemon off;"], workdir, f"https://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: _https_ok(port))
    return svc, f"127.0.0.1:{port}"


def start_tollgate_to(workdir, name, url, tls_lines, args) -> harness.Target:
    """Tollgate serving plain HTTP, its one API's backend at ``url``."""
    port, status_port = harness.free_port(), harness.free_port()
    conf = workdir / f"{name}.yaml"
    conf.write_text(
        "version: 1\ngroups: [{name: bench}]\napis:\n  - name: all\n    group: bench\n"
        "    method: ANY\n    path: /\n    match_mode: prefix\n"
        f"    backend: {{type: http, url: \"{url}\", timeout_ms: 5000{tls_lines}}}\n"
        "    environments: {RELEASE: {}}\n", encoding="utf-8")
    argv = harness.tollgate_command() + [
        "gateway", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
        "--status-listen", f"127.0.0.1:{status_port}", "--workers", str(args.workers)]
    svc = harness.Service(name, argv, workdir, f"http://127.0.0.1:{port}",
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    svc.start()
    svc.wait_ready(lambda: harness.http_get(svc.url + harness.PATH) == (200, harness.BODY.encode()))
    return harness.Target(name, svc, svc.url + harness.PATH)


def start_nginx_to(workdir, name, upstream_addr, args, ca=None) -> harness.Target:
    """nginx as the proxy (plain HTTP from wrk) to the plain upstream, or with ``ca`` to the
    https one (verified, kept alive)."""
    port = harness.free_port()
    template = "proxy-to-tls.conf" if ca is not None else "proxy.conf"
    values = dict(WORKERS=args.workers, WORKDIR=workdir / name, PORT=port,
                  UPSTREAM_PORT=upstream_addr.rsplit(":", 1)[1],
                  UPSTREAM_KEEPALIVE=max(256, args.connections))
    if ca is not None:
        values["CA"] = ca
    (workdir / name / "tmp").mkdir(parents=True, exist_ok=True)
    conf = harness.render(harness.HERE / "nginx" / template, workdir / f"{name}.conf", **values)
    svc = harness.Service(name, [harness.NGINX, "-p", str(workdir / name), "-c", str(conf),
                                 "-g", "daemon off;"], workdir, f"http://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: harness.http_get(svc.url + harness.PATH) == (200, harness.BODY.encode()))
    return harness.Target(name, svc, svc.url + harness.PATH)


def _https_ok(port) -> bool:
    import http.client
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
        conn.request("GET", harness.PATH)
        ok = conn.getresponse().read() == harness.BODY.encode()
        conn.close()
        return ok
    except OSError:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tls_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, harness._on_signal)
    workdir = harness.WORK_ROOT / f"tls-{int(time.time())}"
    (workdir / "tmp").mkdir(parents=True)
    runs: dict[str, list] = {s: [] for s in SCENARIOS}
    try:
        cert, key = make_certificate(workdir)
        upstream, upstream_addr, upstream_status = harness.start_upstream(workdir)
        targets = [start_nginx_tls(workdir, upstream_addr, args, cert, key),
                   start_tollgate_tls(workdir, upstream_addr, args, cert, key)]
        for t in targets:
            harness.run_wrk(t.url, harness.WARMUP_SECONDS, args.threads, args.connections)
        for rep in range(1, args.reps + 1):
            for scenario, headers in SCENARIOS.items():
                order = targets if rep % 2 else targets[::-1]
                for t in order:
                    target = harness.Target(t.name, t.service, t.url, headers)
                    harness.log(f"rep {rep}/{args.reps}: {scenario} {t.name} for {args.duration}s")
                    r = harness.measure(target, upstream, upstream_status, rep, args)
                    runs[scenario].append(r)
                    harness.log(f"  {r.wrk.rps:,.0f} req/s, CPU {r.cpu_us:.1f} us/req")
        for t in targets:
            t.service.stop()     # (one pair at a time on 2 CPUs)
        _upstream_tls, tls_addr = start_upstream_tls(workdir, cert, key)
        backends = [start_tollgate_to(workdir, "plain-backend", f"http://{upstream_addr}/", "", args),
                    start_tollgate_to(workdir, "https-backend", f"https://{tls_addr}/",
                                      f", tls: {{ca_file: {cert}, server_name: bench.test}}", args),
                    start_nginx_to(workdir, "nginx-plain-backend", upstream_addr, args),
                    start_nginx_to(workdir, "nginx-https-backend", tls_addr, args, ca=cert)]
        for t in backends:
            harness.run_wrk(t.url, harness.WARMUP_SECONDS, args.threads, args.connections)
        backend_runs = []
        for rep in range(1, args.reps + 1):
            for t in (backends if rep % 2 else backends[::-1]):
                harness.log(f"rep {rep}/{args.reps}: {t.name} for {args.duration}s")
                r = harness.measure(t, upstream, upstream_status, rep, args)
                backend_runs.append(r)
                harness.log(f"  {r.wrk.rps:,.0f} req/s, CPU {r.cpu_us:.1f} us/req")
    finally:
        harness.stop_all()
    text = report(args, runs) + backend_report(backend_runs)
    print(text)
    if not args.no_write:
        write_section("tls", text)
        harness.log("wrote the 'tls' section of benchmarks/RESULTS.md")
    return 0


def report(args, runs) -> str:
    lines = [f"## TLS termination: Tollgate vs nginx", "", f"Command: `{command_line()}`", "",
             *harness.machine_info(), "",
             f"Both serve one ECDSA P-256 certificate, TLS 1.2/1.3 (TLS 1.2 suites "
             f"ECDHE+AESGCM:ECDHE+CHACHA20), {args.workers} worker(s), upstream keep-alive; wrk "
             f"`-t{args.threads} -c{args.connections} -d{args.duration}s`, {args.reps} interleaved "
             f"reps per scenario (medians). handshakes: `Connection: close`, a full handshake per "
             f"request.", "",
             "| scenario | nginx req/s | Tollgate req/s | ratio | per-rep ratios | nginx CPU us/req | "
             "Tollgate CPU us/req | target | verdict |", "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for scenario, rs in runs.items():
        by = {name: [r for r in rs if r.target == name] for name in ("nginx", "tollgate")}
        rps = {n: statistics.median(r.wrk.rps for r in v) for n, v in by.items()}
        cpu = {n: statistics.median(r.cpu_us for r in v) for n, v in by.items()}
        per_rep = [t.wrk.rps / n.wrk.rps for n, t in zip(by["nginx"], by["tollgate"]) if n.wrk.rps]
        ratio = rps["tollgate"] / rps["nginx"] if rps["nginx"] else 0.0
        target = f">= {TARGET_KEEPALIVE:.2f}" if scenario == "keep-alive" else "reported"
        verdict = ("PASS" if ratio >= TARGET_KEEPALIVE else "FAIL") if scenario == "keep-alive" else ""
        lines.append(f"| {scenario} | {rps['nginx']:,.0f} | {rps['tollgate']:,.0f} | {ratio:.2f}x | "
                     f"{', '.join(f'{x:.2f}' for x in per_rep)} | {cpu['nginx']:.1f} | "
                     f"{cpu['tollgate']:.1f} | {target} | {verdict} |")
        problems = [p for r in rs for p in r.problems]
        if problems:
            lines += ["", f"Problems ({scenario}): " + "; ".join(sorted(set(problems)))]
    return "\n".join(lines) + "\n"


def backend_report(runs) -> str:
    names = ("plain-backend", "https-backend", "nginx-plain-backend", "nginx-https-backend")
    by = {n: [r for r in runs if r.target == n] for n in names}
    rps = {n: statistics.median(r.wrk.rps for r in v) for n, v in by.items()}
    cpu = {n: statistics.median(r.cpu_us for r in v) for n, v in by.items()}
    ratio = rps["https-backend"] / rps["plain-backend"] if rps["plain-backend"] else 0.0
    per_rep = [h.wrk.rps / p.wrk.rps for p, h in zip(by["plain-backend"], by["https-backend"])]
    n_ratio = (rps["nginx-https-backend"] / rps["nginx-plain-backend"]
               if rps["nginx-plain-backend"] else 0.0)
    n_per_rep = [h.wrk.rps / p.wrk.rps for p, h in zip(by["nginx-plain-backend"],
                                                        by["nginx-https-backend"])]
    lines = ["", "A proxy in front of an https backend (pooled, verified) against the same proxy in "
             "front of a plain one (clients over plain HTTP), Tollgate and nginx:", "",
             "| proxy to | req/s | CPU us/req | ratio to plain | per-rep ratios | target | verdict |",
             "|---|---:|---:|---:|---|---:|---|",
             f"| Tollgate, http:// backend | {rps['plain-backend']:,.0f} | {cpu['plain-backend']:.1f} | | | | |",
             f"| Tollgate, https:// backend | {rps['https-backend']:,.0f} | {cpu['https-backend']:.1f} | "
             f"{ratio:.2f}x | {', '.join(f'{x:.2f}' for x in per_rep)} | >= {TARGET_HTTPS_BACKEND:.2f} | "
             f"{'PASS' if ratio >= TARGET_HTTPS_BACKEND else 'FAIL'} |",
             f"| nginx, http:// backend | {rps['nginx-plain-backend']:,.0f} | "
             f"{cpu['nginx-plain-backend']:.1f} | | | | |",
             f"| nginx, https:// backend | {rps['nginx-https-backend']:,.0f} | "
             f"{cpu['nginx-https-backend']:.1f} | {n_ratio:.2f}x | "
             f"{', '.join(f'{x:.2f}' for x in n_per_rep)} | (reference) | |",
             "", f"Tollgate to the https backend against nginx to it: "
             f"{rps['https-backend'] / rps['nginx-https-backend']:.2f}x the req/s."]
    problems = sorted({p for r in runs for p in r.problems})
    if problems:
        lines += ["", "Problems: " + "; ".join(problems)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
