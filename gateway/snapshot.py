"""Compile a configuration document into the immutable snapshot the data plane serves from.

The snapshot holds the router index and, per (API, environment), a :class:`CompiledApi` with
everything the hot path needs already resolved: variables substituted, backend address parsed,
the stage list built, the metrics child looked up.  Nothing on the hot path parses config or
scans a list.  A reload builds a whole new snapshot and swaps one reference; exchanges in flight
keep the CompiledApi they started with.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import re

import msgspec

from fastpath import RouteConflict, Router

from .auth.app import AppAuth, app_index
from .auth.custom import Authorizer, AuthorizerStage
from .auth.iam import IamAuth, IamIndex
from .backends.rewrite import RequestRewrite
from .policy.throttle import QuotaRule, QuotaStage, ThrottleRule, ThrottleStage
from .pipeline import HeldBody
from .policy.cors import Preflight, cors
from .policy.params import ParamCheck, forwards_defaults
from .policy.acl import AccountAcl, compile_acls
from .policy.iprules import IpSet
from .backends.conditional import ConditionalBackends
from .backends.http import BackendConfigError, HttpBackend
from .channels.plan import ChannelPlan
from .exchange import CompiledApi
from .backends.mock import MockBackend
from .config import ConfigError, Document
from .tls import backend_context, certificate_files, load_certificates, resolve_path

_VARIABLE = re.compile(r"#([A-Za-z][A-Za-z0-9_-]{2,31})#")
_TEMPLATE_PARAM = re.compile(r"\{([^}+]+)\+?\}")


def _body_digest(ex):
    """The stage of an API whose backend requests are signed: the signature covers the body's
    SHA-256, so a request body is held until it has arrived (unless a stage held it already)."""
    if (ex.chunked or ex.content_length > 0) and ex.body_digest is None:
        return HeldBody()
    return None


def _authorizers(doc, runtime, errors) -> dict:
    found = {}
    for i, config in enumerate(doc.authorizers):
        try:
            found[config.name] = Authorizer(config, runtime)
        except ValueError as exc:
            errors.append(f"authorizers[{i}].function: {exc}")
    return found


def _iam(doc, base_dir, errors):
    verifier = None
    if doc.iam.jwt is not None:
        from .auth.tokens import JwtVerifier    # (pyjwt is imported only when tokens are used)

        try:
            jwt_config = doc.iam.jwt
            verifier = JwtVerifier(jwt_config, base_dir,
                                   fetch_timeout_s=jwt_config.jwks_timeout_ms / 1000.0,
                                   min_refresh_interval_s=jwt_config.jwks_refresh_interval_s)
        except ValueError as exc:
            errors.extend(str(a) for a in exc.args)
    return IamIndex(doc.iam, verifier)


@contextlib.contextmanager
def paused_gc():
    """No cyclic collection while a document is loaded and compiled: the objects it makes are
    all alive until the snapshot is swapped, so a collection finds nothing to free, yet a
    10,000-API compile triggers dozens of them (half its time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Reuse:
    """What a later compile may take from this snapshot (see compile_snapshot's ``previous``):
    the digest of the document's sections other than APIs and groups, and the compiler
    (runtime and base directory) it was made with."""

    __slots__ = ("context", "runtime", "base_dir")

    def __init__(self, context, runtime, base_dir):
        self.context = context
        self.runtime = runtime
        self.base_dir = base_dir


class Snapshot:
    __slots__ = ("router", "apis", "version", "document", "certificates", "files", "trusted",
                 "channel_plans", "reuse", "reused")

    def __init__(self, router, apis, version, document, certificates=None, files=(),
                 trusted=None, channel_plans=(), reuse=None, reused=0):
        self.router = router
        self.apis = apis          # {(api name, env): CompiledApi}
        self.version = version    # content hash of the document: which config is live
        self.document = document
        self.certificates = certificates    # gateway.tls.CertificateStore, or None
        self.files = files        # the TLS files it read: a SIGHUP reloads when one changed
        self.trusted = trusted    # trusted_proxies (an IpSet), None when there are none
        self.channel_plans = channel_plans  # the channels' balancers (gateway.channels.plan)
        self.reuse = reuse        # a _Reuse, for the next compile
        self.reused = reused      # how many (API, environment) it took from the previous one


def document_version(doc: Document) -> str:
    return hashlib.sha256(msgspec.json.encode(doc)).hexdigest()[:12]


def _fingerprint(base, env, tls_files, base_dir, bound=(), tls=None) -> str:
    """What an API is made of in one environment: its definition and its group (variables,
    domains), digested once per API in ``base``; the environment and the contents of its
    backend's TLS files.  Open WebSocket tunnels compare it across reloads: one opened through
    an API that a reload changed or removed is closed after a grace; a reload reuses the
    compiled API when it did not change.  (Policies bound to an API belong here as they come to
    be served.)"""
    digest = base.copy()
    digest.update(env.encode())
    for policy in bound:        # (the signature key and authorizers the API uses there)
        digest.update(msgspec.json.encode(policy))
    if tls is not None:
        for value in (tls.ca_file, tls.client_cert, tls.client_key):
            if value is not None:
                digest.update(tls_files.get(resolve_path(value, base_dir), b""))
    return digest.hexdigest()[:16]


def _context(doc) -> str:
    """The digest of everything but the APIs and groups: what every compiled API may depend
    on besides its own definition, group and bound policies."""
    return hashlib.sha256(msgspec.json.encode(
        msgspec.structs.replace(doc, apis=(), groups=()))).hexdigest()


def _reusable(api) -> bool:
    """Whether an API's compiled form depends only on the document (then an unchanged
    fingerprint in an unchanged context means an equal CompiledApi): not on files read at
    compile time (TLS, IAM token keys), nor on objects the compile shares between APIs with
    state of their own (custom authorizers, channels' balancers)."""
    if api.auth in ("iam", "custom") or api.backend.authorizer is not None:
        return False
    for backend in (api.backend, *(cb.backend for cb in api.conditional_backends)):
        if backend.channel is not None or backend.tls is not None or (
                backend.url is not None and backend.url.startswith("https://")):
            return False
    return True


def compile_snapshot(doc: Document, runtime=None, base_dir: str = ".",
                     previous: Snapshot | None = None) -> Snapshot:
    """Build the snapshot; ``runtime`` (the worker) is None when only validating; relative
    file paths in the document (certificates) are read from ``base_dir``.

    ``previous``, the snapshot this one replaces (compiled with the same runtime and base
    directory): when the document's sections other than APIs and groups are unchanged, the
    CompiledApi of an API whose fingerprint is unchanged is taken from it instead of being
    built again (the router is always built anew).

    Raises ConfigError naming the path of every problem found.
    """
    with paused_gc():
        return _compile(doc, runtime, base_dir, previous)


def _compile(doc, runtime, base_dir, previous):
    errors = []
    # https backends with the same settings and files share one client context, kept by the
    # worker across reloads while they stay the same (so are its pooled connections)
    tls_contexts = runtime.tls_contexts if runtime is not None else {}
    used_contexts = set()
    tls_files = {}          # path -> digest of the backend TLS files read
    certificates = None
    if doc.certificates:
        try:
            certificates = load_certificates(doc.certificates, base_dir)
        except ValueError as exc:
            errors.extend(exc.args)
    groups = {g.name: g for g in doc.groups}
    app_keys = app_index(doc.apps)
    authorizers = _authorizers(doc, runtime, errors)
    iam = _iam(doc, base_dir, errors) if any(a.auth == "iam" for a in doc.apis) else None
    signature_keys = {k.name: k for k in doc.signature_keys}
    metrics = runtime.metrics if runtime is not None else None
    counters = runtime.counters if runtime is not None else None
    budgets = runtime.budgets if runtime is not None else None
    throttles = {t.name: t for t in doc.throttles}
    quota_rules = {q.name: QuotaRule(q) for q in doc.app_quotas}
    app_quotas = {a.name: quota_rules[a.quota] for a in doc.apps if a.quota in quota_rules}
    quota_stage = (QuotaStage(app_quotas, counters, metrics, budgets) if app_quotas else None)
    acls = compile_acls(doc.acls, metrics)     # (once: shared by the APIs bound to each)
    acl_configs = {a.name: a for a in doc.acls}
    channels = {c.name: c for c in doc.channels}
    authorizer_configs = {a.name: (i, a) for i, a in enumerate(doc.authorizers)}
    plans = {}          # (channel, TLS settings) -> ChannelPlan, shared by the APIs using it
    context = _context(doc)
    reuse = previous.reuse if previous is not None else None
    old_apis = (previous.apis if reuse is not None and reuse.context == context
                and reuse.runtime is runtime and reuse.base_dir == base_dir else None)
    reused = 0
    # an API equal to the previous document's of its name, in an equal group, compiles to what
    # it compiled to then (the rest of the document is equal): taken without a fingerprint
    same_api = ({a.name: a for a in previous.document.apis} if old_apis is not None else {})
    same_group = ({g.name: g for g in previous.document.groups} if old_apis is not None else {})
    router = Router(previous.router if previous is not None else None)
    apis = {}
    owner = {}
    group_json = {}
    for index, api in enumerate(doc.apis):
        where = f"apis[{index}]"
        group = groups.get(api.group)
        if group is None:
            errors.append(f"{where}.group: unknown group {api.group!r}")
            continue
        hosts = tuple(sorted({d.lower().rstrip(".") for d in group.domains}))
        if (old_apis is not None and same_api.get(api.name) == api
                and same_group.get(api.group) == group and _reusable(api)):
            kept = [old_apis.get((api.name, env)) for env in api.environments]
            if None not in kept:
                reused += len(kept)
                for env, compiled in zip(api.environments, kept):
                    if not _route(router, errors, where, env, hosts, api, compiled, apis, owner,
                                  index):
                        break
                continue
        # what does not depend on the environment, once per API
        encoded_group = group_json.get(api.group)
        if encoded_group is None:
            encoded_group = group_json[api.group] = msgspec.json.encode(group)
        base = hashlib.sha256(msgspec.json.encode(api))
        base.update(encoded_group)
        backends = (api.backend, *(cb.backend for cb in api.conditional_backends))
        bound_authorizers = tuple(a for _i, a in sorted(
            authorizer_configs[name] for name in {api.authorizer, api.backend.authorizer}
            if name in authorizer_configs))
        bound_channels = tuple(channels[b.channel] for b in backends if b.channel in channels)
        reusable = old_apis is not None and _reusable(api)
        rewrites = _Rewrites(api)
        for env, binding in api.environments.items():
            signature_key = (signature_keys.get(binding.signature_key)
                             if binding.signature_key is not None else None)
            throttle = throttles.get(binding.throttle) if binding.throttle is not None else None
            fingerprint = _fingerprint(base, env, tls_files, base_dir,
                                       (signature_key, throttle, acl_configs.get(binding.acl),
                                        *bound_authorizers, *bound_channels))
            compiled = old_apis.get((api.name, env)) if reusable else None
            if compiled is not None and compiled.fingerprint == fingerprint:
                reused += 1
                _route(router, errors, where, env, hosts, api, compiled, apis, owner, index)
                continue
            try:
                handler = _backend(api, env, group, runtime, base_dir, tls_contexts,
                                   f"{where}.backend", used_contexts, tls_files,
                                   rewrites.of(api.backend, signature_key), channels, plans)
                conditional = [_backend(api, env, group, runtime, base_dir, tls_contexts,
                                        f"{where}.conditional_backends[{j}].backend",
                                        used_contexts, tls_files,
                                        rewrites.of(cb.backend, signature_key), channels,
                                        plans, cb.backend)
                               for j, cb in enumerate(api.conditional_backends)]
            except BackendConfigError as exc:
                errors.append(f"{where}.backend: {exc} (environment {env})")
                continue
            except ValueError as exc:      # the backend's TLS files: the errors name their fields
                errors.extend(e for e in exc.args if e not in errors)
                continue
            stats = runtime.metrics.api_stats(api.name, env) if runtime is not None else None
            # the stage order: cors, acl (ip), authenticate, acl (account), throttle, quota,
            # params, then what the backend call needs
            stages = [cors] if api.cors else []
            acl = acls.get(binding.acl) if binding.acl is not None else None
            if acl is not None and acl.__class__ is not AccountAcl:
                stages.append(acl)          # (an IP ACL: before authentication and the body)
            if api.auth == "app":
                stages.append(AppAuth(app_keys, frozenset(binding.apps), api.name,
                                      api.app_code_auth, api.app_api_key, metrics))
            elif api.auth == "iam":
                stages.append(IamAuth(iam, api.name, metrics,
                                      doc.iam.jwt.jwks_timeout_ms / 1000.0
                                      if doc.iam.jwt is not None else 3.0))
            elif api.auth == "custom" and api.authorizer in authorizers:
                stages.append(AuthorizerStage(authorizers[api.authorizer], api.name, metrics))
            if acl is not None and acl.__class__ is AccountAcl:
                stages.append(acl)          # (right after authentication: it needs the caller)
            if throttle is not None:
                stages.append(ThrottleStage(ThrottleRule(throttle, api.name, env), counters,
                                            metrics, budgets))
            if quota_stage is not None and api.auth == "app":
                stages.append(quota_stage)
            if api.params:
                check = ParamCheck.of(api.params)
                if check is not None:
                    stages.append(check)
            if signature_key is not None and (api.backend.type == "http" or any(
                    cb.backend.type == "http" for cb in api.conditional_backends)):
                stages.append(_body_digest)
            if conditional:         # (after the parameters: conditions read their defaults)
                stages.append(ConditionalBackends.build(api, conditional, metrics, env))
            if api.backend.authorizer in authorizers:   # (last: just before the backend call)
                stages.append(AuthorizerStage(authorizers[api.backend.authorizer], api.name,
                                              metrics))
            stages = tuple(stages)
            if api.backend.tls is not None:     # (its files were read by _backend)
                fingerprint = _fingerprint(base, env, tls_files, base_dir,
                                           (signature_key, throttle,
                                            acl_configs.get(binding.acl), *bound_authorizers,
                                            *bound_channels), api.backend.tls)
            compiled = CompiledApi(api.name, env, api.group, handler, stages, stats, fingerprint)
            if api.cors:
                # a preflight needs no credentials, but an address the API's IP ACL refuses
                # is refused here too (it would learn the API's methods and headers)
                ip_acl = (acl,) if acl is not None and acl.__class__ is not AccountAcl else ()
                compiled.preflight = CompiledApi(api.name, env, api.group,
                                                 Preflight(api.method), ip_acl, stats,
                                                 compiled.fingerprint)
            if not _route(router, errors, where, env, hosts, api, compiled, apis, owner, index):
                break
    if errors:
        raise ConfigError(errors)
    router.freeze()
    for key in [k for k in tls_contexts if k not in used_contexts]:
        del tls_contexts[key]       # (contexts of settings no longer used)
    version = document_version(doc)
    if certificates is not None or tls_files:   # the same document with renewed files is new
        digest = hashlib.sha256(version.encode())
        if certificates is not None:
            digest.update(certificates.digest)
        for path in sorted(tls_files):
            digest.update(tls_files[path])
        version = digest.hexdigest()[:12]
    files = tuple(certificate_files(doc.certificates, base_dir)) + tuple(sorted(tls_files))
    trusted = IpSet(doc.trusted_proxies) if doc.trusted_proxies else None
    return Snapshot(router, apis, version, doc, certificates, files, trusted,
                    tuple(plans.values()), _Reuse(context, runtime, base_dir), reused)


def _route(router, errors, where, env, hosts, api, compiled, apis, owner, index) -> bool:
    """Add the route of ``compiled``; False when the API's path is invalid (its other
    environments are not tried)."""
    try:
        router.add(env, hosts, api.method, api.path, api.match_mode, compiled)
    except RouteConflict as exc:
        other = exc.first
        errors.append(f"{where}.path: {api.method} {api.path} conflicts with API "
                      f"{other.name!r} in environment {env}")
        return True
    except ValueError as exc:
        errors.append(f"{where}.path: {exc}")
        return False
    apis[(api.name, env)] = compiled
    owner[(api.name, env)] = index
    return True


def _digests(base_dir, seen, *values) -> bytes:
    """A digest of the files ``values`` name (None: no file), recorded in ``seen``."""
    out = hashlib.sha256()
    for value in values:
        if value is None:
            continue
        path = resolve_path(value, base_dir)
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).digest()
        except OSError:
            digest = b"unreadable"      # (backend_context reports it, naming the field)
        if seen is not None:
            seen[path] = digest
        out.update(digest)
    return out.digest()


class _Rewrites:
    """The backend parameters and signature of an API's backends (None: the head is built as
    is); what does not depend on the environment is worked out once per API."""

    __slots__ = ("api", "defaults", "names")

    def __init__(self, api):
        self.api = api
        self.defaults = forwards_defaults(api.params) if api.params else False
        self.names = None

    def of(self, backend, signature_key):
        if backend.params or signature_key is not None or self.defaults:
            if self.names is None:
                self.names = _TEMPLATE_PARAM.findall(self.api.path)
            return RequestRewrite(backend.params, self.api.params, self.names, signature_key)
        return None


def _backend(api, env, group, runtime, base_dir=".", tls_contexts=None, where="backend",
             used_contexts=None, tls_files=None, rewrite=None, channels=None, plans=None,
             backend=None):
    """The handler of ``backend`` (the API's own when None) for ``api`` in ``env``."""
    if backend is None:
        backend = api.backend
    if backend.type == "mock":
        mock = backend.mock
        if mock is None:
            raise BackendConfigError("a mock backend needs 'mock'")
        return MockBackend(mock.status, {k: v for k, v in mock.headers.items() if not (
            api.cors and k.lower().startswith("access-control-"))}, mock.body)   # (CORS sets them)
    if backend.type == "http":
        if backend.url is None and backend.channel is None:
            raise BackendConfigError("an http backend needs 'url' or 'channel'")
        variables = group.variables.get(env, {})

        def substitute(match):
            name = match.group(1)
            if name not in variables:
                raise BackendConfigError(f"variable #{name}# is not defined for environment {env}")
            return variables[name]

        url = _VARIABLE.sub(substitute, backend.url or backend.path or "/")
        method = backend.method or api.method
        tls_context = None
        # a channel's members are called over TLS when the backend has tls settings
        if url.startswith("https://") or (backend.channel is not None and backend.tls is not None):
            tls = backend.tls
            settings = (None if tls is None else
                        (tls.verify, tls.ca_file, tls.client_cert, tls.client_key,
                         _digests(base_dir, tls_files, tls.ca_file, tls.client_cert,
                                  tls.client_key)))
            cache = tls_contexts if tls_contexts is not None else {}
            tls_context = cache.get(settings)
            if tls_context is None:
                tls_context = cache[settings] = backend_context(tls, base_dir, f"{where}.tls")
            if used_contexts is not None:
                used_contexts.add(settings)
        plan = None
        if backend.channel is not None:
            server_name = backend.tls.server_name if backend.tls else None
            plan_key = (backend.channel, tls_context, server_name)
            plan = plans.get(plan_key) if plans is not None else None
            if plan is None:
                plan = ChannelPlan(channels[backend.channel],
                                   runtime.pool if runtime is not None else None, tls_context,
                                   server_name,
                                   runtime.health_table if runtime is not None else None,
                                   runtime.metrics if runtime is not None else None)
                if plans is not None:
                    plans[plan_key] = plan
        return HttpBackend(runtime, url, method, backend.timeout_ms, backend.retries,
                           backend.host_header, prefix=api.match_mode == "prefix",
                           tls_context=tls_context,
                           server_name=backend.tls.server_name if backend.tls else None,
                           websocket_idle_ms=backend.websocket_idle_timeout_ms,
                           rewrite=rewrite, channel=plan)
    raise BackendConfigError(f"backend type {backend.type!r} is not supported in this version")
