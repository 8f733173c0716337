"""Following a control plane: ``tollgate gateway --control-plane URL --token T``.

The gateway's master runs one :class:`Follower` task.  It long-polls the control plane's
``GET /v1/gateway/config?after=N`` with ``N`` the last revision it received (the control plane
answers at once when a newer publish exists, else holds the call up to ``wait`` seconds and
answers 304: there is no polling delay).  A new document is written to
``<state dir>/published.json.new`` (fsync), checked by the master and, when good, renamed onto
``<state dir>/published.json`` (fsync of the directory) and applied by the master's reload path
(SIGHUP to the workers, which swap snapshots without dropping a request); the revision is then
written to ``<state dir>/revision`` the same way.  So a gateway restarted while the control plane
is down serves the last document it applied.

Failures: the control plane down, a 5xx, a timeout or a refused token -- the gateway keeps serving
what it has and asks again after a back-off that doubles from 0.5 s to 10 s; it logs once when the
outage starts and once when it ends.  A document the master refuses (it should not happen: the
control plane compiles what it publishes) is logged and not asked for again until a newer
revision exists.

Before the first document (a new state directory): the gateway serves an empty document (every
call 404) and ``/readyz`` answers 503 until a publish is applied.

The follower talks HTTP only; it imports nothing from ``control_plane``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Annotated

import httpx
import msgspec

__all__ = ["FollowSettings", "Follower", "prepare_state_dir", "PUBLISHED", "REVISION"]

log = logging.getLogger("tollgate.follow")

PUBLISHED = "published.json"
REVISION = "revision"
#: what a gateway serves before its first publish: nothing
EMPTY_DOCUMENT = b'{"version": 1}\n'

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
#: how long past its long-poll wait an answer may take to arrive whole
ANSWER_DEADLINE_S = 30.0


class FollowSettings(msgspec.Struct, frozen=True, kw_only=True):
    url: str                      # the control plane, e.g. http://127.0.0.1:9080
    token: str                    # a token of role gateway
    state_dir: str
    gateway_id: str
    wait_s: int = 30              # how long the control plane may hold one poll (max 60)


class _Answer(msgspec.Struct):
    revision: Annotated[int, msgspec.Meta(ge=1)]     # (what the control plane numbers from)
    document: msgspec.Raw


def _write_atomic(path: str, data: bytes, rename: bool = True) -> str:
    """``data`` to ``path`` + ``.new``, synced; renamed onto ``path`` (and the directory synced)
    when ``rename``.  Returns the path written."""
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if rename:
        os.replace(tmp, path)
        sync_dir(os.path.dirname(path))
        return path
    return tmp


def sync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_state_dir(state_dir: str) -> tuple[str, int]:
    """``(path of published.json, revision applied)``: the directory made if needed (mode 0700:
    the document holds secrets); an empty document (revision 0) when none was ever applied."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    published = os.path.join(state_dir, PUBLISHED)
    revision = 0
    if os.path.exists(published):
        try:
            with open(os.path.join(state_dir, REVISION), "rb") as f:
                revision = int(f.read().strip() or 0)
        except (OSError, ValueError):
            revision = 0
    else:
        _write_atomic(published, EMPTY_DOCUMENT)
    return published, revision


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` of whole seconds, bounded to the back-off's range (None: none, or a
    date, which the control plane does not send)."""
    if value is None or not value.strip().isdigit() or len(value.strip()) > 6:
        return None
    return min(max(float(value.strip()), BACKOFF_MIN_S), BACKOFF_MAX_S)


class Follower:
    """The master's watch of the control plane (see the module's doc)."""

    def __init__(self, settings: FollowSettings, master, revision: int):
        self.settings = settings
        self.master = master
        self.applied = revision         # the revision the gateway serves (0: none yet)
        self.received = revision        # the newest revision seen (refused ones too)
        self.down = False               # in an outage (logged once)
        self._published = os.path.join(settings.state_dir, PUBLISHED)

    async def run(self) -> None:
        s = self.settings
        url = s.url.rstrip("/") + "/v1/gateway/config"
        headers = {"Authorization": f"Bearer {s.token}", "X-Tollgate-Gateway": s.gateway_id}
        timeout = httpx.Timeout(s.wait_s + 15.0, connect=5.0)
        backoff = BACKOFF_MIN_S
        async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
            while not self.master.stopping:
                problem = None
                retry_after = None
                try:
                    # (a whole answer within its deadline: a server trickling bytes would
                    # otherwise hold the follower for ever, each read within its timeout)
                    r = await asyncio.wait_for(
                        client.get(url, params={"after": self.received, "wait": s.wait_s},
                                   headers={"X-Tollgate-Applied": str(self.applied)}),
                        s.wait_s + ANSWER_DEADLINE_S)
                except asyncio.TimeoutError:
                    problem = f"no whole answer within {s.wait_s + ANSWER_DEADLINE_S:.0f} s"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                else:
                    if r.status_code == 200:
                        try:
                            answer = msgspec.json.decode(r.content, type=_Answer)
                        except (msgspec.DecodeError, RecursionError) as exc:
                            problem = f"an answer that is not a publish ({exc})"
                        else:
                            self._recovered()
                            backoff = BACKOFF_MIN_S
                            try:
                                self.apply(answer.revision, bytes(answer.document))
                            except OSError as exc:      # (asked again after the back-off)
                                problem = (f"cannot keep revision {answer.revision} in "
                                           f"{s.state_dir} ({exc.strerror or exc})")
                            else:
                                continue
                    elif r.status_code != 304:
                        problem = f"HTTP {r.status_code}: {r.text[:200]}"
                        retry_after = _retry_after(r.headers.get("retry-after"))
                if problem is None:
                    self._recovered()
                    backoff = BACKOFF_MIN_S
                    continue
                if not self.down:
                    self.down = True
                    log.error("control plane %s: %s; still serving revision %d, retrying "
                              "(every %.1f-%.0f s) until it answers", s.url, problem,
                              self.applied, BACKOFF_MIN_S, BACKOFF_MAX_S)
                if retry_after is not None:
                    # the control plane says when (its store is back in a moment, say): the
                    # back-off does not grow, so a publish after a long outage is not late
                    await asyncio.sleep(retry_after)
                    continue
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _recovered(self) -> None:
        if self.down:
            self.down = False
            log.info("control plane %s answers again; serving revision %d", self.settings.url,
                     self.applied)

    def apply(self, revision: int, document: bytes) -> bool:
        """Check ``document`` (publish ``revision``) in the master and serve it; False when the
        master refused it (logged; not asked for again until a newer revision)."""
        started = time.monotonic()
        candidate = _write_atomic(self._published, document, rename=False)
        self.received = revision      # (after the write: a write that fails is asked for again)
        applied = self.master.reload(f"control plane revision {revision}", candidate=candidate)
        elapsed = time.monotonic() - started
        if not applied:
            log.error("revision %d from the control plane was refused; still serving revision "
                      "%d", revision, self.applied)
            return False
        _write_atomic(os.path.join(self.settings.state_dir, REVISION), b"%d\n" % revision)
        self.applied = revision
        log.info("serving revision %d from the control plane (%d bytes, written and checked in "
                 "%.0f ms)", revision, len(document), elapsed * 1000)
        return True
