"""Authentication on the hot path: Tollgate's ``auth: none``, ``app`` and ``iam`` (JWT) APIs beside
nginx as a plain reverse proxy, in one run.

One run starts the upstream nginx and the reference proxy nginx of benchmarks.run (the same
confs), and one Tollgate (``--workers``, default 1) whose configuration is benchmarks.run's
(``config/tollgate.yaml``: the ``auth: none`` API ``all``, prefix ``/``) plus, to the same upstream:

* ``signed`` (``GET /signed``) and ``signed-post`` (``POST /signed-post``): ``auth: app``, app
  ``bench-app`` authorized in RELEASE;
* ``token`` (``GET /token``): ``auth: iam``, JWTs in ``X-Auth-Token`` checked (RS256, issuer,
  audience) against the public half of an RSA key made at start.

Targets (``--targets``, default all of them), each driven by wrk with a Lua script generated into
the run's work directory that sends ``--requests`` (default 4000) distinct prebuilt requests in
turn (each built once with ``wrk.format`` from a table when the thread starts; ``request()`` hands
out the next one), so that every target pays wrk the same per-request cost:

* ``nginx``: the reference, ``GET /json?id=N&view=full`` through nginx;
* ``none``: the same requests through Tollgate's ``auth: none`` API;
* ``app``: ``GET /signed?id=N&view=full`` signed ``SDK-HMAC-SHA256`` with the vendor SDK
  (``huaweicloudsdkcore``), re-signed a few seconds before each wrk run (``X-Sdk-Date`` must be
  within 15 minutes of the gateway's clock);
* ``jwt``: ``GET /token?id=N&view=full`` with one of ``--requests`` distinct tokens (``sub``
  differs; ``iss``, ``aud``, ``exp`` in 1 hour, ``iat``, ``account``), minted once with pyjwt; the
  warm-up sends each at least once, so the measured runs see the gateway's token cache warm: "JWT
  (cached)";
* ``none-post`` / ``app-post``: a small JSON document (about 45 bytes) POSTed through the
  ``auth: none`` API / to ``signed-post`` signed with its body hash: what checking a body costs.

Before measuring, one request of each set is sent with Python and must come back 200 with the
upstream's document, and the auth APIs must refuse a tampered signature, a missing token and a
token signed with another key (else the figures would be those of an open API).  If the gateway
refuses ``auth: iam`` at load (``tollgate validate``), the ``jwt`` target is skipped and the
report says why.  Targets are interleaved over ``--reps`` (default 3), order rotating each rep,
after a 2 s warm-up of each.  Reported: req/s, latency and CPU per request of each target, the
ratio of each to nginx, and of none/app/jwt to each other; targets: app >= 0.6x nginx, JWT
(cached) >= 0.65x nginx, none unchanged (its ratio to nginx within 0.05 of the ``proxy``
section's).  Writes the ``auth`` section of RESULTS.md (``--no-write`` to print only).

    python -m benchmarks.auth_bench [--duration 10] [--reps 3] [--connections 50] [--threads 1]
                                    [--workers 1] [--requests 4000] [--targets ...] [--warmup 2]
                                    [--no-write] [--keep-work]

Exit status as benchmarks.run: 0 clean, 1 when a run had errors (socket errors, non-2xx answers,
a process change, errors in Tollgate's log), 2 when the benchmark could not run.
"""
from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

from benchmarks import run as harness
from benchmarks.results import RESULTS, command_line, write_section

APP_KEY, APP_SECRET = "bench-app-key", "bench-app-secret"
ISSUER, AUDIENCE = "https://bench.example", "tollgate"
TOKEN_LIFETIME = 3600
QUERY = "view=full"      # besides id=N in every request's query

#: name -> (label in the report, method, path, kind of requests)
TARGETS = {
    "nginx": ("nginx (plain proxy)", "GET", "/json", "plain"),
    "none": ("Tollgate, auth: none", "GET", "/json", "plain"),
    "app": ("Tollgate, auth: app (signed GET)", "GET", "/signed", "app"),
    "jwt": ("Tollgate, JWT (cached)", "GET", "/token", "jwt"),
    "none-post": ("Tollgate, auth: none, POST JSON", "POST", "/json", "plain"),
    "app-post": ("Tollgate, auth: app, signed POST JSON", "POST", "/signed-post", "app"),
}
#: target -> its ratio to nginx's req/s must be at least this
GOALS = {"app": 0.6, "jwt": 0.65}
NONE_TOLERANCE = 0.05     # none/nginx against the proxy section's Tollgate/nginx
OTHER_LOAD_WARN = 10.0    # % of the machine used by other processes that makes a run suspect
MAX_RUN_SECONDS = 40 * 60  # the tokens live an hour


# --------------------------------------------------------------------------------------------
# Requests


@dataclass
class Req:
    method: str
    target: str                      # path?query, as sent
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def wire_size(self) -> int:
        """Bytes on the wire as wrk.format makes it (plus Host when not given)."""
        head = f"{self.method} {self.target} HTTP/1.1\r\n"
        headers = dict(self.headers)
        headers.setdefault("Host", "127.0.0.1:40000")
        if self.body is not None:
            headers["Content-Length"] = str(len(self.body))
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        return len(head.encode("latin-1")) + len(self.body or b"")


def json_body(i: int) -> bytes:
    return json.dumps({"order": i, "items": [1, 2, 3], "note": "bench"},
                      separators=(",", ":")).encode()


def plain_requests(n: int, method: str = "GET", path: str = "/json") -> list[Req]:
    post = method in ("POST", "PUT", "PATCH")
    return [Req(method, f"{path}?id={i}&{QUERY}",
                {"Content-Type": "application/json"} if post else {},
                json_body(i) if post else None) for i in range(n)]


def signed_requests(n: int, host: str, method: str = "GET", path: str = "/signed",
                    key: str = APP_KEY, secret: str = APP_SECRET) -> list[Req]:
    """``n`` requests signed now by the vendor SDK for ``host`` (``127.0.0.1:PORT``: the Host
    header is signed), the query ``id=N&view=full`` differing; POSTs carry a JSON body, signed
    with its hash."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    signer = Signer(BasicCredentials(key, secret))
    post = method in ("POST", "PUT", "PATCH")
    out = []
    for i in range(n):
        body = json_body(i) if post else b""
        req = SdkRequest(method=method, schema="http", host=host, resource_path=path,
                         query_params=[("id", str(i)), tuple(QUERY.split("="))],
                         header_params={"Content-Type": "application/json"} if post else {},
                         body=body)
        signed = signer.sign(req)
        out.append(Req(method, quote(signed.uri, safe="/%?&=~!$()*+,;:@"),
                       dict(signed.header_params), body if post else None))
    return out


def make_signing_key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private_key) -> str:
    from cryptography.hazmat.primitives import serialization
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def make_tokens(private_key, n: int, now: int | None = None, issuer: str = ISSUER,
                audience: str = AUDIENCE) -> list[str]:
    """``n`` RS256 tokens, one per ``sub``, valid for an hour."""
    import jwt
    now = int(time.time()) if now is None else now
    return [jwt.encode({"sub": f"bench-user-{i}", "iss": issuer, "aud": audience, "iat": now,
                        "exp": now + TOKEN_LIFETIME, "account": f"bench-account-{i % 16}"},
                       private_key, algorithm="RS256") for i in range(n)]


def jwt_requests(tokens: list[str], path: str = "/token") -> list[Req]:
    return [Req("GET", f"{path}?id={i}&{QUERY}", {"X-Auth-Token": t}) for i, t in enumerate(tokens)]


# --------------------------------------------------------------------------------------------
# The wrk script

_CHUNK = 500    # requests per Lua function (each function has its own table of constants)


def lua_string(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    out = []
    for b in data:
        if b in (0x22, 0x5C):              # " and backslash
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def lua_script(requests: list[Req], title: str = "") -> str:
    """A wrk script sending ``requests`` in turn.  Each is built once per thread with
    ``wrk.format`` (at ``init``); ``request()`` returns the next.  Thread k starts at a different
    place in the list."""
    if not requests:
        raise ValueError("no request to send")
    lines = [f"-- generated by benchmarks/auth_bench.py{': ' + title if title else ''}: "
             f"{len(requests)} requests, sent in turn",
             "local specs, requests, count, i = {}, {}, 0, 0",
             "local function add(method, path, headers, body)",
             "  specs[#specs + 1] = {method, path, headers, body}",
             "end"]
    for start in range(0, len(requests), _CHUNK):
        lines.append(";(function()")     # (the ; ends the previous call: Lua 5.1 syntax)
        for r in requests[start:start + _CHUNK]:
            headers = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in r.headers.items())
            body = lua_string(r.body) if r.body is not None else "nil"
            lines.append(f"  add({lua_string(r.method)}, {lua_string(r.target)}, {{{headers}}}, {body})")
        lines.append("end)()")
    lines += [
        "local threads = 0",
        "function setup(thread)",
        "  thread:set(\"first\", threads * 7919)",
        "  threads = threads + 1",
        "end",
        "function init(args)",
        "  for k, s in ipairs(specs) do",
        "    requests[k] = wrk.format(s[1], s[2], s[3], s[4])",
        "  end",
        "  count = #requests",
        "  specs = nil",
        "  i = (first or 0) % count",
        "end",
        "function request()",
        "  i = i % count + 1",
        "  return requests[i]",
        "end",
    ]
    return "\n".join(lines) + "\n"


def write_script(workdir: Path, name: str, requests: list[Req]) -> str:
    path = workdir / f"wrk-{name}.lua"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(lua_script(requests, name), encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


# --------------------------------------------------------------------------------------------
# One request by hand, and the gateway's configuration


def send(port: int, req: Req, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``req`` as it is (its own Host header if it has one) and read the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(req.method, req.target, skip_host=True, skip_accept_encoding=True)
        headers = dict(req.headers)
        if not any(k.lower() == "host" for k in headers):
            headers["Host"] = f"127.0.0.1:{port}"
        for name, value in headers.items():
            conn.putheader(name, value)
        if req.body is not None:
            conn.putheader("Content-Length", str(len(req.body)))
        conn.endheaders(req.body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def gateway_config(upstream: str, jwt_public_pem: str | None) -> dict:
    """benchmarks.run's configuration (the auth: none API ``all``) plus the app and, with a
    key, the IAM JWT APIs, to the same upstream."""
    text = (harness.HERE / "config" / "tollgate.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text.replace("{{UPSTREAM}}", upstream))
    group = doc["groups"][0]["name"]
    backend = {"type": "http", "url": "http://#upstream#/json", "timeout_ms": 5000}
    doc["apps"] = [{"name": "bench-app", "key": APP_KEY, "secret": APP_SECRET}]
    app_env = {"RELEASE": {"apps": ["bench-app"]}}
    doc["apis"] += [
        {"name": "signed", "group": group, "method": "GET", "path": "/signed", "auth": "app",
         "backend": backend, "environments": app_env},
        {"name": "signed-post", "group": group, "method": "POST", "path": "/signed-post",
         "auth": "app", "backend": backend, "environments": app_env},
    ]
    if jwt_public_pem is not None:
        doc["iam"] = {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256"],
                              "keys": [jwt_public_pem]}}
        doc["apis"].append({"name": "token", "group": group, "method": "GET", "path": "/token",
                            "auth": "iam", "backend": backend, "environments": {"RELEASE": {}}})
    return doc


def write_config(doc: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def validate(tollgate_cmd: list[str], path: Path) -> tuple[bool, str]:
    try:
        cp = subprocess.run(tollgate_cmd + ["validate", str(path)], capture_output=True, text=True,
                            timeout=60, cwd=str(harness.REPO), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return cp.returncode == 0, (cp.stdout + cp.stderr).strip()


def configure(workdir: Path, upstream: str, tollgate_cmd: list[str], pem: str | None
              ) -> tuple[Path, str | None]:
    """Write the gateway's configuration; with ``pem``, try it with the IAM JWT API first.
    Returns (its path, why JWT was left out or None)."""
    skipped = None
    if pem is not None:
        path = write_config(gateway_config(upstream, pem), workdir / "tollgate-auth.yaml")
        ok, out = validate(tollgate_cmd, path)
        if ok:
            return path, None
        errors = [line for line in out.splitlines()[1:] if line.strip()]
        skipped = "; ".join(errors) or out
    path = write_config(gateway_config(upstream, None), workdir / "tollgate-auth.yaml")
    ok, out = validate(tollgate_cmd, path)
    if not ok:
        raise RuntimeError(f"the gateway refuses the benchmark's configuration {path}:\n{out}")
    return path, skipped


def start_gateway(workdir: Path, conf: Path, args, name: str = "tollgate") -> harness.Service:
    """``tollgate gateway`` with ``args.workers`` workers on free ports, ready (``/readyz``);
    ``name`` names its log (``WORKDIR/NAME.log``).  The service gets ``port`` and
    ``status_port``."""
    port, status_port = harness.free_port(), harness.free_port()
    argv = args.tollgate_cmd + [
        "gateway", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
        "--status-listen", f"127.0.0.1:{status_port}", "--workers", str(args.workers)]
    svc = harness.Service(name, argv, workdir, f"http://127.0.0.1:{port}",
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    svc.start()
    svc.wait_ready(lambda: harness.http_get(f"http://127.0.0.1:{status_port}/readyz")[0] == 200)
    svc.port, svc.status_port = port, status_port
    return svc


# --------------------------------------------------------------------------------------------
# Targets


@dataclass
class AuthTarget:
    name: str
    service: harness.Service
    port: int
    method: str
    path: str
    kind: str
    requests: list[Req] = field(default_factory=list)
    script: str = ""

    @property
    def label(self) -> str:
        return TARGETS[self.name][0]

    def wrk_target(self) -> harness.Target:
        return harness.Target(self.name, self.service, f"http://127.0.0.1:{self.port}/",
                              script=self.script)


def prepare(t: AuthTarget, workdir: Path, n: int, tokens: list[str] | None) -> None:
    """(Re)build the target's requests and its wrk script: signed requests are signed now."""
    if t.kind == "app":
        t.requests = signed_requests(n, f"127.0.0.1:{t.port}", t.method, t.path)
    elif not t.requests:
        t.requests = (jwt_requests(tokens, t.path) if t.kind == "jwt"
                      else plain_requests(n, t.method, t.path))
    t.script = write_script(workdir, t.name, t.requests)


def check_target(t: AuthTarget, other_key, expect: bytes | None = harness.BODY.encode()) -> None:
    """The first request of the set answers 200 with ``expect`` (the upstream's document; None:
    any), and an auth API refuses what it must refuse (or the figures would be an open API's)."""
    code, body = send(t.port, t.requests[0])
    if code != 200 or (expect is not None and body != expect):
        what = "the upstream's document" if expect is not None else "a body"
        tail = f"; log tail:\n{t.service.log_tail()}" if t.service is not None else ""
        raise RuntimeError(f"{t.label}: {t.requests[0].method} {t.requests[0].target} answered "
                           f"{code} {body[:300]!r}, expected 200 and {what}{tail}")
    refusals: list[tuple[str, Req]] = []
    first = t.requests[0]
    if t.kind == "app":
        tampered = Req(first.method, first.target.replace("id=0", "id=1", 1), first.headers,
                       first.body)
        refusals.append(("a request whose query differs from the signed one", tampered))
        if first.body is not None:
            refusals.append(("a body that differs from the signed one",
                             Req(first.method, first.target, first.headers,
                                 first.body.replace(b'"order":0', b'"order":9'))))
        refusals.append(("no signature", Req(first.method, first.target, {}, first.body)))
    elif t.kind == "jwt":
        refusals.append(("no token", Req("GET", first.target)))
        refusals.append(("a token signed with another key",
                         Req("GET", first.target,
                             {"X-Auth-Token": make_tokens(other_key, 1)[0]})))
    for what, req in refusals:
        code, body = send(t.port, req)
        if code not in (401, 403):
            raise RuntimeError(f"{t.label}: {what} was answered {code} {body[:300]!r}, expected "
                               f"a 401/403 refusal: the API does not check what it should")


def warm_up(t: AuthTarget, args) -> str | None:
    """``--warmup`` s of wrk; a JWT target until each token was sent at least once (all in the
    cache)."""
    need = len(t.requests) * args.threads if t.kind == "jwt" else 0
    done, rounds, errors = 0, 0, 0
    while True:
        r = harness.run_wrk(f"http://127.0.0.1:{t.port}/", args.warmup, args.threads,
                            args.connections, script=t.script)
        done, rounds, errors = done + r.requests, rounds + 1, errors + r.errors
        if rounds == 1 and t.kind == "jwt":
            harness.log(f"  {t.name}: first pass (tokens not yet cached) {r.rps:,.0f} req/s")
        if done >= need or rounds >= 10:
            break
    problem = None
    if errors or not t.service.alive():
        problem = (f"{t.label} warm-up: {errors} errors; process {t.service.died_why()}")
    elif done < need:
        problem = f"{t.label} warm-up: only {done} requests for {need} tokens"
    return problem


def measure(t: AuthTarget, upstream: harness.Service, upstream_status: str, rep: int, args
            ) -> harness.Run:
    return measure_target(t.wrk_target(), upstream, upstream_status, rep, args)


def measure_target(target: harness.Target, upstream: harness.Service, upstream_status: str,
                   rep: int, args) -> harness.Run:
    """harness.measure, plus ``other_load``: the share of all CPUs that processes other than the
    proxy, the upstream and wrk used meanwhile (another job on the machine)."""
    busy0, _steal, total0 = harness.system_cpu()
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = harness.measure(target, upstream, upstream_status, rep, args)
    busy1, _steal, total1 = harness.system_cpu()
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick_us = 1e6 / harness.CLK_TCK
    n = max(r.wrk.requests, 1)
    ours = ((r.cpu_us + r.upstream_cpu_us) * n / tick_us
            + (wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime) * harness.CLK_TCK)
    r.other_load = max(0.0, 100 * (busy1 - busy0 - ours) / max(total1 - total0, 1))
    return r


# --------------------------------------------------------------------------------------------
# Report


def proxy_section_ratio(path: Path = RESULTS) -> tuple[float, str] | None:
    """Tollgate/nginx req/s in the ``proxy`` section of RESULTS.md, and when it was run."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"<!-- begin:proxy -->(.*?)<!-- end:proxy -->", text, re.S)
    if not m:
        return None
    ratio = re.search(r"^\| req/s \| ([\d.]+)x \|", m.group(1), re.M)
    when = re.search(r"^- run at (.+)$", m.group(1), re.M)
    if not ratio:
        return None
    return float(ratio.group(1)), (when.group(1).strip() if when else "unknown date")


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def summarize(names: list[str], runs: list[harness.Run]):
    """(runs by target, medians by target, per_rep(a, b), ratio(a, b)): the req/s ratios of
    target a to target b, rep by rep and of the medians (the reports of auth_bench and
    throttle_bench)."""
    by = {n: [r for r in runs if r.target == n] for n in names}
    med = {n: {"rps": statistics.median(r.wrk.rps for r in rs),
               "p50": statistics.median(r.wrk.p50_ms for r in rs),
               "p99": statistics.median(r.wrk.p99_ms for r in rs),
               "cpu": statistics.median(r.cpu_us for r in rs),
               "user": statistics.median(r.cpu_user_us for r in rs)} for n, rs in by.items()}

    def per_rep(a: str, b: str) -> list[float]:
        return [x.wrk.rps / y.wrk.rps for x, y in zip(by[a], by[b]) if y.wrk.rps]

    def ratio(a: str, b: str) -> float:
        return med[a]["rps"] / med[b]["rps"] if med[b]["rps"] else 0.0

    return by, med, per_rep, ratio


def report(args, names: list[str], targets: dict[str, AuthTarget], runs: list[harness.Run],
           info: list[str], load: str, notes: list[str], skipped: dict[str, str]) -> str:
    by, med, per_rep, ratio = summarize(names, runs)

    md = ["## Authentication: Tollgate's auth none / app / JWT beside nginx", "",
          f"Command: `{command_line()}`", "",
          f"Setup: wrk `-t{args.threads} -c{args.connections} -d{args.duration}s --latency`, each "
          f"target driven by a generated Lua script sending {args.requests} distinct prebuilt "
          f"requests in turn (`id=N` in the query differs; built once per thread with "
          f"`wrk.format`), so wrk's per-request cost is the same for every target. nginx: "
          f"benchmarks.run's reference proxy conf; Tollgate: benchmarks.run's config "
          f"(`auth: none`, prefix `/`) plus `auth: app` APIs (`GET /signed`, `POST /signed-post`, "
          f"app `bench-app`) and `auth: iam` (`GET /token`, RS256 JWTs in `X-Auth-Token`), one "
          f"process, {args.workers} worker(s); all to the same upstream nginx answering a "
          f"{len(harness.BODY)}-byte JSON document. APP requests signed with `huaweicloudsdkcore` "
          f"(SDK-HMAC-SHA256; host, x-sdk-date and, for POST, content-type signed; body hashed) "
          f"a few seconds before each run; JWTs: {args.requests} tokens (distinct `sub`), each "
          f"sent during the warm-up, so the runs measure the token cache warm. POST: a "
          f"{len(json_body(0))}-byte JSON document. {args.reps} reps, targets interleaved (order "
          f"rotates each rep), after a {args.warmup}s warm-up of each; medians. "
          f"127.0.0.1 only. CPU us/req: user+system CPU of the proxy's processes / requests.", ""]
    md += info + [f"- during the measured runs: {load}",
                  f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    for name, why in skipped.items():
        md += [f"**{TARGETS[name][0]} skipped:** {why}", ""]
    disturbed = [r for r in runs if r.other_load > OTHER_LOAD_WARN]
    if disturbed:
        md += [f"**Other processes competed for the CPUs** during {len(disturbed)} of the "
               f"{len(runs)} runs (over {OTHER_LOAD_WARN:.0f}% of the machine; up to "
               f"{max(r.other_load for r in disturbed):.0f}%: \"other load\" in the per-rep table): "
               f"their req/s are low for a reason other than the target; CPU us/req is the steadier "
               f"figure.", ""]
    problems = [r for r in runs if r.problems]
    if problems or notes:
        md += ["**WARNING: some runs were not clean:**", ""]
        md += [f"- {r.target} rep {r.rep}: {'; '.join(r.problems)}" for r in problems]
        md += [f"- {n}" for n in notes] + [""]

    has_nginx = "nginx" in med
    md += ["| target | request bytes | req/s | / nginx | per-rep / nginx | p50 ms | p99 ms "
           "| CPU us/req | user |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for n in names:
        m = med[n]
        vs = f"{ratio(n, 'nginx'):.2f}x" if has_nginx else ""
        reps = ", ".join(f"{x:.2f}" for x in per_rep(n, "nginx")) if has_nginx and n != "nginx" else ""
        md.append(f"| {targets[n].label} | {targets[n].requests[0].wire_size()} | {m['rps']:,.0f} "
                  f"| {vs} | {reps} | {_ms(m['p50'])} | {_ms(m['p99'])} | {m['cpu']:.1f} "
                  f"| {m['user']:.1f} |")
    md.append("")

    if has_nginx:
        md += ["### Targets (req/s, ratio of medians to nginx's)", "",
               "| target | ratio | goal | verdict |", "|---|---:|---|---|"]
        if "none" in med:
            proxy = proxy_section_ratio()
            r = ratio("none", "nginx")
            if proxy is None:
                md.append(f"| {TARGETS['none'][0]} | {r:.2f}x | unchanged (no `proxy` section "
                          f"to compare with) | reported |")
            else:
                ok = r >= proxy[0] - NONE_TOLERANCE
                md.append(f"| {TARGETS['none'][0]} | {r:.2f}x | unchanged: >= {proxy[0]:.2f}x - "
                          f"{NONE_TOLERANCE:.2f} (the `proxy` section's Tollgate/nginx, run "
                          f"{proxy[1]}) | {'PASS' if ok else 'FAIL'} |")
        for n, goal in GOALS.items():
            if n in med:
                r = ratio(n, "nginx")
                md.append(f"| {TARGETS[n][0]} | {r:.2f}x | >= {goal:.2f}x | "
                          f"{'PASS' if r >= goal else 'FAIL'} |")
            elif n in skipped:
                md.append(f"| {TARGETS[n][0]} | | >= {goal:.2f}x | skipped |")
        md.append("")

    trio = [n for n in ("none", "app", "jwt") if n in med]
    if len(trio) > 1:
        md += ["### none / app / JWT against each other (req/s: row / column; per-rep range)", "",
               "| | " + " | ".join(TARGETS[c][0] for c in trio) + " |",
               "|---|" + "---:|" * len(trio)]
        for a in trio:
            cells = []
            for b in trio:
                if a == b:
                    cells.append("1")
                else:
                    pr = per_rep(a, b)
                    cells.append(f"{ratio(a, b):.2f}x ({min(pr):.2f}-{max(pr):.2f})")
            md.append(f"| {TARGETS[a][0]} | " + " | ".join(cells) + " |")
        md.append("")
    pairs = [(a, b) for a, b in (("app", "none"), ("jwt", "none"), ("app-post", "none-post"))
             if a in med and b in med]
    if pairs:
        md += ["What authentication adds to Tollgate's CPU time per request (medians):", "",
               "| | CPU us/req | without auth | added | req/s ratio |", "|---|---:|---:|---:|---:|"]
        for a, b in pairs:
            md.append(f"| {TARGETS[a][0]} | {med[a]['cpu']:.1f} | {med[b]['cpu']:.1f} "
                      f"| {med[a]['cpu'] - med[b]['cpu']:+.1f} | {ratio(a, b):.2f}x |")
        md.append("")

    md += ["### Per rep", "", "| rep | target | req/s | p99 ms | CPU us/req (user/sys) | upstream reqs "
           "/ new conns | other load | errors |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        md.append(f"| {r.rep} | {targets[r.target].label} | {r.wrk.rps:,.0f} | {_ms(r.wrk.p99_ms)} "
                  f"| {r.cpu_us:.1f} ({r.cpu_user_us:.1f}/{r.cpu_sys_us:.1f}) "
                  f"| {r.upstream_requests:,} / {r.upstream_new_conns:,} | {r.other_load:.0f}% "
                  f"| {'; '.join(r.problems) if r.problems else 'none'} |")
    md += ["", "\"other load\": CPU time of the machine's other processes during the run (all "
           "busy time less the proxy's, the upstream's and wrk's), in % of all CPUs: what else "
           "competed for the CPUs (the proxy, the upstream and wrk alone share them)."]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.auth_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of each proxy (default 1)")
    p.add_argument("--requests", type=int, default=4000,
                   help="distinct requests (signed requests, tokens) each script rotates through "
                        "(default 4000)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated, among {','.join(TARGETS)} (default all)")
    p.add_argument("--warmup", type=int, default=harness.WARMUP_SECONDS,
                   help=f"seconds of wrk warming each target up (default {harness.WARMUP_SECONDS}; "
                        f"a JWT target's runs on until each token was sent)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--keep-work", action="store_true",
                   help="keep benchmarks/.work/auth-*/ (configs, Lua scripts, logs) after a clean run")
    args = p.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - set(TARGETS)
    if unknown or not args.target_list:
        p.error(f"--targets: unknown {sorted(unknown)}; choose among {','.join(TARGETS)}")
    args.target_list = [t for t in TARGETS if t in args.target_list]   # the table's order
    if min(args.duration, args.reps, args.connections, args.threads, args.workers,
           args.requests, args.warmup) < 1:
        p.error("--duration, --reps, --connections, --threads, --workers, --requests and --warmup "
                "must be >= 1")
    if args.connections < args.threads:
        p.error("--connections must be >= --threads (wrk needs a connection per thread)")
    if args.duration > 120:
        p.error("--duration is capped at 120 s to keep the run bounded")
    if args.requests > 50000:
        p.error("--requests is capped at 50000")
    if args.warmup > 60:
        p.error("--warmup is capped at 60 s")
    if len(args.target_list) * (args.reps * (args.duration + 2) + args.warmup + 5) > MAX_RUN_SECONDS:
        p.error(f"the run would last over {MAX_RUN_SECONDS // 60} minutes (the tokens live an hour): "
                f"fewer --reps, a shorter --duration or fewer --targets")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for tool in (harness.NGINX, harness.WRK):
        if not os.access(tool, os.X_OK):
            print(f"{tool} is missing (Debian packages nginx-light and wrk)", file=sys.stderr)
            return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, harness._on_signal)
    atexit.register(harness.stop_all)
    gateway_targets = [n for n in args.target_list if n != "nginx"]
    if gateway_targets:
        try:
            args.tollgate_cmd = harness.tollgate_command()
        except RuntimeError as exc:
            harness.loud(str(exc))
            return 2

    workdir = harness.WORK_ROOT / f"auth-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (workdir / "tmp").mkdir(parents=True)
    clean = False
    try:
        info = harness.machine_info()
        skipped: dict[str, str] = {}
        upstream, upstream_addr, upstream_status = harness.start_upstream(workdir)
        services: dict[str, tuple[harness.Service, int]] = {}
        if "nginx" in args.target_list:
            t = harness.start_nginx_proxy(workdir, upstream_addr, args)
            services["nginx"] = (t.service, int(t.url.rsplit(":", 1)[1].split("/")[0]))
        tokens = key = other_key = None
        if gateway_targets:
            want_jwt = "jwt" in args.target_list
            if want_jwt:
                key, other_key = make_signing_key(), make_signing_key()
            conf, why = configure(workdir, upstream_addr, args.tollgate_cmd,
                                  public_pem(key) if want_jwt else None)
            if why is not None:
                skipped["jwt"] = (f"the gateway refuses `auth: iam` at load (`tollgate validate`: "
                                  f"{why})")
                harness.loud(f"JWT (cached) skipped: {skipped['jwt']}")
            gw = start_gateway(workdir, conf, args)
            for n in gateway_targets:
                services[n] = (gw, gw.port)
            if want_jwt and "jwt" not in skipped:
                tokens = make_tokens(key, args.requests)
        names = [n for n in args.target_list if n not in skipped]
        if not names:
            raise RuntimeError("no target left to measure")

        targets: dict[str, AuthTarget] = {}
        for n in names:
            _label, method, path, kind = TARGETS[n]
            svc, port = services[n]
            t = targets[n] = AuthTarget(n, svc, port, method, path, kind)
            prepare(t, workdir, args.requests, tokens)
            check_target(t, other_key)
            harness.log(f"{t.label}: {len(t.requests)} requests checked "
                        f"({t.requests[0].wire_size()} bytes each on the wire), script {t.script}")

        notes: list[str] = []
        for n in names:
            t = targets[n]
            if t.kind == "app":
                prepare(t, workdir, args.requests, tokens)
            harness.log(f"warm-up {t.label}")
            problem = warm_up(t, args)
            if problem:
                harness.loud(problem)
                notes.append(problem)

        runs: list[harness.Run] = []
        busy0, steal0, total0 = harness.system_cpu()
        for rep in range(1, args.reps + 1):
            k = (rep - 1) % len(names)
            for n in names[k:] + names[:k]:
                t = targets[n]
                if t.kind == "app":        # signed a few seconds before its run
                    prepare(t, workdir, args.requests, tokens)
                harness.log(f"rep {rep}/{args.reps}: {t.label} for {args.duration}s")
                r = measure(t, upstream, upstream_status, rep, args)
                runs.append(r)
                harness.log(f"  {r.wrk.rps:,.0f} req/s, p99 {_ms(r.wrk.p99_ms)} ms, "
                            f"CPU {r.cpu_us:.1f} us/req, other processes {r.other_load:.0f}% "
                            f"of the machine")
        busy1, steal1, total1 = harness.system_cpu()
        span = max(total1 - total0, 1)
        load = (f"machine busy {100 * (busy1 - busy0) / span:.0f}% of all CPUs, steal "
                f"{100 * (steal1 - steal0) / span:.1f}%; load average "
                f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if gateway_targets:
            tail = gw.log_tail(300)
            if re.search(r"Traceback|\bERROR\b|\bCRITICAL\b", tail):
                notes.append("Tollgate logged errors; tail of its log:\n\n```\n"
                             + gw.log_tail(40) + "\n```")

        md = report(args, names, targets, runs, info, load, notes, skipped)
        print(md)
        if not args.no_write:
            write_section("auth", md)
            harness.log("wrote the 'auth' section of benchmarks/RESULTS.md")
        clean = not any(r.problems for r in runs) and not notes
        if not clean:
            harness.loud("some runs were not clean: see the WARNING above")
        return 0 if clean else 1
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        harness.loud(f"benchmark failed: {exc}")
        return 2
    finally:
        harness.stop_all()
        if clean and not args.keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            harness.log(f"work dir kept: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
