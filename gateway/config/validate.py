"""Semantic validation of a decoded :class:`Document`: what needs more than one Struct to check.

``validate(doc)`` returns every problem found as a ``"path: message"`` line (empty when the document
can be served): unique names, references between resources, environment variables, path templates
and backend urls, route conflicts, policy constraints, and -- in :func:`_refuse_unsupported`, kept
apart on purpose -- the features of the contract this version does not implement.
"""
from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from .model import HOSTNAME_PATTERN as MODEL_HOSTNAME
from .model import (
    RELEASE,
    VARIABLE_PATTERN,
    Acl,
    Api,
    Backend,
    Channel,
    Condition,
    Document,
    Group,
    Param,
    SqlDestination,
    Throttle,
)

__all__ = ["validate", "warnings"]

_VARIABLE = re.compile(VARIABLE_PATTERN)
#: ``#name#`` references in a backend url or path (names checked separately, to say what is wrong)
_VARIABLE_REF = re.compile(r"#([^#/?{}\s]*)#")
#: ``{name}`` / ``{name+}`` in a path template or backend path
_PARAM_REF = re.compile(r"\{([^{}]*)\}")
#: a path parameter name (as the router takes it: fastpath.router)
_PATH_PARAM = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
_PARAM_NAME = re.compile(rf"({_PATH_PARAM})(\+?)")
_TEMPLATE_PARAM = re.compile(rf"\{{({_PATH_PARAM})(\+?)\}}")
#: a literal path segment: RFC 3986 pchar, percent-escapes included
_PCHAR = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_HTTP_CODES = re.compile(r"\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*")
_CONTEXT_KEY = r"[A-Za-z][A-Za-z0-9_-]{0,31}"
_SYSTEM_VALUES = re.compile(
    r"\$context\.(sourceIp|stage|apiId|apiName|appId|appName|requestId"
    r"|userName|userId|user|accountName|accountId|account|domainName"
    rf"|authorizer\.(frontend|backend)\.{_CONTEXT_KEY})")
#: headers of a mock answer that the gateway sets itself (framing): allowing them would break it
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                              "upgrade", "te", "trailer", "proxy-connection"})
#: headers the gateway writes itself on backend requests (a parameter must not replace them)
_GATEWAY_HEADERS = frozenset({"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                              "x-request-id"})
_DATASOURCE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
#: the largest limit a throttle or quota may set (counts are kept in 32 bits per window)
MAX_LIMIT = 2_000_000_000


def validate(doc: Document, previous: Document | None = None) -> list[str]:
    """Every semantic problem of ``doc`` as ``"path: message"`` lines, in document order.

    ``previous``: a document validated before without a problem.  When every section but the
    APIs is equal in both, an API equal to the one of its name there is not checked again on
    its own (its checks read only itself and those sections); the rules across APIs (names,
    routes) still run over all of them."""
    unchanged = _unchanged(doc, previous) if previous is not None else ()
    return _Validator(doc, unchanged).run()


def _unchanged(doc: Document, previous: Document) -> frozenset[int] | tuple:
    """The indexes of ``doc``'s APIs equal to ``previous``'s of the same name, when nothing
    but APIs differs between the two documents (else none)."""
    if msgspec.structs.replace(doc, apis=()) != msgspec.structs.replace(previous, apis=()):
        return ()
    before = {api.name: api for api in previous.apis}
    return frozenset(i for i, api in enumerate(doc.apis) if before.get(api.name) == api)


def warnings(doc: Document) -> list[str]:
    """What a valid ``doc`` serves that is probably not what its author meant, as
    ``"path: message"`` lines: logged when a gateway loads it, printed by ``tollgate validate``."""
    found = []
    for i, api in enumerate(doc.apis):
        if not api.environments:
            found.append(f"apis[{i}].environments: API '{api.name}' is published in no environment, "
                         "so it answers no request (add RELEASE: {{}} to serve it)")
        b = api.backend
        if (b.tls is not None and b.url is not None and not b.url.startswith("https://")
                and b.tls != type(b.tls)()):
            found.append(f"apis[{i}].backend.tls: not used: the backend url is not https://")
    return found


_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@functools.lru_cache(maxsize=1024)
def _key(key: str) -> str:
    """A dict key as a path step: ``.TEST`` or ``["content type"]``."""
    return f".{key}" if _KEY_NAME.fullmatch(key) else f'["{key}"]'


class _Validator:
    def __init__(self, doc: Document, unchanged=()):
        self.doc = doc
        self.unchanged = unchanged      # indexes of APIs checked already (see validate)
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def unique(self, kind: str, items: Iterable[Any], attr: str = "name") -> dict[str, int]:
        """name -> index of the first item with it; later duplicates are errors."""
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            name = getattr(item, attr)
            if name is None:
                continue
            if name in seen:
                self.error(f"{kind}[{i}].{attr}", f"duplicate {attr} '{name}'")
            else:
                seen[name] = i
        return seen

    def ref(self, path: str, kind: str, name: str | None, names: Iterable[str]) -> bool:
        if name is None or name in names:
            return True
        self.error(path, f"unknown {kind} '{name}'")
        return False

    # ----------------------------------------------------------------------------------------------

    def run(self) -> list[str]:
        doc = self.doc
        self.envs = {RELEASE: -1} | self.unique("environments", doc.environments)
        self.apps = self.unique("apps", doc.apps)
        self.groups = self.unique("groups", doc.groups)
        self.channels = self.unique("channels", doc.channels)
        self.authorizers = self.unique("authorizers", doc.authorizers)
        self.throttles = self.unique("throttles", doc.throttles)
        self.acls = self.unique("acls", doc.acls)
        self.signature_keys = self.unique("signature_keys", doc.signature_keys)
        self.apis = self.unique("apis", doc.apis)
        self.datasources = self.unique("datasources", doc.datasources)
        self.products = self.unique("products", doc.products)
        self.devices = self.unique("devices", doc.devices)
        self.unique("rules", doc.rules)
        self.app_quotas = self.unique("app_quotas", doc.app_quotas)

        self.check_apps()
        self.check_iam()
        self.check_edge()
        self.check_groups()
        for i, channel in enumerate(doc.channels):
            self.check_channel(f"channels[{i}]", channel)
        self.check_authorizers()
        for i, quota in enumerate(doc.app_quotas):
            if quota.limit > MAX_LIMIT:
                self.error(f"app_quotas[{i}].limit", f"must not exceed {MAX_LIMIT}")
        for i, throttle in enumerate(doc.throttles):
            self.check_throttle(f"throttles[{i}]", throttle)
        for i, acl in enumerate(doc.acls):
            self.check_acl(f"acls[{i}]", acl)
        for i, ds in enumerate(doc.datasources):
            scheme = ds.url.partition("://")[0] if "://" in ds.url else ""
            if scheme not in _DATASOURCE_SCHEMES:
                self.error(f"datasources[{i}].url", "expected a url starting with "
                           + ", ".join(f"{s}://" for s in _DATASOURCE_SCHEMES))
        unchanged = self.unchanged
        for i, api in enumerate(doc.apis):
            if i not in unchanged:
                self.check_api(f"apis[{i}]", api)
        self.check_routes()
        self.check_devices()
        _refuse_unsupported(doc, self.error)
        return self.errors

    # ----------------------------------------------------------------------------------------------
    # Callers

    def check_apps(self) -> None:
        keys: dict[str, int] = {}
        codes: dict[str, int] = {}
        for i, app in enumerate(self.doc.apps):
            if app.key is not None:
                if app.key in keys:  # the key identifies the app in a signature
                    self.error(f"apps[{i}].key", f"the same key as apps[{keys[app.key]}]")
                keys.setdefault(app.key, i)
            for j, code in enumerate(app.app_codes):
                if code in codes:
                    self.error(f"apps[{i}].app_codes[{j}]",
                               f"the same app code as apps[{codes[code]}]")
                codes.setdefault(code, i)
            if app.acl is not None:
                for j, value in enumerate(app.acl.values):
                    self.check_ip_value(f"apps[{i}].acl.values[{j}]", value)
            self.ref(f"apps[{i}].quota", "app quota", app.quota, self.app_quotas)

    def check_iam(self) -> None:
        iam = self.doc.iam
        self.unique("iam.users", iam.users)
        self.unique("iam.users", iam.users, "access_key")
        jwt = iam.jwt
        if jwt is not None:
            if not jwt.keys and jwt.keys_file is None and jwt.jwks_url is None:
                self.error("iam.jwt", "give keys, keys_file or jwks_url to check tokens with")
            if jwt.jwks_url is not None and not re.match(r"https?://[^/\s]", jwt.jwks_url):
                self.error("iam.jwt.jwks_url", "expected a url starting with http:// or https://")

    def check_edge(self) -> None:
        """trusted_proxies and certificates: what faces the clients."""
        for i, value in enumerate(self.doc.trusted_proxies):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                self.error(f"trusted_proxies[{i}]", f"expected an IP address or a CIDR, got '{value}'")
        certs = self.doc.certificates
        self.unique("certificates", certs)
        owners: dict[str, int] = {}
        default = None
        for i, cert in enumerate(certs):
            if cert.default:
                if default is not None:
                    self.error(f"certificates[{i}].default",
                               f"certificates[{default}] is already the default")
                default = i
            for j, domain in enumerate(cert.domains):
                name = domain.lower().rstrip(".")
                bare = name[2:] if name.startswith("*.") else name
                if not re.fullmatch(MODEL_HOSTNAME, bare):
                    self.error(f"certificates[{i}].domains[{j}]", "expected a host name, optionally "
                               "with a leading '*.' (a wildcard for one label)")
                elif name in owners:
                    self.error(f"certificates[{i}].domains[{j}]", f"domain '{domain}' is already "
                               f"served by certificates[{owners[name]}]")
                owners.setdefault(name, i)

    # ----------------------------------------------------------------------------------------------
    # Groups, channels, authorizers, policies

    def check_groups(self) -> None:
        domains: dict[str, int] = {}
        for i, group in enumerate(self.doc.groups):
            p = f"groups[{i}]"
            for j, domain in enumerate(group.domains):
                if domain in domains:
                    owner = domains[domain]
                    where = "this group" if owner == i else f"group '{self.doc.groups[owner].name}'"
                    self.error(f"{p}.domains[{j}]", f"domain '{domain}' already used by {where}")
                else:
                    domains[domain] = i
            for env, variables in group.variables.items():
                vp = f"{p}.variables{_key(env)}"
                self.ref(vp, "environment", env, self.envs)
                for name, value in variables.items():
                    if not _VARIABLE.fullmatch(name):
                        self.error(f"{vp}{_key(name)}", f"invalid variable name '{name}' (3-32 "
                                   "characters: a letter, then letters, digits, '_' or '-')")
                    if not value or any(c.isspace() or not c.isprintable() or c in "#{}"
                                        for c in value):
                        self.error(f"{vp}{_key(name)}", "a variable value is a non-empty part of a "
                                   "host or path: no spaces, control characters, '#', '{' or '}'")

    def check_channel(self, p: str, channel: Channel) -> None:
        groups = self.unique(f"{p}.member_groups", channel.member_groups)
        if len(channel.members) > MAX_CHANNEL_MEMBERS:
            self.error(f"{p}.members", f"at most {MAX_CHANNEL_MEMBERS} members, not "
                                      f"{len(channel.members)}")
        seen: dict[tuple[str, int], int] = {}
        for j, member in enumerate(channel.members):
            mp = f"{p}.members[{j}]"
            self.ref(f"{mp}.group", "member group", member.group, groups)
            if member.host.startswith("["):
                self.error(f"{mp}.host", f"write an IPv6 address without brackets "
                                         f"('{member.host.strip('[]')}'; the port is apart)")
            elif not _is_host(member.host):
                self.error(f"{mp}.host", f"invalid host '{member.host}'")
            address = (member.host.lower(), member.port or channel.port)
            if address in seen:
                self.error(mp, f"the same host and port as {p}.members[{seen[address]}]")
            seen.setdefault(address, j)
        hc = channel.health_check
        if hc is not None:
            if hc.timeout_s >= hc.interval_s:
                self.error(f"{p}.health_check.timeout_s", "must be less than interval_s")
            if not _HTTP_CODES.fullmatch(hc.http_codes) or any(
                    not 100 <= int(c) <= 599 for c in re.findall(r"\d+", hc.http_codes)):
                self.error(f"{p}.health_check.http_codes",
                           "expected codes 100-599 like '200,201' or '200-299'")

    def check_authorizers(self) -> None:
        for i, auth in enumerate(self.doc.authorizers):
            p = f"authorizers[{i}]"
            if (auth.url is None) == (auth.function is None):
                self.error(p, "give url or function (one of them)")
            if auth.url is not None and not re.match(r"https?://[^/\s]", auth.url):
                self.error(f"{p}.url", "expected a url starting with http:// or https://")
            self.unique(f"{p}.identities", auth.identities)
            if auth.ttl_s > 0 and not auth.identities:
                self.error(f"{p}.identities", "a cached authorizer (ttl_s > 0) needs identities "
                           "(they are the cache key)")
            for j, identity in enumerate(auth.identities):
                if identity.validation is not None:
                    try:
                        re.compile(identity.validation)
                    except re.error as exc:
                        self.error(f"{p}.identities[{j}].validation",
                                   f"invalid regular expression: {exc}")

    def check_throttle(self, p: str, t: Throttle) -> None:
        for name in ("api_limit", "user_limit", "app_limit", "ip_limit"):
            value = getattr(t, name)
            if value is not None and value > MAX_LIMIT:
                self.error(f"{p}.{name}", f"must not exceed {MAX_LIMIT}")
        for j, special in enumerate(t.specials):
            if special.limit > MAX_LIMIT:
                self.error(f"{p}.specials[{j}].limit", f"must not exceed {MAX_LIMIT}")
        if t.user_limit is not None and t.user_limit > t.api_limit:
            self.error(f"{p}.user_limit", "must not exceed api_limit")
        if t.app_limit is not None:
            if t.user_limit is not None and t.app_limit > t.user_limit:
                self.error(f"{p}.app_limit", "must not exceed user_limit")
            elif t.app_limit > t.api_limit:
                self.error(f"{p}.app_limit", "must not exceed api_limit")
        if t.ip_limit is not None and t.ip_limit > t.api_limit:
            self.error(f"{p}.ip_limit", "must not exceed api_limit")
        seen: set[tuple[str, str]] = set()
        for j, special in enumerate(t.specials):
            sp = f"{p}.specials[{j}]"
            if (special.app is None) == (special.user is None):
                self.error(sp, "give app or user (one of them)")
                continue
            self.ref(f"{sp}.app", "app", special.app, self.apps)
            who = ("app", special.app) if special.app is not None else ("user", special.user or "")
            if who in seen:
                self.error(sp, f"a second special for {who[0]} '{who[1]}'")
            seen.add(who)
            if special.limit > t.api_limit:
                self.error(f"{sp}.limit", "must not exceed api_limit")

    def check_acl(self, p: str, acl: Acl) -> None:
        seen: set[str] = set()
        for j, value in enumerate(acl.values):
            if acl.entity == "ip":
                self.check_ip_value(f"{p}.values[{j}]", value)
                continue
            # account names are matched exactly: a blank around one would never match
            if value != value.strip():
                self.error(f"{p}.values[{j}]", f"an account name has no leading or trailing "
                                               f"blanks, got '{value}'")
            if value in seen:
                self.error(f"{p}.values[{j}]", f"account '{value}' listed twice")
            seen.add(value)

    def check_ip_value(self, path: str, value: str) -> None:
        """An address, a range ``a-b`` or a CIDR."""
        try:
            if "/" in value:
                ipaddress.ip_network(value, strict=False)
            elif "-" in value:
                low, high = (ipaddress.ip_address(v.strip()) for v in value.split("-", 1))
                if low.version != high.version or low > high:
                    raise ValueError
            else:
                ipaddress.ip_address(value)
        except ValueError:
            self.error(path, f"expected an IP address, a range 'a-b' or a CIDR, got '{value}'")

    # ----------------------------------------------------------------------------------------------
    # APIs

    def check_api(self, p: str, api: Api) -> None:
        group = None
        if self.ref(f"{p}.group", "group", api.group, self.groups):
            group = self.doc.groups[self.groups[api.group]]
        if api.auth == "iam" and not self.doc.iam.users and self.doc.iam.jwt is None:
            self.error(f"{p}.auth", "auth: iam needs IAM callers: iam.users (AK/SK) or iam.jwt "
                                    "(tokens)")
        if self.ref(f"{p}.authorizer", "authorizer", api.authorizer, self.authorizers):
            if api.auth == "custom":
                if api.authorizer is None:
                    self.error(f"{p}.authorizer", "auth: custom needs an authorizer")
                elif self.doc.authorizers[self.authorizers[api.authorizer]].type != "frontend":
                    self.error(f"{p}.authorizer", "auth: custom needs a frontend authorizer")
        template_params = self.check_path_template(f"{p}.path", api.path)
        if api.cors and api.method == "OPTIONS":
            self.error(f"{p}.cors", "an OPTIONS API answers preflights itself (cors applies to "
                                    "the APIs of other methods: the gateway answers their "
                                    "preflights)")
        self.check_params(p, api, template_params)
        for env, binding in api.environments.items():
            bp = f"{p}.environments{_key(env)}"
            self.ref(bp, "environment", env, self.envs)
            self.ref(f"{bp}.throttle", "throttle", binding.throttle, self.throttles)
            if (self.ref(f"{bp}.acl", "acl", binding.acl, self.acls) and binding.acl is not None
                    and self.doc.acls[self.acls[binding.acl]].entity == "account"
                    and api.auth != "iam"):
                self.error(f"{bp}.acl", f"account ACL '{binding.acl}' applies to APIs with "
                                        f"auth: iam (only IAM callers have an account)")
            self.ref(f"{bp}.signature_key", "signature key", binding.signature_key,
                     self.signature_keys)
            seen: set[str] = set()
            for j, app in enumerate(binding.apps):
                self.ref(f"{bp}.apps[{j}]", "app", app, self.apps)
                if app in seen:
                    self.error(f"{bp}.apps[{j}]", f"app '{app}' listed twice")
                seen.add(app)
        self.check_backend(f"{p}.backend", api, api.backend, group, template_params)
        self.unique(f"{p}.conditional_backends", api.conditional_backends)
        for j, cond in enumerate(api.conditional_backends):
            cp = f"{p}.conditional_backends[{j}]"
            for k, condition in enumerate(cond.conditions):
                self.check_condition(f"{cp}.conditions[{k}]", condition)
            self.check_backend(f"{cp}.backend", api, cond.backend, group, template_params)

    def check_condition(self, p: str, c: Condition) -> None:
        listed = isinstance(c.value, tuple)
        if c.source == "source_ip":
            if c.op != "cidr":
                self.error(f"{p}.op", "a source_ip condition takes op: cidr")
            elif listed:
                self.error(f"{p}.value", "expected one CIDR")
            else:
                try:
                    ipaddress.ip_network(c.value, strict=False)
                except ValueError:
                    self.error(f"{p}.value", f"expected a CIDR, got '{c.value}'")
            if c.name is not None:
                self.error(f"{p}.name", "not used by source_ip conditions")
            return
        if c.name is None:
            self.error(f"{p}.name", f"a {c.source} condition names the parameter it reads")
        elif c.source == "system" and not _SYSTEM_VALUES.fullmatch(c.name):
            self.error(f"{p}.name", f"unknown system value '{c.name}'")
        if c.op == "cidr":
            self.error(f"{p}.op", "op: cidr is for source_ip conditions")
        elif c.op == "enum":
            if not listed or not c.value:
                self.error(f"{p}.value", "op: enum takes a non-empty list of values")
        elif listed:
            self.error(f"{p}.value", f"op: {c.op} takes one value")
        elif c.op == "pattern":
            try:
                re.compile(c.value)
            except re.error as exc:
                self.error(f"{p}.value", f"invalid regular expression: {exc}")

    def check_path_template(self, p: str, path: str) -> dict[str, bool]:
        """Check an API path template; return its parameters (name -> greedy ``{x+}``)."""
        params: dict[str, bool] = {}
        if "?" in path or "#" in path:
            self.error(p, "a path has no '?' or '#' (query parameters are params)")
            return params
        segments = path[1:].split("/")
        last = len(segments) - 1
        for i, segment in enumerate(segments):
            if segment == "" and i != last:
                self.error(p, "empty path segment ('//')")
            elif _normal_segment(segment) in (".", ".."):
                self.error(p, f"'{segment}' is not allowed as a path segment")
            elif "{" in segment or "}" in segment:
                m = _TEMPLATE_PARAM.fullmatch(segment)
                if not m:
                    self.error(p, f"a parameter is a whole segment written {{name}} or {{name+}}, "
                               f"got '{segment}'")
                    continue
                name, greedy = m.group(1), bool(m.group(2))
                if greedy and i != last:
                    self.error(p, f"{{{name}+}} must be the last segment")
                if name in params:
                    self.error(p, f"parameter '{name}' appears twice")
                params[name] = greedy
            elif not _PCHAR.fullmatch(segment) or "%00" in segment:
                self.error(p, f"invalid character in path segment '{segment}'")
        return params

    def check_params(self, p: str, api: Api, template_params: dict[str, bool]) -> None:
        seen: dict[tuple[str, str], int] = {}
        for j, param in enumerate(api.params):
            pp = f"{p}.params[{j}]"
            key = (param.location, param.name.lower() if param.location == "header" else param.name)
            if key in seen:
                self.error(f"{pp}.name", f"duplicate {param.location} parameter '{param.name}'")
            seen.setdefault(key, j)
            if param.location == "path" and param.name not in template_params:
                self.error(f"{pp}.name", f"'{param.name}' is not a parameter of path '{api.path}'")
            number = param.type == "number"
            values = [("default", param.default)] if param.default is not None else []
            values += [(f"enum[{k}]", v) for k, v in enumerate(param.enum)]
            for where, value in values:
                if number != (isinstance(value, (int, float)) and not isinstance(value, bool)):
                    self.error(f"{pp}.{where}", f"expected a {param.type}")
            if param.min is not None and param.max is not None and param.min > param.max:
                self.error(f"{pp}.min", "must not exceed max")
            if not number:
                for bound in ("min", "max"):
                    value = getattr(param, bound)
                    if value is not None and (not isinstance(value, int) or value < 0):
                        self.error(f"{pp}.{bound}", "a string's length bound is an integer >= 0")
            self.check_param_values(pp, param, values)

    def check_param_values(self, pp: str, param: Param, values: list) -> None:
        """A default and enum values a request could never pass, a default that cannot be."""
        number = param.type == "number"
        for where, value in values:
            if number != (isinstance(value, (int, float)) and not isinstance(value, bool)):
                continue                        # (reported as not of the type)
            if number and not _finite(value):
                self.error(f"{pp}.{where}", "must be a finite number")
                continue
            size = value if number else len(value)
            what = "value" if number else "length"
            if param.min is not None and size < param.min:
                self.error(f"{pp}.{where}", f"{what} {size} is below min {param.min}")
            elif param.max is not None and size > param.max:
                self.error(f"{pp}.{where}", f"{what} {size} is above max {param.max}")
            elif where == "default" and param.enum and value not in param.enum:
                self.error(f"{pp}.default", "must be one of enum")
        if param.default is None:
            return
        if param.location == "path":
            self.error(f"{pp}.default", "a path parameter is always present (no default)")
        elif param.required:
            self.error(f"{pp}.default", "a required parameter has no default")
        elif param.location == "header" and (
                param.name.lower() in _FRAMING_HEADERS | _GATEWAY_HEADERS | {"x-stage"}
                or not _HEADER_NAME.fullmatch(param.name)):
            self.error(f"{pp}.default", f"'{param.name}' cannot be set by a default (a framing "
                       "field, one the gateway sets, or not a header name)")
        if isinstance(param.default, str) and any(c in param.default for c in "\r\n\0"):
            self.error(f"{pp}.default", "a default has no CR, LF or NUL")

    def check_backend(self, p: str, api: Api, b: Backend, group: Group | None,
                      template_params: dict[str, bool]) -> None:
        used = {"http": ("url", "channel", "path", "host_header"), "mock": ("mock",),
                "function": ("function",), "data": ("data",)}
        for kind, names in used.items():
            if kind != b.type:
                for name in names:
                    if getattr(b, name) is not None and name not in used[b.type]:
                        self.error(f"{p}.{name}", f"not used by {b.type} backends")
        if b.type == "http":
            if (b.url is None) == (b.channel is None):
                self.error(p, "an http backend needs url or channel (one of them)")
            elif b.channel is not None:
                # (an API served in no environment sends nothing: its channel may be empty)
                if self.ref(f"{p}.channel", "channel", b.channel, self.channels) and \
                        b.channel in self.channels and api.environments and \
                        not self.doc.channels[self.channels[b.channel]].members:
                    self.error(f"{p}.channel", f"channel '{b.channel}' has no members")
                if b.path is None:
                    self.error(f"{p}.path", "a channel backend needs path")
            elif b.path is not None:
                self.error(f"{p}.path", "path is only used with channel; put the path in url")
        elif b.type == "mock":
            if b.mock is None:
                self.error(f"{p}.mock", "a mock backend needs mock")
            else:
                self.check_mock(f"{p}.mock", b)
        elif b.type == "function":
            if b.function is None:
                self.error(f"{p}.function", "a function backend needs function")
        elif b.type == "data":
            if b.data is None:
                self.error(f"{p}.data", "a data backend needs data")
            else:
                self.ref(f"{p}.data.datasource", "datasource", b.data.datasource, self.datasources)

        if self.ref(f"{p}.authorizer", "authorizer", b.authorizer, self.authorizers) \
                and b.authorizer is not None \
                and self.doc.authorizers[self.authorizers[b.authorizer]].type != "backend":
            self.error(f"{p}.authorizer", "a backend authorizer has type: backend")
        backend_path_params = self.check_backend_params(p, api, b, template_params)
        allowed = set(template_params) | backend_path_params
        if b.url is not None:
            self.check_backend_url(f"{p}.url", b.url, api, group, allowed)
        if b.tls is not None and (b.tls.client_cert is None) != (b.tls.client_key is None):
            self.error(f"{p}.tls", "client_cert and client_key go together")
        if b.path is not None:
            self.check_variables(f"{p}.path", b.path, api, group)
            self.check_path_refs(f"{p}.path", b.path, allowed)

    def check_mock(self, p: str, b: Backend) -> None:
        assert b.mock is not None
        if b.mock.status < 200:
            self.error(f"{p}.status", "an informational (1xx) status cannot answer a request")
        elif b.mock.body and b.mock.status in (204, 304):
            self.error(f"{p}.body", f"a {b.mock.status} response has no body")
        for name, value in b.mock.headers.items():
            hp = f"{p}.headers{_key(name)}"
            if not _HEADER_NAME.fullmatch(name):
                self.error(hp, f"invalid header name '{name}'")
            elif name.lower() in _FRAMING_HEADERS:
                self.error(hp, f"'{name}' is set by the gateway")
            if any(c in value for c in "\r\n\0"):
                self.error(hp, "a header value has no CR, LF or NUL")

    def check_backend_params(self, p: str, api: Api, b: Backend,
                             template_params: dict[str, bool]) -> set[str]:
        """Check backend parameters; return the names of those placed in the path."""
        frontend = {param.name for param in api.params} | set(template_params)
        seen: set[tuple[str, str]] = set()
        path_params: set[str] = set()
        for j, param in enumerate(b.params):
            pp = f"{p}.params[{j}]"
            key = (param.location, param.name.lower() if param.location == "header" else param.name)
            if key in seen:
                self.error(f"{pp}.name", f"duplicate {param.location} parameter '{param.name}'")
            seen.add(key)
            if param.location == "path":
                path_params.add(param.name)
            if param.origin == "request" and param.value not in frontend:
                self.error(f"{pp}.value", f"unknown frontend parameter '{param.value}'")
            elif param.origin == "system" and not _SYSTEM_VALUES.fullmatch(param.value):
                self.error(f"{pp}.value", f"unknown system value '{param.value}' (expected "
                           "$context.sourceIp, stage, apiId, apiName, appId, appName, requestId, "
                           "userName, accountName, authorizer.frontend.<key> or "
                           "authorizer.backend.<key>)")
            elif param.location == "header" and any(c in param.value for c in "\r\n\0"):
                self.error(f"{pp}.value", "a header value has no CR, LF or NUL")
            if param.location == "header" and (
                    param.name.lower() in _FRAMING_HEADERS | _GATEWAY_HEADERS
                    or not _HEADER_NAME.fullmatch(param.name)):
                self.error(f"{pp}.name", f"'{param.name}' cannot be set by a backend parameter "
                           "(a framing field, one the gateway sets, or not a header name)")
        return path_params

    def check_backend_url(self, p: str, url: str, api: Api, group: Group | None,
                          allowed: set[str]) -> None:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("http", "https"):
            self.error(p, "expected a url starting with http:// (or https://)")
            return
        path_start = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        if "{" in rest[:path_start] or "}" in rest[:path_start]:
            self.error(p, "{parameters} may appear only in the path of the url")
            return
        self.check_path_refs(p, rest[path_start:], allowed)
        variables = self.check_variables(p, url, api, group)
        if variables is None:
            return
        if not variables:
            self.check_url_shape(p, url, "")
            return
        for env in api.environments:
            values = group.variables.get(env, {}) if group is not None else {}
            if all(v in values for v in variables):
                self.check_url_shape(p, _VARIABLE_REF.sub(lambda m: values[m.group(1)], url),
                                     f"in environment '{env}': ")

    def check_variables(self, p: str, text: str, api: Api, group: Group | None) -> set[str] | None:
        """Check the ``#name#`` references of a backend url or path against every environment the
        API is published in.  Return the names, or ``None`` when they are not written well."""
        names = set(_VARIABLE_REF.findall(text))
        ok = True
        for name in sorted(names):
            if not _VARIABLE.fullmatch(name):
                self.error(p, f"invalid variable name '#{name}#' (3-32 characters: a letter, then "
                           "letters, digits, '_' or '-')")
                ok = False
        if "#" in _VARIABLE_REF.sub("", text):
            self.error(p, "a lone '#' (variables are written #name#; a url has no fragment)")
            ok = False
        if not ok:
            return None
        if group is None:
            return names
        for env in api.environments:
            defined = group.variables.get(env, {})
            for name in sorted(names):
                if name not in defined:
                    self.error(p, f"variable '{name}' is not defined for environment '{env}' "
                               f"(groups[{self.groups[group.name]}].variables{_key(env)})")
        return names

    def check_path_refs(self, p: str, path: str, allowed: set[str]) -> None:
        for inner in _PARAM_REF.findall(path):
            m = _PARAM_NAME.fullmatch(inner)
            if not m:
                self.error(p, f"invalid parameter '{{{inner}}}'")
            elif m.group(1) not in allowed:
                self.error(p, f"'{{{inner}}}' is not a path parameter of the API")
        if "{" in _PARAM_REF.sub("", path) or "}" in _PARAM_REF.sub("", path):
            self.error(p, "unbalanced '{' or '}'")

    def check_url_shape(self, p: str, url: str, where: str) -> None:
        for problem in _url_shape_problems(url):
            self.error(p, f"{where}{problem}")

    # ----------------------------------------------------------------------------------------------

    def check_routes(self) -> None:
        """Two APIs answering the same method and path shape, in the same environment, on hosts
        that overlap, would make routing depend on the order of the list."""
        seen: dict[tuple[str, str, str], list[int]] = {}
        for i, api in enumerate(self.doc.apis):
            if api.group not in self.groups or not api.path.startswith("/"):
                continue
            shape = _route_shape(api.path)
            key = (api.method, shape, api.match_mode)
            domains = set(self.doc.groups[self.groups[api.group]].domains)
            for j in seen.get(key, []):
                other = self.doc.apis[j]
                other_domains = set(self.doc.groups[self.groups[other.group]].domains)
                if (domains & other_domains) or (not domains and not other_domains):
                    common = [e for e in api.environments if e in other.environments]
                    if common:
                        self.error(f"apis[{i}].path", f"the same method and path as apis[{j}] "
                                   f"('{other.name}') in environment '{common[0]}'")
                        break
            seen.setdefault(key, []).append(i)

    def check_devices(self) -> None:
        doc = self.doc
        for i, product in enumerate(doc.products):
            p = f"products[{i}]"
            self.unique(f"{p}.services", product.services)
            for j, service in enumerate(product.services):
                sp = f"{p}.services[{j}]"
                self.unique(f"{sp}.properties", service.properties)
                for k, prop in enumerate(service.properties):
                    if prop.max_length is not None and prop.type != "string":
                        self.error(f"{sp}.properties[{k}].max_length", "only for string properties")
                    if prop.min is not None and prop.max is not None and prop.min > prop.max:
                        self.error(f"{sp}.properties[{k}].min", "must not exceed max")
        identifiers: dict[str, int] = {}
        for i, device in enumerate(doc.devices):
            self.ref(f"devices[{i}].product", "product", device.product, self.products)
            if device.identifier in identifiers:
                self.error(f"devices[{i}].identifier",
                           f"the same identifier as devices[{identifiers[device.identifier]}]")
            identifiers.setdefault(device.identifier, i)
        for i, rule in enumerate(doc.rules):
            p = f"rules[{i}]"
            source = rule.source
            self.ref(f"{p}.source.product", "product", source.product, self.products)
            if self.ref(f"{p}.source.device", "device", source.device, self.devices) \
                    and source.device is not None:
                device = doc.devices[self.devices[source.device]]
                if device.product != source.product:
                    self.error(f"{p}.source.device", f"device '{source.device}' is of product "
                               f"'{device.product}', not '{source.product}'")
            if source.topic is not None and not _topic_ok(source.topic, wildcards=True):
                self.error(f"{p}.source.topic", "invalid MQTT topic filter")
            for j, dest in enumerate(rule.destinations):
                dp = f"{p}.destinations[{j}]"
                # HttpDestination.api is not checked: a rule may feed an API defined elsewhere
                if isinstance(dest, SqlDestination):
                    self.ref(f"{dp}.datasource", "datasource", dest.datasource, self.datasources)
                elif getattr(dest, "topic", None) is not None and not _topic_ok(dest.topic, False):
                    self.error(f"{dp}.topic", "invalid MQTT topic (no wildcards when publishing)")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:       # (an integer beyond the float range)
        return False


def _normal_segment(segment: str) -> str:
    """A literal segment as the router compares it (fastpath.pathnorm): escapes of unreserved
    characters decoded, the others upper-cased."""
    def one(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else m.group(0).upper()
    return _ESCAPE.sub(one, segment) if "%" in segment else segment


@functools.lru_cache(maxsize=65536)     # (a reload checks the same paths again)
def _route_shape(path: str) -> str:
    """What two routes must share to collide: literals normalized, parameter names dropped,
    a trailing slash ignored (as fastpath.router does)."""
    segments = path.rstrip("/").split("/")
    return "/".join("{+}" if s.endswith("+}") and s.startswith("{") else
                    "{}" if s.startswith("{") else _normal_segment(s) for s in segments) or "/"


#: members of one channel (the balancer's bound)
MAX_CHANNEL_MEMBERS = 4096


def _is_host(host: str) -> bool:
    # (the name first: most hosts are names or IPv4 addresses, which it matches without the
    # cost of an exception)
    if len(host) <= 253 and _HOST.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def _url_shape_problems(url: str) -> tuple[str, ...]:
    """What is wrong with the shape of a backend url (variables substituted): a pure function
    of the url, remembered, since many APIs of a document share one backend address."""
    problems = []
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return (f"invalid url: {exc}",)
    if parts.username is not None or parts.password is not None:
        problems.append("credentials do not belong in the url (use backend params)")
    elif not parts.hostname or not _is_host(parts.hostname):
        problems.append(f"invalid host in '{url}'")
    elif port == 0:
        problems.append("invalid port 0")
    if parts.query or parts.fragment or "?" in url:
        problems.append("a backend url has no query (use backend params)")
    # (every whitespace character but the space is unprintable: one C-level scan for both)
    if " " in url or not url.isprintable():
        problems.append("spaces or control characters in the url")
    return tuple(problems)


def _topic_ok(topic: str, wildcards: bool) -> bool:
    if not topic or "\0" in topic:
        return False
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if not wildcards and ("+" in level or "#" in level):
            return False
        if "+" in level and level != "+":
            return False
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
    return True


# ==================================================================================================
# NOT SUPPORTED IN THIS VERSION.  Features of the contract the data plane does not implement yet are
# refused, because ignoring them silently would be a security hole (an API believed protected,
# served open) or a lie (a policy believed applied).  Each one leaves this list when it is built.
# Every message ends with "not supported in this version" (what users read speaks of the product).
# ==================================================================================================

UNSUPPORTED = "not supported in this version"


def _refuse_unsupported(doc: Document, error: Any) -> None:
    def refuse(path: str, what: str, hint: str = "") -> None:
        error(path, f"{what} {'are' if what.endswith('s') else 'is'} {UNSUPPORTED}{hint}")

    for i, api in enumerate(doc.apis):
        p = f"apis[{i}]"
        if api.app_code_auth and api.auth != "app":
            error(f"{p}.app_code_auth", "AppCodes are accepted by APIs with auth: app only")
        if api.app_api_key and api.auth != "app":
            error(f"{p}.app_api_key", "app keys and secrets are accepted by APIs with auth: app "
                                     "only")
        for j, cb in enumerate(api.conditional_backends):
            cp = f"{p}.conditional_backends[{j}].backend"
            if cb.backend.type in ("function", "data"):
                refuse(f"{cp}.type", f"'{cb.backend.type}' backends")
            if cb.backend.type != "http" and cb.backend.params:
                error(f"{cp}.params", "backend parameters apply to http backends")
            if cb.backend.authorizer is not None:
                error(f"{cp}.authorizer", "a backend authorizer is set on the API's backend "
                                          "(it runs whichever backend serves)")
        b = api.backend
        if b.type in ("function", "data"):
            refuse(f"{p}.backend.type", f"'{b.type}' backends")
        if b.type != "http":
            if b.params:
                error(f"{p}.backend.params", "backend parameters apply to http backends")
            if any(binding.signature_key for binding in api.environments.values()):
                error(f"{p}.environments", "a signature key signs requests to http backends")
        for env, binding in api.environments.items():
            bp = f"{p}.environments{_key(env)}"
            if binding.apps and api.auth != "app":
                error(f"{bp}.apps", "apps are authorized for APIs with auth: app only")
