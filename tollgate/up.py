"""``tollgate up``: a control plane and a gateway following it, in one command.

* ``<state dir>/control-plane.db``: the control plane's SQLite store; ``<state dir>/gateway/``:
  the gateway's state (the last document it applied, served at a restart while the control
  plane is down).
* The admin token: at the first start (a store without tokens) one is generated, stored hashed
  and printed once; later starts never print it again (they say so).  ``--admin-token`` /
  ``$TOLLGATE_ADMIN_TOKEN`` sets the token ``admin`` to a value of the operator's (the way back
  when the printed one is lost).
* The gateway's token (role ``gateway``, named ``tollgate-up-gateway``) is made anew at every
  start and handed to the gateway in its environment: its value is never written anywhere.
* Both run as child processes in their own process group (a Ctrl-C reaches ``up`` only) and die
  with ``up`` (Linux: parent-death signal).  Ctrl-C or SIGTERM: the gateway is stopped first
  (it drains), then the control plane; ``up`` exits 0 when both stopped cleanly.  A child that
  exits on its own stops the other, and ``up`` exits 1.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

__all__ = ["run_up", "GATEWAY_TOKEN_NAME"]

GATEWAY_TOKEN_NAME = "tollgate-up-gateway"
STORE_FILE = "control-plane.db"


async def _tokens(store_url: str, admin_token: str | None) -> tuple[str | None, str]:
    from control_plane.auth import GATEWAY, ensure_admin_token, new_token, token_hash
    from control_plane.store import open_store

    from control_plane.audit import load_key

    audit_key, warnings = load_key(store_url)     # (the control plane finds the same one)
    for line in warnings:
        print(f"tollgate up: warning: {line}", file=sys.stderr, flush=True)
    store = await open_store(store_url, audit_key=audit_key)
    try:
        generated = await ensure_admin_token(store, admin_token)
        gateway_token = new_token()
        async with store.transaction() as tx:
            if any(t.name == GATEWAY_TOKEN_NAME for t in await tx.tokens()):
                await tx.delete_token(GATEWAY_TOKEN_NAME, who="tollgate up")
            await tx.add_token(GATEWAY_TOKEN_NAME, GATEWAY, token_hash(gateway_token),
                               who="tollgate up")
    finally:
        await store.close()
    return generated, gateway_token


def _die_with_parent() -> None:          # (in the child, before exec)
    os.setpgid(0, 0)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else
                                                        f"[{host}]" if ":" in host else host)


def _serving(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_local(host).strip("[]"), port), timeout=0.5):
            return True
    except OSError:
        return False


def _taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (None: it can)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        sock.close()
    return None


def _stop(proc: subprocess.Popen, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_up(args) -> int:
    state = os.path.abspath(args.state_dir)
    try:
        os.makedirs(state, mode=0o700, exist_ok=True)
    except OSError as exc:
        print(f"tollgate up: cannot make the state directory {state}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    store_path = os.path.join(state, STORE_FILE)
    store_url = f"sqlite:///{store_path}"
    admin_token = args.admin_token or os.environ.get("TOLLGATE_ADMIN_TOKEN") or None
    # (a port taken by another program would look served: the parts would follow it)
    for what, (host, port) in (("control plane", args.control_plane_listen),
                               ("gateway", args.listen), ("gateway status", args.status_listen)):
        problem = _taken(host, port)
        if problem:
            print(f"tollgate up: the {what} cannot listen on {host}:{port}: {problem}",
                  file=sys.stderr)
            return 1
    try:
        generated, gateway_token = asyncio.run(_tokens(store_url, admin_token))
    except ValueError as exc:
        print(f"tollgate up: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:        # (the store's engine's errors: a file that is no store...)
        print(f"tollgate up: cannot open the store {store_path}: {exc}", file=sys.stderr)
        return 1

    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    env = dict(os.environ)
    env.pop("TOLLGATE_ADMIN_TOKEN", None)      # (stored already; the children need none)
    cp_host, cp_port = args.control_plane_listen
    cp_url = f"http://{_local(cp_host)}:{cp_port}"
    gw_host, gw_port = args.listen
    st_host, st_port = args.status_listen
    cmd = [sys.executable, "-m", "tollgate"]
    control_plane = subprocess.Popen(
        [*cmd, "control-plane", "--listen", f"{cp_host}:{cp_port}", "--store", store_url],
        env=env, preexec_fn=_die_with_parent)
    children = [control_plane]
    try:
        while not _serving(cp_host, cp_port):
            if control_plane.poll() is not None or stopping:
                print("tollgate up: the control plane did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        gateway = subprocess.Popen(
            [*cmd, "gateway", "--control-plane", cp_url, "--state-dir",
             os.path.join(state, "gateway"), "--gateway-id", "tollgate-up",
             "--listen", f"{gw_host}:{gw_port}", "--status-listen", f"{st_host}:{st_port}"],
            env={**env, "TOLLGATE_GATEWAY_TOKEN": gateway_token}, preexec_fn=_die_with_parent)
        children.insert(0, gateway)           # stopped first
        while not _serving(gw_host, gw_port):
            if gateway.poll() is not None or stopping:
                print("tollgate up: the gateway did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"tollgate up: control plane {cp_url}/v1/ (store {store_path})", flush=True)
        print(f"tollgate up: gateway http://{_local(gw_host)}:{gw_port} (serves what is "
              f"published; status http://{_local(st_host)}:{st_port}/readyz, /metrics)",
              flush=True)
        if generated is not None:
            print(f"tollgate up: admin token (read-write; shown this once, stored hashed): "
                  f"{generated}", flush=True)
        elif admin_token:
            print("tollgate up: admin token: the one given (--admin-token or "
                  "$TOLLGATE_ADMIN_TOKEN)", flush=True)
        else:
            print("tollgate up: admin token: the one printed at the first start of "
                  f"{state} (it is not shown again; lost, start with --admin-token NEW to set "
                  "another)", flush=True)
        print("tollgate up: Ctrl-C stops both", flush=True)
        while not stopping:
            if any(c.poll() is not None for c in children):
                died = next(c for c in children if c.poll() is not None)
                name = "gateway" if died is not control_plane else "control plane"
                print(f"tollgate up: the {name} exited ({died.returncode}): stopping",
                      file=sys.stderr, flush=True)
                break
            time.sleep(0.1)
    finally:
        codes = [_stop(c, 45.0) for c in children]
    if not stopping:
        return 1
    print("tollgate up: stopped", flush=True)
    return 0 if all(c == 0 for c in codes) else 1
