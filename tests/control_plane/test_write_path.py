"""The fast single-resource write path (``control_plane/index.py``): the reference index and the
claimed keys the store keeps, the migration that builds them for an older store, and a
differential test -- a long randomized sequence of writes, each decided by the fast path the app
uses AND by the whole-document check (``document.check`` on the candidate): both must agree
(accept/refuse, and the same problems, users and paths when they refuse)."""
from __future__ import annotations

import asyncio
import copy
import json
import random
import sqlite3
import threading
import time

import httpx
import pytest

from benchmarks import many_apis
from control_plane import app as A
from control_plane import document as D
from control_plane.kinds import KINDS, SETTINGS, name_of, users_of
from control_plane.store import open_store
from tests.support.control_plane import ControlPlaneProcess

from .examples import rich

from tests.control_plane.test_store import run, url  # noqa: F401 (url: a fixture)

pytestmark = pytest.mark.once      # pure Python: the fastpath form changes nothing here

ADMIN = "admin-token-for-tests-0123456789"




def start_document() -> dict:
    """rich() plus more of what the uniqueness rules are about: groups with and without
    domains, a second app, device and certificate."""
    raw = rich()
    raw["groups"] += [{"name": "hosted", "domains": ["a.example.com"],
                       "variables": {"RELEASE": {"lot_backend": "127.0.0.1:9003"}}},
                      {"name": "plain"}]
    raw["apps"].append({"name": "second-app", "key": "second-app-key-01",
                        "secret": "second-app-secret-01", "app_codes": ["second-code-0001"]})
    raw["devices"].append({"name": "slot-002", "product": "parking-sensor",
                           "identifier": "AA:BB:CC:00:00:02", "password": "device-pw-002"})
    raw["apis"] += [{"name": "hosted-api", "group": "hosted", "method": "GET", "path": "/h/{id}",
                     "backend": {"url": "http://#lot_backend#/h/{id}"},
                     "environments": {"RELEASE": {}}},
                    {"name": "plain-api", "group": "plain", "method": "GET", "path": "/p",
                     "backend": {"type": "mock", "mock": {"status": 200}},
                     "environments": {"RELEASE": {}, "TEST": {}}}]
    return raw


async def load(store, raw) -> None:
    settings, resources = D.split(D.check(*_split_raw(raw), compile=False))
    async with store.transaction() as tx:
        await tx.create(SETTINGS, "settings", settings, "test")
        for kind_name, bodies in resources.items():
            for body in bodies:
                await tx.create(kind_name, name_of(kind_name, body), body, "test")


def _split_raw(raw):
    return ({k: v for k, v in raw.items() if k not in KINDS},
            {k: raw.get(k, []) for k in KINDS})


async def whole_state(store) -> tuple[dict, dict[str, list[dict]]]:
    settings, _ = await A._settings(store)
    return settings, await A._all_resources(store)


# ----------------------------------------------------------------------------------- the index

def test_the_store_keeps_references_and_claims_through_writes(url):
    async def fn(s):
        await load(s, start_document())
        settings, resources = await whole_state(s)
        for kind_name, bodies in resources.items():          # users == a scan of every body
            for body in bodies:
                name = name_of(kind_name, body)
                assert await s.users(kind_name, name) == users_of(resources, kind_name, name)
        assert await s.users("channels", "lots")
        holders = await s.claimants([("group_domain", "a.example.com"), ("app_key", "nope")])
        assert [(h[2], h[3]) for h in holders] == [("groups", "hosted")]
        # a rename moves the rows, a delete removes them, a failed transaction leaves them
        api = (await s.get("apis", "plain-api")).body
        await s.replace("apis", "plain-api", {**api, "name": "plain-2"}, "t", new_name="plain-2")
        assert [u[1] for u in await s.users("groups", "plain")] == ["plain-2"]
        with pytest.raises(RuntimeError):
            async with s.transaction() as tx:
                await tx.delete("apis", "plain-2", "t")
                raise RuntimeError("rolled back")
        assert [u[1] for u in await s.users("groups", "plain")] == ["plain-2"]
        await s.delete("apis", "plain-2", "t")
        assert await s.users("groups", "plain") == []
        key = [c for c in (await s.claimants([("route", "RELEASE\x1fGET\x1f/p\x1fexact")]))]
        assert key == []
    run(url, fn)


def test_an_old_schema_store_gets_the_index_at_open(tmp_path):
    path = tmp_path / "old.db"

    async def make(s):
        await load(s, start_document())
    run(f"sqlite:///{path}", make)
    # what version 1 was: no index tables, schema_version 1
    db = sqlite3.connect(path)
    db.execute("DROP TABLE refs")
    db.execute("DROP TABLE claims")
    db.execute("UPDATE schema_version SET version = 1")
    db.commit()
    db.close()

    async def check(s):
        _settings, resources = await whole_state(s)
        assert await s.users("channels", "lots") == users_of(resources, "channels", "lots")
        assert len(await s.users("channels", "lots")) >= 2
        assert await s.claimants([("group_domain", "a.example.com")])
    run(f"sqlite:///{path}", check)
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    db.close()


def test_an_old_schema_postgresql_store_gets_the_index_at_open(pg_server):
    url = pg_server.create_database()
    run(url, lambda s: load(s, start_document()))
    dbname = url.rsplit("/", 1)[1]
    pg_server.sql("DROP TABLE refs; DROP TABLE claims; UPDATE schema_version SET version = 1",
                  database=dbname)

    async def check(s):
        _settings, resources = await whole_state(s)
        assert await s.users("groups", "parking") == users_of(resources, "groups", "parking")
        assert await s.users("groups", "parking")
    run(url, check)


# ------------------------------------------------------------------------ differential test

class Verdict:
    def __init__(self, ok: bool, status: int | None = None, problems=None, users=None):
        self.ok, self.status, self.problems, self.users = ok, status, problems, users

    def __repr__(self):
        return f"Verdict({self.ok}, {self.status}, {self.problems}, {self.users})"


async def fast(store, op) -> Verdict:
    """The app's write path (the same helpers, in one transaction), writing when it accepts."""
    action, kind_name, name, body = op
    try:
        async with store.transaction() as tx:
            await tx.lock()
            stored = await tx.get(kind_name, name) if action != "create" else None
            if action == "delete":
                users = await tx.users(kind_name, name)
                if users:
                    return Verdict(False, 409, users=users)
                await tx.delete(kind_name, name, "t")
                return Verdict(True)
            new_name = name_of(kind_name, body)
            if action == "create":
                await A._check_refs(tx, kind_name, body)
                await A._check_write(tx, kind_name, new_name, body, None, None)
                await tx.create(kind_name, new_name, body, "t")
            else:
                if new_name != name:
                    users = await tx.users(kind_name, name)
                    if users:
                        return Verdict(False, 409, users=users)
                await A._check_refs(tx, kind_name, body)
                await A._check_write(tx, kind_name, new_name, body, name, stored.body)
                await tx.replace(kind_name, name, body, "t", new_name=new_name)
            return Verdict(True)
    except A.ApiError as exc:
        return Verdict(False, exc.status, problems=[tuple(map(str, (p.kind, p.name, p.path,
                                                                    p.message)))
                                                    for p in exc.errors])


def whole(settings, resources, op) -> Verdict:
    """What checking the whole candidate document says (the simple correct version)."""
    action, kind_name, name, body = op
    if action == "delete":
        users = users_of(resources, kind_name, name)
        if users:
            return Verdict(False, 409, users=users)
        candidate = D.with_resource(resources, kind_name, name, None)
    else:
        new_name = name_of(kind_name, body)
        if action == "replace" and new_name != name:
            users = users_of(resources, kind_name, name)
            if users:
                return Verdict(False, 409, users=users)
        candidate = D.with_resource(resources, kind_name, name, body)
    try:
        D.check(settings, candidate, compile=False)
    except D.DocumentError as exc:
        return Verdict(False, 422, problems=[tuple(map(str, (p.kind, p.name, p.path, p.message)))
                                             for p in exc.problems])
    return Verdict(True)


def _pick(rng, resources, kind_name):
    bodies = resources[kind_name]
    return copy.deepcopy(rng.choice(bodies)) if bodies else None


def next_write(rng: random.Random, resources: dict[str, list[dict]], i: int):
    """One write, chosen to hit the rules that span resources as often as plain ones."""
    r = rng.random
    names = lambda k: [name_of(k, b) for b in resources[k]]  # noqa: E731
    envs = ["RELEASE", "TEST", "NOPE"]
    choice = rng.randrange(14)
    if choice <= 2:                                 # an API: new, or a change of one
        api = _pick(rng, resources, "apis")
        old = api["name"]
        if r() < 0.5 or choice == 0:
            api["name"] = f"api-{i}"
        if r() < 0.4:
            other = _pick(rng, resources, "apis")
            api["path"], api["method"] = other["path"], other["method"]
            api["match_mode"] = other.get("match_mode", "exact")
        elif r() < 0.5:
            api["path"] = f"/gen/{i}/{{id}}" if r() < 0.8 else f"/gen/{i}/{{id}}/{{id}}"
            api["params"] = []
            if api["backend"].get("url"):
                api["backend"]["url"] = "http://#lot_backend#/x"
        if r() < 0.4:
            api["group"] = rng.choice(names("groups") + ["ghost"] * (r() < 0.1))
        if r() < 0.4:
            api["environments"] = {e: {} for e in rng.sample(envs[:2] + envs[2:] * (r() < 0.1),
                                                             rng.randrange(3))}
        if r() < 0.2:
            api["backend"] = {"type": "http", "channel": rng.choice(names("channels")),
                              "path": "/c"}
        if r() < 0.1:
            api["auth"] = rng.choice(["iam", "custom", "none", "app"])
        action = "replace" if api["name"] == old else rng.choice(["create", "replace"])
        return action, "apis", old if action == "replace" else api["name"], api
    if choice == 3:                                 # a channel's members, or a new channel
        ch = _pick(rng, resources, "channels")
        if ch is None or r() < 0.3:
            return "create", "channels", f"ch-{i}", {"name": f"ch-{i}", "port": 80, "members":
                                                     [{"host": "127.0.0.1"}] * (r() < 0.5)}
        ch["members"] = [] if r() < 0.5 else [{"host": "127.0.0.1", "port": 81}]
        return "replace", "channels", ch["name"], ch
    if choice == 4:                                 # a group: variables, domains
        g = _pick(rng, resources, "groups")
        old = g["name"]
        if r() < 0.3:
            g["name"] = f"group-{i}"
            g["domains"] = [] if r() < 0.5 else [f"d{i}.example.com"]
            return "create", "groups", g["name"], g
        roll = r()
        if roll < 0.3:
            g["variables"] = {}
        elif roll < 0.6:
            pool = [d for b in resources["groups"] for d in b.get("domains") or ()]
            g["domains"] = rng.sample(pool, min(len(pool), 1)) if pool and r() < 0.6 else \
                ([f"x{i}.example.com"] if r() < 0.5 else [])
        else:
            g["name"] = f"renamed-{i}"
        return "replace", "groups", old, g
    if choice == 5:                                 # apps: keys and codes
        app = _pick(rng, resources, "apps")
        other = _pick(rng, resources, "apps")
        if r() < 0.4:
            app["name"] = f"app-{i}"
            app["key"] = other["key"] if r() < 0.5 else f"fresh-key-{i:04d}"
            app["app_codes"] = list(other.get("app_codes") or [])[:1] if r() < 0.5 else []
            app["secret"] = f"fresh-secret-{i:04d}"
            return "create", "apps", app["name"], app
        if r() < 0.5:
            app["key"] = other["key"]
        else:
            app["app_codes"] = list(other.get("app_codes") or []) + [f"code-{i:05d}-xyz"]
        return "replace", "apps", name_of("apps", app), app
    if choice == 6:                                 # certificates: domains, default
        cert = _pick(rng, resources, "certificates")
        other = _pick(rng, resources, "certificates")
        if r() < 0.5:
            cert["domains"] = list(cert["domains"]) + [rng.choice(other["domains"]).upper()]
        else:
            cert["default"] = True
        if r() < 0.3:
            cert["name"] = f"cert-{i}"
            return "create", "certificates", cert["name"], cert
        return "replace", "certificates", cert["name"], cert
    if choice == 7:                                 # devices: identifier, product
        dev = _pick(rng, resources, "devices")
        if r() < 0.5:                               # (the one a rule reads)
            dev = copy.deepcopy(next((d for d in resources["devices"]
                                      if d["name"] == "slot-001"), dev))
        other = _pick(rng, resources, "devices")
        old = dev["name"]
        if r() < 0.5:
            dev["identifier"] = other["identifier"]
        if r() < 0.3:
            dev["name"] = f"dev-{i}"
            return "create", "devices", dev["name"], dev
        if r() < 0.7:
            prods = [p for p in names("products") if p != dev["product"]] or names("products")
            dev["product"] = rng.choice(prods + ["ghost-product"] * (r() < 0.2))
        return "replace", "devices", old, dev
    if choice == 8:                                 # a new product (a device may move to it)
        return "create", "products", f"prod-{i}", {"name": f"prod-{i}"}
    if choice == 9:                                 # authorizer type, acl entity
        if r() < 0.5:
            a = _pick(rng, resources, "authorizers")
            a["type"] = "backend" if a.get("type", "frontend") == "frontend" else "frontend"
            return "replace", "authorizers", a["name"], a
        acl = _pick(rng, resources, "acls")
        if acl is None:
            return "create", "acls", f"acl-{i}", {"name": f"acl-{i}", "action": "PERMIT",
                                                  "entity": "ip", "values": ["10.0.0.1"]}
        acl["entity"], acl["values"] = (("account", ["acme"]) if acl["entity"] == "ip" else
                                        ("ip", ["10.0.0.1"]))
        return "replace", "acls", acl["name"], acl
    if choice in (10, 11):                          # a delete of anything
        kind_name = rng.choice([k for k in KINDS if resources[k]])
        return "delete", kind_name, rng.choice(names(kind_name)), None
    if choice == 12:                                # a rename of anything
        kind_name = rng.choice([k for k in KINDS if resources[k]])
        body = _pick(rng, resources, kind_name)
        old = body["name"]
        body["name"] = f"{old}-r{i}"
        return "replace", kind_name, old, body
    # an environment or a throttle special
    if r() < 0.5:
        return "create", "environments", f"ENV{i}", {"name": f"ENV{i}"}
    t = _pick(rng, resources, "throttles")
    t["specials"] = [{"app": rng.choice(names("apps") + ["ghost-app"]), "limit": 1}]
    return "replace", "throttles", t["name"], t


def _normalized(op, stored):
    action, kind_name, name, body = op
    if body is None:
        return op
    try:
        body = (D.create_body(kind_name, body) if action == "create" else
                D.replace_body(kind_name, body, stored))[0]
    except D.DocumentError:
        return None                         # (refused before any check: not what we compare)
    return action, kind_name, name, body


#: what the refusals of the sequences must include (each a rule that spans resources)
SPANNING_RULES = ("the same method and path", "already used by group", "the same key as",
                  "the same app code", "is already the default", "is already served by",
                  "the same identifier", "has no members", "a backend authorizer has type",
                  "applies to APIs with auth: iam", "is of product")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_fast_path_and_whole_document_check_agree(engine, request, tmp_path):
    """Three seeded sequences of 160 writes from the same start, each on a fresh store (every
    rule that spans resources is met by at least one); on PostgreSQL the first sequence only
    (the checks are the same code: what differs is the engine's SQL for the index)."""
    messages = []
    for seed in (1, 2, 3) if engine == "sqlite" else (1,):
        url = (f"sqlite:///{tmp_path}/store-{seed}.db" if engine == "sqlite" else
               request.getfixturevalue("pg_server").create_database())
        messages += agree(url, seed)
    if engine == "sqlite":
        missing = [rule for rule in SPANNING_RULES if rule not in " ".join(messages)]
        assert not missing, missing


def agree(url, seed) -> list[str]:
    rng = random.Random(seed)

    async def fn(s):
        await load(s, start_document())
        accepted = refused = compared = 0
        messages = []
        for i in range(160):
            settings, resources = await whole_state(s)
            try:
                op = next_write(rng, resources, i)
            except (TypeError, IndexError, KeyError):   # (a kind deleted empty: something else)
                op = ("create", "throttles", f"thr-{i}", {"name": f"thr-{i}", "api_limit": 10})
            stored = next((b for b in resources[op[1]] if name_of(op[1], b) == op[2]), None)
            if op[0] == "create" and stored is not None:
                continue
            op = _normalized(op, stored)
            if op is None:
                continue
            expected = whole(settings, resources, op)
            got = await fast(s, op)
            assert got.ok == expected.ok, (i, op, got, expected)
            if not got.ok:
                refused += 1
                if got.status == 409 and expected.status == 409:
                    assert got.users == expected.users, (op, got, expected)
                elif got.status == 422:
                    assert got.problems == expected.problems, (op, got, expected)
                    compared += 1
                    messages += [p[3] for p in got.problems]
                else:   # a missing reference: 409 naming it; the whole check names it too
                    assert got.status == 409 and expected.status == 422, (op, got, expected)
                    missing = {p[2] for p in got.problems}
                    assert missing <= {p[2] for p in expected.problems}, (op, got, expected)
            else:
                accepted += 1
            # the store's document stays one the gateway accepts
            after_settings, after = await whole_state(s)
            D.check(after_settings, after, compile=False)
        assert accepted > 20 and refused > 20 and compared > 5, (accepted, refused, compared)
        return messages
    return run(url, fn)


# ------------------------------------------------------------------------ off the event loop

def test_reads_are_answered_while_a_whole_document_write_is_checked(tmp_path):
    """PUT /v1/config of 10,000 APIs (refused at the end: the last API takes the first one's
    route) is checked in a thread: GETs sent meanwhile are answered before it."""
    doc = many_apis.document(10_000)
    clash = copy.deepcopy(doc["apis"][0])
    clash["name"] = "zz-clash"
    doc["apis"].append(clash)
    payload = json.dumps(doc).encode()      # (encoded before: the clock starts at the send)
    cp = ControlPlaneProcess(tmp_path, admin_token=ADMIN).start()
    try:
        sent, done = threading.Event(), threading.Event()
        answer, sent_time, done_time = {}, {}, {}

        def body():
            for i in range(0, len(payload), 1 << 16):
                yield payload[i:i + (1 << 16)]
            sent_time["at"] = time.monotonic()
            sent.set()                      # the whole body is on its way: the server decides

        def put():
            with cp.client(ADMIN) as c:
                c.timeout = httpx.Timeout(300.0)
                answer["r"] = c.put("/v1/config", content=body(),
                                    headers={"Content-Type": "application/json"})
            done_time["at"] = time.monotonic()
            done.set()

        with cp.client(ADMIN) as c:
            assert c.get("/v1/settings").status_code == 200
            writer = threading.Thread(target=put)
            writer.start()
            waits = []                      # how long each read sent after the body took
            while not done.is_set():
                asked = time.monotonic()
                was_sent = sent.is_set()
                r = c.get("/v1/settings")
                assert r.status_code == 200
                if was_sent and not done.is_set():
                    waits.append(time.monotonic() - asked)
            writer.join()
            window = done_time["at"] - sent_time["at"]
        r = answer["r"]
        assert r.status_code == 422, r.text
        assert r.json()["path"] == "path" and "zz-clash" in r.text
        # the loop answered reads while the document was decoded and checked: no read waited
        # for most of it (when the check ran on the event loop, one read waited all of it)
        assert len(waits) >= 3, (waits, window)
        assert max(waits) < window / 2, (waits, window)
    finally:
        assert cp.stop() == 0, cp.log()


# ------------------------------------------------------------- several control planes, one store

def test_two_stores_on_one_database_never_both_take_a_route(url):
    """Two store objects on one database (two control planes), writing at the same time APIs
    that take the same route, or two apps with one key: exactly one of each pair is accepted
    (the writers' lock is taken before the claimed keys are read)."""
    async def main():
        a = await open_store(url)
        b = await open_store(url) if url.startswith("postgresql") else a
        try:
            await load(a, start_document())
            template = (await a.get("apis", "plain-api")).body
            for i in range(6):
                ops = [("create", "apis", f"twin-{i}-{side}",
                        {**template, "name": f"twin-{i}-{side}", "path": f"/twin/{i}"})
                       for side in ("a", "b")]
                verdicts = await asyncio.gather(fast(a, ops[0]), fast(b, ops[1]))
                assert sorted(v.ok for v in verdicts) == [False, True], verdicts
                refused = next(v for v in verdicts if not v.ok)
                assert refused.status == 422 and "the same method and path" in \
                    refused.problems[0][3], refused
            app = (await a.get("apps", "second-app")).body
            ops = [("create", "apps", f"key-twin-{side}",
                    {**app, "name": f"key-twin-{side}", "key": "one-key-for-two",
                     "app_codes": []}) for side in ("a", "b")]
            verdicts = await asyncio.gather(fast(a, ops[0]), fast(b, ops[1]))
            assert sorted(v.ok for v in verdicts) == [False, True], verdicts
            settings, resources = await whole_state(a)
            D.check(settings, resources, compile=False)
        finally:
            await a.close()
            if b is not a:
                await b.close()
    asyncio.run(main())
