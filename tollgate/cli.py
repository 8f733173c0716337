"""``tollgate <command> ...``: the command line above all parts.

``tollgate gateway`` runs the data plane; ``tollgate control-plane`` the REST admin; ``tollgate
up`` both (the gateway following the control plane); ``tollgate assets`` exports and imports
integration assets; ``tollgate validate FILE`` checks a configuration document the way the
gateway would load it, for users' own CI.
"""
from __future__ import annotations

import argparse
import sys


def host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def listener(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as host_port, or ``off``: (host, 0), no listener."""
    if text.strip().lower() == "off":
        return "127.0.0.1", 0
    return host_port(text)


def _gateway(args) -> int:
    from gateway.http.limits import Limits
    from gateway.master import GatewaySettings, run_gateway
    from gateway.worker import WorkerSettings

    if args.send_timeout <= 0:
        print("tollgate: --send-timeout must be more than 0", file=sys.stderr)
        return 2
    if args.websocket_drain_grace < 0:
        print("tollgate: --websocket-drain-grace must be 0 or more", file=sys.stderr)
        return 2
    limits = Limits(max_body_bytes=args.max_body_bytes, drain_timeout_s=args.drain_timeout,
                    # (a tunnel's grace ends within the drain: the worker exits then)
                    tunnel_drain_grace_s=min(args.websocket_drain_grace, args.drain_timeout),
                    upstream_idle_timeout_s=args.upstream_idle_timeout,
                    send_timeout_s=args.send_timeout,
                    underscores_in_headers=args.underscores_in_headers)
    if not 1 <= args.throttle_keys <= 1 << 26:
        print("tollgate: --throttle-keys must be between 1 and 67108864", file=sys.stderr)
        return 2
    if not args.listen[1] and not args.tls_listen[1]:
        print("tollgate: --listen and --tls-listen are both off: nothing to serve",
              file=sys.stderr)
        return 2
    follow = None
    if args.control_plane:
        import os
        import socket

        from gateway.follow import FollowSettings

        token = args.token or os.environ.get("TOLLGATE_GATEWAY_TOKEN")
        if args.config:
            print("tollgate: --config and --control-plane exclude each other (a gateway serves "
                  "a file, or follows a control plane)", file=sys.stderr)
            return 2
        if not args.control_plane.startswith(("http://", "https://")):
            print("tollgate: --control-plane must be an http:// or https:// URL",
                  file=sys.stderr)
            return 2
        if not token:
            print("tollgate: --control-plane needs --token (or $TOLLGATE_GATEWAY_TOKEN): a "
                  "token of role gateway", file=sys.stderr)
            return 2
        follow = FollowSettings(url=args.control_plane, token=token, state_dir=args.state_dir,
                                gateway_id=args.gateway_id or
                                f"{socket.gethostname()}:{args.listen[1] or args.tls_listen[1]}")
        args.config = os.path.join(args.state_dir, "published.json")   # (made absolute later)
    elif not args.config:
        print("tollgate: --config FILE (or --control-plane URL) is required", file=sys.stderr)
        return 2
    worker = WorkerSettings(config=args.config, host=args.listen[0], port=args.listen[1],
                            limits=limits)
    settings = GatewaySettings(
        config=args.config, host=args.listen[0], port=args.listen[1],
        tls_host=args.tls_listen[0], tls_port=args.tls_listen[1],
        status_host=args.status_listen[0], status_port=args.status_listen[1],
        workers=args.workers, access_log=args.access_log, worker=worker,
        watch_interval_s=args.watch_interval, throttle_keys=args.throttle_keys, follow=follow)
    return run_gateway(settings)


def _validate(args) -> int:
    """Print every error of the document with its path, or OK with a summary; exit 0 or 1."""
    from gateway.config import ConfigError
    from gateway.master import check_file

    try:
        checked = check_file(args.file)
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror or exc}")
        return 1
    except ConfigError as exc:
        count = len(exc.errors)
        print(f"{args.file}: {count} error{'s' if count != 1 else ''}")
        for error in exc.errors:
            print(error)
        return 1
    served = sum(checked.apis_per_environment.values())
    print(f"OK: {args.file} (configuration {checked.version}, {served} API"
          f"{'s' if served != 1 else ''} served)")
    for env, count in checked.apis_per_environment.items():
        print(f"  {env}: {count} API{'s' if count != 1 else ''}")
    for warning in checked.warnings:
        print(f"warning: {warning}")
    return 0


def _control_plane(args) -> int:
    """Serve the REST admin on uvicorn (uvloop); SIGTERM / Ctrl-C stop it cleanly."""
    import os

    import uvicorn

    from control_plane.app import create_app
    from control_plane.audit import load_key
    from control_plane.store import DEFAULT_URL

    admin_token = args.admin_token or os.environ.get("TOLLGATE_ADMIN_TOKEN") or None
    # the store's URL may hold a password: the environment keeps it out of `ps`
    store_url = args.store or os.environ.get("TOLLGATE_STORE") or DEFAULT_URL

    def announce(line: str) -> None:
        print(line, flush=True)

    problem = _store_problem(store_url)
    if problem is not None:
        print(f"tollgate control-plane: cannot open the store {_masked_url(store_url)}: "
              f"{problem}", file=sys.stderr, flush=True)
        return 1
    try:
        audit_key, warnings = load_key(store_url, args.audit_key_file)
    except ValueError as exc:
        print(f"tollgate control-plane: {exc}", file=sys.stderr)
        return 1
    for line in warnings:
        print(f"tollgate control-plane: warning: {line}", file=sys.stderr, flush=True)
    host, port = args.listen
    import socket
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        print(f"tollgate control-plane: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    app = create_app(store_url, admin_token=admin_token, announce=announce,
                     audit_key=audit_key)
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="h11",
                            lifespan="on", log_level="warning", access_log=False,
                            server_header=False)
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            app.state.tollgate.stopping()      # gateways waiting on a long poll are answered

    server = Server(config)
    # uvicorn stops gracefully on SIGTERM / SIGINT, then raises the signal again for the
    # handlers it found: let those be quiet ones, so that a clean stop exits 0
    import signal
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    print(f"tollgate control plane: serving http://{host}:{port}/v1/ (store "
          f"{_masked_url(store_url)})", flush=True)
    try:
        server.run(sockets=[sock])
    except SystemExit:          # (uvicorn's exit when the app's start fails: it said why)
        return 1
    return 0 if server.started else 1


def _store_problem(url: str) -> str | None:
    """Why the store at ``url`` cannot be opened (None: it can), said without a traceback and
    without the URL's password."""
    import asyncio

    from control_plane.store import open_store

    async def probe():
        store = await open_store(url)
        await store.close()
    try:
        asyncio.run(probe())
    except Exception as exc:        # (any engine's error: the message is what matters here)
        return (str(exc) or type(exc).__name__).replace(url, _masked_url(url))
    return None


def _admin_client(args):
    import os

    import httpx

    token = args.token or os.environ.get("TOLLGATE_ADMIN_TOKEN")
    if not token:
        raise SystemExit("tollgate: --token (or $TOLLGATE_ADMIN_TOKEN) is required: an admin "
                         "token of the control plane")
    return httpx.Client(base_url=args.control_plane.rstrip("/"), timeout=300.0,
                        headers={"Authorization": f"Bearer {token}"})


def _print_refusal(response) -> int:
    try:
        error = response.json()
    except ValueError:
        print(f"tollgate: the control plane answered {response.status_code}: "
              f"{response.text[:500]}", file=sys.stderr)
        return 1
    print(f"tollgate: refused ({response.status_code} {error.get('error_code')}): "
          f"{error.get('error_msg')}", file=sys.stderr)
    for problem in error.get("errors") or ():
        where = "/".join(p for p in (problem.get("kind"), problem.get("name")) if p)
        path = f": {problem['path']}" if problem.get("path") else ""
        print(f"  {where or '(file)'}{path}: {problem.get('message')}", file=sys.stderr)
    return 1


def _assets(args) -> int:
    """``tollgate assets export --out FILE`` / ``tollgate assets import FILE``."""
    import json
    import os

    import httpx

    try:
        with _admin_client(args) as client:
            if args.action == "export":
                response = client.get("/v1/assets")
                if response.status_code != 200:
                    return _print_refusal(response)
                data = response.json()
                tmp = args.out + ".new"
                with open(tmp, "w") as f:
                    json.dump(data, f, indent=2)
                    f.write("\n")
                os.replace(tmp, args.out)
                counts = ", ".join(f"{len(v)} {k}" for k, v in data["assets"].items() if v)
                print(f"exported to {args.out}: {counts or 'nothing'}")
                return 0
            try:
                with open(args.file, "rb") as f:
                    body = f.read()
            except OSError as exc:
                print(f"tollgate: {args.file}: cannot read: {exc.strerror or exc}",
                      file=sys.stderr)
                return 1
            params = {"mode": args.mode, **({"prefix": args.prefix} if args.prefix else {})}
            response = client.post("/v1/assets", params=params, content=body,
                                   headers={"Content-Type": "application/json"})
            if response.status_code != 200:
                return _print_refusal(response)
            done = response.json()
    except httpx.TransportError as exc:
        print(f"tollgate: cannot reach the control plane at {args.control_plane}: {exc}",
              file=sys.stderr)
        return 1
    counts = ", ".join(f"{len(v)} {k}" for k, v in done["imported"].items())
    print(f"imported: {counts or 'nothing'}")
    if done["reconfigure"]:
        print("to configure again (asset files hold no secrets or instance data):")
    for entry in done["reconfigure"]:
        print(f"  {entry['kind']}/{entry['name']}:")
        for item in entry["items"]:
            mark = " [needed to publish]" if item["blocks_publish"] else ""
            print(f"    {item['field']}: {item['what']}{mark}")
        for path, value in (entry.get("generated") or {}).items():
            print(f"    new {path}: {value}")
    return 0


def _up(args) -> int:
    from tollgate.up import run_up
    return run_up(args)


def _masked_url(url: str) -> str:
    from control_plane.kinds import mask
    return mask("datasources", {"url": url})["url"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tollgate", description="Tollgate API gateway")
    sub = p.add_subparsers(dest="part", required=True)
    g = sub.add_parser("gateway", help="run the data plane (reverse proxy)",
                       description="Serve the APIs of a configuration file. SIGHUP or a change "
                                   "of the file reloads it; SIGTERM drains and exits.")
    g.add_argument("--config", default=None,
                   help="configuration document (YAML or JSON); not with --control-plane")
    g.add_argument("--control-plane", default=None, metavar="URL",
                   help="follow this control plane (http://HOST:PORT): serve what is published "
                        "there, applied live; instead of --config")
    g.add_argument("--token", default=None, metavar="TOKEN",
                   help="with --control-plane: a token of role gateway (default: "
                        "$TOLLGATE_GATEWAY_TOKEN)")
    g.add_argument("--state-dir", default="tollgate-gateway-state", metavar="DIR",
                   help="with --control-plane: where the last applied document is kept "
                        "(published.json, served at a restart while the control plane is down; "
                        "default ./tollgate-gateway-state)")
    g.add_argument("--gateway-id", default=None, metavar="ID",
                   help="with --control-plane: this gateway's name in the control plane's list "
                        "of gateways (default HOSTNAME:PORT)")
    g.add_argument("--listen", type=listener, default=("127.0.0.1", 8080),
                   help="HOST:PORT to serve plain HTTP on (default 127.0.0.1:8080), or 'off'")
    g.add_argument("--tls-listen", type=listener, default=("127.0.0.1", 0), metavar="HOST:PORT",
                   help="HOST:PORT to serve HTTPS on, with the configuration's certificates "
                        "chosen by SNI (off by default)")
    g.add_argument("--status-listen", type=host_port, default=("127.0.0.1", 9091),
                   help="HOST:PORT for /metrics, /healthz, /readyz (default 127.0.0.1:9091)")
    g.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    g.add_argument("--access-log", default=None, metavar="PATH",
                   help="write a JSON access log line per request to PATH ('-' = stdout); off by default")
    g.add_argument("--max-body-bytes", type=int, default=12 * 1024 * 1024)
    g.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for in-flight requests")
    g.add_argument("--send-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds a client (or a WebSocket peer) may go without reading what is "
                        "sent to it before its connection is cut")
    g.add_argument("--websocket-drain-grace", type=float, default=10.0, metavar="SECONDS",
                   help="seconds an open WebSocket tunnel may go on after SIGTERM before it "
                        "is closed (at most --drain-timeout)")
    g.add_argument("--upstream-idle-timeout", type=float, default=10.0,
                   help="seconds a pooled backend connection may stay idle")
    g.add_argument("--throttle-keys", type=int, default=262_144, metavar="N",
                   help="live caller keys (client addresses, apps, users per throttle) the "
                        "gateway's shared throttle table holds, 32 bytes each (default 262144; "
                        "rounded up to a power of two)")
    g.add_argument("--watch-interval", type=float, default=1.0,
                   help="seconds between checks of the config file for changes")
    g.add_argument("--underscores-in-headers", action="store_true",
                   help="forward request header names that contain '_' (dropped by default: "
                        "CGI/WSGI backends read X_Foo as X-Foo); a name that reads as a framing, "
                        "hop-by-hop or gateway-set header (Transfer_Encoding) is dropped even so")
    g.set_defaults(run=_gateway)
    c = sub.add_parser("control-plane", help="run the control plane (REST admin)",
                       description="Serve the REST admin of the configuration (/v1/...). "
                                   "Every call needs a bearer token; the first read-write "
                                   "token is --admin-token, or one generated at the first "
                                   "start and printed once.")
    c.add_argument("--listen", type=host_port, default=("127.0.0.1", 9080),
                   help="HOST:PORT to serve on (default 127.0.0.1:9080)")
    c.add_argument("--store", default=None, metavar="URL",
                   help="sqlite:///FILE (default: $TOLLGATE_STORE, else "
                        "sqlite:///tollgate-control-plane.db) or "
                        "postgresql://USER:PASSWORD@HOST/DB")
    c.add_argument("--admin-token", default=None, metavar="TOKEN",
                   help="the first read-write token (default: $TOLLGATE_ADMIN_TOKEN; else one "
                        "is generated at the first start and printed once)")
    c.add_argument("--audit-key-file", default=None, metavar="FILE",
                   help="the key of the audit log's hashes (generated when missing; default: "
                        "$TOLLGATE_AUDIT_KEY, else FILE.audit-key beside a SQLite store, "
                        "./tollgate-audit.key for PostgreSQL: control planes sharing a store "
                        "need the same key)")
    c.set_defaults(run=_control_plane)
    a = sub.add_parser("assets", help="export or import the integration assets of a control "
                                      "plane",
                       description="Asset files hold the integration assets (groups, APIs "
                                   "published in RELEASE, channels, authorizers, apps, "
                                   "products, data sources) without secrets or instance data.")
    a.add_argument("--control-plane", default="http://127.0.0.1:9080", metavar="URL",
                   help="the control plane (default http://127.0.0.1:9080)")
    a.add_argument("--token", default=None, metavar="TOKEN",
                   help="an admin token (default: $TOLLGATE_ADMIN_TOKEN); import needs a "
                        "read-write one")
    asub = a.add_subparsers(dest="action", required=True)
    ae = asub.add_parser("export", help="write the asset file")
    ae.add_argument("--out", required=True, metavar="FILE")
    ai = asub.add_parser("import", help="import an asset file (all or nothing) and list what "
                                        "must be configured again")
    ai.add_argument("file", metavar="FILE")
    ai.add_argument("--mode", choices=("add", "merge"), default="add",
                    help="add (default): refuse names that exist; merge: replace them (keeping "
                         "their secrets and instance data)")
    ai.add_argument("--prefix", default=None, metavar="P",
                    help="put P before every imported name (and the references to them)")
    for parser_ in (ae, ai):
        parser_.set_defaults(run=_assets)
    u = sub.add_parser("up", help="run a control plane and a gateway following it, in one command",
                       description="Run the control plane (SQLite in --state-dir) and a gateway "
                                   "following it. The admin token is printed at the first start "
                                   "only. Ctrl-C or SIGTERM stops both.")
    u.add_argument("--state-dir", default="tollgate-state", metavar="DIR",
                   help="the control plane's store and the gateway's state (default "
                        "./tollgate-state)")
    u.add_argument("--listen", type=host_port, default=("127.0.0.1", 8080),
                   help="the gateway's HOST:PORT (default 127.0.0.1:8080)")
    u.add_argument("--control-plane-listen", type=host_port, default=("127.0.0.1", 9080),
                   metavar="HOST:PORT", help="the control plane's (default 127.0.0.1:9080)")
    u.add_argument("--status-listen", type=host_port, default=("127.0.0.1", 9091),
                   metavar="HOST:PORT",
                   help="the gateway's /metrics, /healthz, /readyz (default 127.0.0.1:9091)")
    u.add_argument("--admin-token", default=None, metavar="TOKEN",
                   help="set the read-write token 'admin' to TOKEN (default: "
                        "$TOLLGATE_ADMIN_TOKEN; else one is generated at the first start and "
                        "printed once)")
    u.set_defaults(run=_up)
    v = sub.add_parser("validate", help="check a configuration document without serving it",
                       description="Load FILE as the gateway would and print every error with "
                                   "its path (exit 1), or OK with the APIs served per "
                                   "environment and any warnings (exit 0).")
    v.add_argument("file", metavar="FILE", help="configuration document (YAML or JSON)")
    v.set_defaults(run=_validate)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        print("tollgate: --workers must be at least 1", file=sys.stderr)
        return 2
    return args.run(args)
